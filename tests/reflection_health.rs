//! Server reflection (v1 and v1alpha) lists and describes every service with no proto file, with
//! the protos' comments, and health reports every service.

mod common;

use common::*;
use tokio_stream::once;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const EXPECTED: [&str; 7] = [
    "grpc.health.v1.Health",
    "latchkey.v1.Emails",
    "latchkey.v1.Passwordless",
    "latchkey.v1.Sessions",
    "latchkey.v1.Users",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

#[tokio::test]
async fn reflection_v1_lists_and_describes_every_service() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let app = TestApp::spawn().await;
    let mut client = ServerReflectionClient::new(app.channel.clone());
    let ask = |request| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };

    let mut stream = client
        .server_reflection_info(once(ask(MessageRequest::ListServices(String::new()))))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in EXPECTED {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }

    let request = ask(MessageRequest::FileContainingSymbol("latchkey.v1.Passwordless".into()));
    let mut stream = client.server_reflection_info(once(request)).await.unwrap().into_inner();
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected file descriptors");
    };
    let joined: Vec<u8> = files.file_descriptor_proto.concat();
    let text = String::from_utf8_lossy(&joined);
    for method in PASSWORDLESS_METHODS {
        assert!(text.contains(method), "{method} is described");
    }
}

#[tokio::test]
async fn reflection_v1alpha_lists_and_describes_every_service_too() {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let app = TestApp::spawn().await;
    let mut client = ServerReflectionClient::new(app.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client.server_reflection_info(once(request)).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in EXPECTED {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
    // The other version's service is described too (grpcurl's `describe` of it).
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "grpc.reflection.v1.ServerReflection".into(),
        )),
    };
    let mut stream = client.server_reflection_info(once(request)).await.unwrap().into_inner();
    let answer = stream.message().await.unwrap().unwrap().message_response;
    assert!(
        matches!(answer, Some(MessageResponse::FileDescriptorResponse(_))),
        "{answer:?}"
    );
}

/// The descriptors reflection serves carry the protos' comments (their source info), so `grpcurl
/// describe` prints units, defaults, limits and reasons; and every service, method, message, field,
/// enum and enum value of latchkey.v1 has one.
#[tokio::test]
async fn reflection_serves_a_comment_for_every_part_of_the_api() {
    use prost::Message;
    use prost_types::FileDescriptorProto;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let app = TestApp::spawn().await;
    let mut client = ServerReflectionClient::new(app.channel.clone());
    let mut files: Vec<FileDescriptorProto> = Vec::new();
    for service in [
        "latchkey.v1.Passwordless",
        "latchkey.v1.Sessions",
        "latchkey.v1.Users",
        "latchkey.v1.Emails",
    ] {
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(service.into())),
        };
        let mut stream = client.server_reflection_info(once(request)).await.unwrap().into_inner();
        let Some(MessageResponse::FileDescriptorResponse(answer)) =
            stream.message().await.unwrap().unwrap().message_response
        else {
            panic!("expected file descriptors for {service}");
        };
        for bytes in answer.file_descriptor_proto {
            let file = FileDescriptorProto::decode(bytes.as_slice()).unwrap();
            if file.package() == "latchkey.v1" && !files.iter().any(|known| known.name == file.name) {
                files.push(file);
            }
        }
    }
    assert_eq!(files.len(), 4, "the four latchkey.v1 files");

    let comment_of = |file: &FileDescriptorProto, path: &[i32]| -> String {
        let info = file.source_code_info.as_ref().expect("source info is served");
        info.location
            .iter()
            .find(|location| location.path == path)
            .map(|location| location.leading_comments().trim().to_string())
            .unwrap_or_default()
    };

    // What `grpcurl describe latchkey.v1.LoginOrCreateRequest` shows for login_expiration_minutes.
    let passwordless = files
        .iter()
        .find(|f| f.name() == "latchkey/v1/passwordless.proto")
        .unwrap();
    let (message, descriptor) = passwordless
        .message_type
        .iter()
        .enumerate()
        .find(|(_, m)| m.name() == "LoginOrCreateRequest")
        .unwrap();
    let field = descriptor
        .field
        .iter()
        .position(|f| f.name() == "login_expiration_minutes")
        .unwrap();
    let comment = comment_of(passwordless, &[4, message as i32, 2, field as i32]);
    assert!(comment.contains("0 means 60"), "{comment:?}");

    // Every part has a comment. Paths follow descriptor.proto's field numbers: message_type 4,
    // enum_type 5, service 6; a message's field 2, nested_type 3, enum_type 4; an enum's value 2;
    // a service's method 2.
    let mut missing = Vec::new();
    fn enum_paths(path: Vec<i32>, e: &prost_types::EnumDescriptorProto, out: &mut Vec<(Vec<i32>, String)>) {
        out.push((path.clone(), e.name().to_string()));
        for (i, value) in e.value.iter().enumerate() {
            out.push(([path.as_slice(), &[2, i as i32]].concat(), value.name().to_string()));
        }
    }
    fn message_paths(path: Vec<i32>, m: &prost_types::DescriptorProto, out: &mut Vec<(Vec<i32>, String)>) {
        out.push((path.clone(), m.name().to_string()));
        for (i, field) in m.field.iter().enumerate() {
            out.push((
                [path.as_slice(), &[2, i as i32]].concat(),
                format!("{}.{}", m.name(), field.name()),
            ));
        }
        for (i, nested) in m.nested_type.iter().enumerate() {
            message_paths([path.as_slice(), &[3, i as i32]].concat(), nested, out);
        }
        for (i, e) in m.enum_type.iter().enumerate() {
            enum_paths([path.as_slice(), &[4, i as i32]].concat(), e, out);
        }
    }
    for file in &files {
        let mut parts = Vec::new();
        for (i, m) in file.message_type.iter().enumerate() {
            message_paths(vec![4, i as i32], m, &mut parts);
        }
        for (i, e) in file.enum_type.iter().enumerate() {
            enum_paths(vec![5, i as i32], e, &mut parts);
        }
        for (i, s) in file.service.iter().enumerate() {
            parts.push((vec![6, i as i32], s.name().to_string()));
            for (j, method) in s.method.iter().enumerate() {
                parts.push((
                    vec![6, i as i32, 2, j as i32],
                    format!("{}.{}", s.name(), method.name()),
                ));
            }
        }
        for (path, name) in parts {
            if comment_of(file, &path).is_empty() {
                missing.push(format!("{}: {name}", file.name()));
            }
        }
    }
    assert!(missing.is_empty(), "parts of the API without a comment: {missing:#?}");
}

#[tokio::test]
async fn health_reports_every_service_serving_then_not_serving_on_shutdown() {
    let app = TestApp::spawn().await;
    let mut health = HealthClient::new(app.channel.clone());
    for service in std::iter::once("").chain(SERVICES) {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }
    // A watcher sees the flip to NOT_SERVING as shutdown starts.
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "latchkey.v1.Passwordless".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status(), ServingStatus::Serving);
    let stopping = tokio::spawn(app.stop());
    let next = watch
        .message()
        .await
        .expect("the watch ends cleanly")
        .expect("one more message");
    assert_eq!(next.status(), ServingStatus::NotServing);
    assert!(
        matches!(watch.message().await, Ok(None) | Err(_)),
        "then the stream ends"
    );
    // An open watch must not hold shutdown up.
    stopping.await.unwrap();
}

#[tokio::test]
async fn with_a_shutdown_delay_health_flips_first_while_calls_are_still_answered() {
    let app = TestApp::spawn_with(|config| config.shutdown_delay_seconds = 2).await;
    let mut health = HealthClient::new(app.channel.clone());
    let mut watch = health
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status(), ServingStatus::Serving);
    let mut passwordless = app.passwordless();
    let stopping = tokio::spawn(app.stop());
    assert_eq!(
        watch.message().await.unwrap().unwrap().status(),
        ServingStatus::NotServing
    );
    // Routing is being withdrawn, but the server still answers in the meantime.
    passwordless
        .issue_login_link(issue_request("late@example.com"))
        .await
        .expect("answered during the shutdown delay");
    stopping.await.unwrap();
}

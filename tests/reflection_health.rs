//! Server reflection (v1 and v1alpha) lists and describes every service with no proto file, and
//! health reports every service.

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

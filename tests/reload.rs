//! Secrets rotated without a restart: API keys on SIGHUP and on a change of the config file (the
//! real binary), a new TLS certificate for new connections while calls in flight finish on theirs,
//! a new SMTP password for the next send; a file that does not validate changes nothing.

mod common;

use std::path::Path;
use std::time::Duration;

use common::mail::{SmtpOptions, SmtpServer, eventually, free_port, test_certificates};
use common::process::BinaryServer;
use common::*;
use latchkey::config::{MailTransport, SmtpTls, TlsConfig};
use tonic::Code;
use tonic::transport::Channel;

const KEY_A: &str = "key-a-0123456789abcdef";
const KEY_B: &str = "key-b-0123456789abcdef";

fn digest(key: &str) -> String {
    latchkey::config::hash_api_key(key)
}

fn config_with_key(key: &str) -> String {
    format!(
        r#"profile = "production"
server_key_file = "server.key"
reload_check_seconds = 1

[auth]
required = true

[[auth.api_keys]]
name = "rotating"
sha256 = "{}"
scopes = ["sessions"]

[links]
redirect_allow_list = ["http://localhost:3000/auth/"]

[mail]
transport = "file"
"#,
        digest(key)
    )
}

async fn jwks_with(channel: Channel, key: &str) -> Result<(), tonic::Status> {
    let mut request = tonic::Request::new(pb::GetJwksRequest {});
    request.metadata_mut().insert("x-api-key", key.parse().unwrap());
    pb::sessions_client::SessionsClient::new(channel)
        .get_jwks(request)
        .await
        .map(|_| ())
}

/// Waits (up to 30 s, checking every 20 ms) until the log has `count` lines containing `text`.
fn wait_for_log(server: &BinaryServer, text: &str, count: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while server.log().matches(text).count() < count {
        assert!(
            std::time::Instant::now() < deadline,
            "no {text:?} in:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_rotate_on_sighup_and_on_a_file_change_and_a_bad_file_changes_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let server_key = dir.path().join("server.key");
    std::fs::write(&server_key, latchkey::crypto::ServerKey::generate_encoded()).unwrap();
    std::fs::set_permissions(&server_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = dir.path().join("latchkey.toml");
    std::fs::write(&config, config_with_key(KEY_A)).unwrap();
    let server = BinaryServer::start(dir.path(), &["--config", "latchkey.toml"], &[]);
    let channel = connect(server.addr).await;
    jwks_with(channel.clone(), KEY_A).await.expect("key A works");
    let refused = jwks_with(channel.clone(), KEY_B).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);

    // SIGHUP: key B replaces key A, on the connection that is already open.
    std::fs::write(&config, config_with_key(KEY_B)).unwrap();
    let kill = |signal: &str| {
        let status = std::process::Command::new("kill")
            .args([signal, &server.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    kill("-HUP");
    wait_for_log(&server, "secrets reloaded", 1);
    jwks_with(channel.clone(), KEY_B)
        .await
        .expect("key B works after the reload");
    assert_eq!(
        jwks_with(channel.clone(), KEY_A).await.unwrap_err().code(),
        Code::Unauthenticated,
        "key A is revoked for new calls"
    );

    // A file that does not validate: refused, key B still works, and the log names the key.
    std::fs::write(&config, config_with_key(KEY_A).replace(&digest(KEY_A), "not-a-digest")).unwrap();
    kill("-HUP");
    wait_for_log(&server, "reload refused", 1);
    assert!(server.log().contains("auth.api_keys[0].sha256"), "{}", server.log());
    jwks_with(channel.clone(), KEY_B).await.expect("the current keys stay");

    // No signal: the changed file is picked up by the check every reload_check_seconds.
    std::fs::write(&config, config_with_key(KEY_A)).unwrap();
    wait_for_log(&server, "secrets reloaded", 2);
    assert!(server.log().contains("a watched file changed"), "{}", server.log());
    jwks_with(channel.clone(), KEY_A).await.expect("key A is back");
    assert!(
        !server.log().contains(KEY_A) && !server.log().contains(KEY_B),
        "no key in the log"
    );
}

async fn tls_channel(addr: std::net::SocketAddr, ca: &Path) -> Result<Channel, String> {
    common::tls_channel(addr, ca, None).await
}

async fn jwks(channel: Channel) -> Result<(), tonic::Status> {
    pb::sessions_client::SessionsClient::new(channel)
        .get_jwks(pb::GetJwksRequest {})
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_certificate_serves_new_connections_while_calls_in_flight_finish() {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["first", "second"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
    }
    let (first_ca, first_cert, first_key) = test_certificates(&dir.path().join("first"));
    let (second_ca, second_cert, second_key) = test_certificates(&dir.path().join("second"));
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::copy(&first_cert, &cert).unwrap();
    std::fs::copy(&first_key, &key).unwrap();
    let app = TestApp::spawn_with(|config| {
        config.tls = TlsConfig {
            cert_file: Some(cert.clone()),
            key_file: Some(key.clone()),
            client_ca_file: None,
        };
    })
    .await;
    let addr = app.running().local_addr();
    let open = tls_channel(addr, &first_ca).await.expect("the first certificate");
    jwks(open.clone()).await.unwrap();
    assert!(tls_channel(addr, &second_ca).await.is_err(), "not yet the second");
    // A long poll in flight on the first certificate's connection while the certificate changes.
    let sent = pb::passwordless_client::PasswordlessClient::new(open.clone())
        .send_enchanted_link(pb::SendEnchantedLinkRequest {
            login_id: "polling@example.com".into(),
            redirect_url: "http://localhost:3000/auth/callback".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut polling = pb::passwordless_client::PasswordlessClient::new(open.clone());
    let poll = tokio::spawn(async move {
        polling
            .poll_session(pb::PollSessionRequest {
                pending_ref: sent.pending_ref,
                wait_seconds: 5,
                client: None,
            })
            .await
    });

    // The poll has reached the server once it counts as a live long poll.
    let http = app.running().http_addr().expect("the HTTP port is on");
    eventually("the poll in flight", async || {
        let (_, metrics) = http_get(http, "/metrics").await;
        metrics.contains("latchkey_long_polls_live 1").then_some(())
    })
    .await;

    std::fs::copy(&second_cert, &cert).unwrap();
    std::fs::copy(&second_key, &key).unwrap();
    let reloaded = app.running().reload().await.expect("the new files validate");
    assert!(reloaded.contains(&"TLS material"), "{reloaded:?}");
    let fresh = tls_channel(addr, &second_ca)
        .await
        .expect("new connections get the second");
    jwks(fresh).await.unwrap();
    assert!(
        tls_channel(addr, &first_ca).await.is_err(),
        "the first is gone for new ones"
    );
    let answered = poll
        .await
        .unwrap()
        .expect("the call in flight finishes on its connection");
    assert_eq!(
        answered.into_inner().status(),
        pb::poll_session_response::Status::Pending
    );

    // A key file that is not PEM is refused: the second certificate stays.
    std::fs::write(&key, "not a key").unwrap();
    let refused = app.running().reload().await.expect_err("a bad key file is refused");
    assert!(refused.contains("tls.key_file"), "{refused}");
    assert!(!refused.contains("not a key"), "the error does not quote the file");
    jwks(tls_channel(addr, &second_ca).await.expect("still the second"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_smtp_password_is_used_for_the_next_send() {
    const USER: &str = "latchkey";
    const PASSWORD: &str = "the-rotated-smtp-password";
    let certs = tempfile::tempdir().unwrap();
    let (ca, chain, tls_key) = test_certificates(certs.path());
    let maildir = tempfile::tempdir().unwrap();
    let port = free_port();
    let options = SmtpOptions {
        tls: Some((chain, tls_key)),
        auth: Some((USER.into(), PASSWORD.into())),
        ..Default::default()
    };
    let smtp = SmtpServer::start(maildir.path(), port, &options);
    let password_file = certs.path().join("smtp-password");
    std::fs::write(&password_file, "the-old-smtp-password\n").unwrap();
    let app = TestApp::spawn_with(|config| {
        config.mail.transport = MailTransport::Smtp;
        config.mail.smtp.host = "localhost".into();
        config.mail.smtp.port = Some(port);
        config.mail.smtp.tls = SmtpTls::Starttls;
        config.mail.smtp.ca_file = Some(ca);
        config.mail.smtp.username = Some(USER.into());
        config.mail.smtp.password_file = Some(password_file.clone());
        config.mail.smtp.timeout_seconds = 5;
    })
    .await;
    let send = async |email: &str| {
        let request = pb::LoginOrCreateRequest {
            email: email.into(),
            ..Default::default()
        };
        let email_id = app
            .passwordless()
            .login_or_create(request)
            .await
            .unwrap()
            .into_inner()
            .email_id;
        eventually("a final status", async || {
            let status = pb::emails_client::EmailsClient::new(app.channel.clone())
                .get_email_status(pb::GetEmailStatusRequest {
                    email_id: email_id.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            use pb::get_email_status_response::Status;
            matches!(status.status(), Status::Sent | Status::Failed).then_some(status.status())
        })
        .await
    };
    use pb::get_email_status_response::Status;
    assert_eq!(
        send("before@example.com").await,
        Status::Failed,
        "the old password is refused"
    );

    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let reloaded = app.running().reload().await.unwrap();
    assert!(reloaded.contains(&"SMTP password"), "{reloaded:?}");
    assert_eq!(send("after@example.com").await, Status::Sent);
    assert_eq!(smtp.messages().len(), 1);
}

//! Shared test harness: an in-process server on an ephemeral port with a clock the test controls
//! (`TestApp`), the real binary as a child process (`process::BinaryServer`), and helpers to read
//! links, tokens and error reasons.
#![allow(dead_code)] // each test binary uses a different part

pub mod h2raw;
pub mod mail;
pub mod mime;
pub mod pg_proxy;
pub mod process;
pub mod store;
pub mod web;

use std::net::SocketAddr;
use std::sync::Arc;

use latchkey::app::{self, Running};
use latchkey::config::{Config, Profile};
use latchkey::crypto::ServerKey;
use latchkey::domain::clock::ManualClock;
use tempfile::TempDir;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_types::StatusExt;

pub use latchkey::api::pb;
use pb::passwordless_client::PasswordlessClient;
use pb::sessions_client::SessionsClient;
use pb::users_client::UsersClient;

/// A PKCE pair from RFC 7636 Appendix B.
pub const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
pub const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

/// latchkey's own gRPC services.
pub const SERVICES: [&str; 4] = [
    "latchkey.v1.Passwordless",
    "latchkey.v1.Sessions",
    "latchkey.v1.Users",
    "latchkey.v1.Emails",
];

/// Every method of latchkey.v1.Passwordless, as reflection must describe it.
pub const PASSWORDLESS_METHODS: [&str; 8] = [
    "IssueLoginLink",
    "LoginOrCreate",
    "SendEnchantedLink",
    "InspectToken",
    "VerifyToken",
    "VerifyOtp",
    "PollSession",
    "ExchangeCode",
];

pub struct TestApp {
    pub addr: SocketAddr,
    pub clock: ManualClock,
    pub dir: TempDir,
    pub channel: Channel,
    running: Option<Running>,
}

/// A config like the development default, on an ephemeral port in a temporary directory.
pub fn test_config(dir: &TempDir) -> Config {
    let mut config = Config::defaults(Profile::Development);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    config.data_dir = dir.path().join("data");
    let key_file = dir.path().join("server.key");
    if !key_file.exists() {
        std::fs::write(&key_file, ServerKey::generate_encoded()).unwrap();
    }
    config.server_key_file = Some(key_file);
    config.log.level = "warn".into();
    store::configure(&mut config, dir.path());
    config
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(&dir);
        adjust(&mut config);
        Self::start_in(dir, config, ManualClock::starting_now()).await
    }

    pub async fn start_in(dir: TempDir, config: Config, clock: ManualClock) -> Self {
        let validated = config.validate(dir.path()).expect("test config is valid");
        let running = app::start(validated, Arc::new(clock.clone()))
            .await
            .expect("server starts");
        let addr = running.local_addr();
        let channel = connect(addr).await;
        Self {
            addr,
            clock,
            dir,
            channel,
            running: Some(running),
        }
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("running")
    }

    pub fn passwordless(&self) -> PasswordlessClient<Channel> {
        PasswordlessClient::new(self.channel.clone())
    }

    pub fn sessions(&self) -> SessionsClient<Channel> {
        SessionsClient::new(self.channel.clone())
    }

    pub fn users(&self) -> UsersClient<Channel> {
        UsersClient::new(self.channel.clone())
    }

    /// Stops the server and hands back its directory and clock, e.g. to restart on the same data.
    pub async fn stop(mut self) -> (TempDir, ManualClock) {
        self.running.take().unwrap().shutdown().await.expect("clean shutdown");
        (self.dir, self.clock)
    }

    /// A login link for a new user with this email (names given, so the user is created).
    pub async fn issue_for_email(&self, email: &str) -> pb::IssueLoginLinkResponse {
        self.issue(issue_request(email)).await.expect("link issued")
    }

    pub async fn issue(&self, request: pb::IssueLoginLinkRequest) -> Result<pb::IssueLoginLinkResponse, Status> {
        self.passwordless()
            .issue_login_link(request)
            .await
            .map(|r| r.into_inner())
    }

    pub async fn verify(&self, token: &str, verifier: &str) -> Result<pb::VerifyTokenResponse, Status> {
        let request = pb::VerifyTokenRequest {
            token: token.into(),
            code_verifier: verifier.into(),
            ..Default::default()
        };
        self.passwordless().verify_token(request).await.map(|r| r.into_inner())
    }

    pub async fn inspect(&self, token: &str) -> Result<pb::InspectTokenResponse, Status> {
        self.passwordless()
            .inspect_token(pb::InspectTokenRequest { token: token.into() })
            .await
            .map(|r| r.into_inner())
    }

    /// Issues a link for a new user and verifies it: a user with a live session.
    pub async fn signed_in(&self, email: &str) -> (pb::User, pb::Session) {
        let issued = self.issue_for_email(email).await;
        let verified = self.verify(&token_of(&issued.link), "").await.expect("verified");
        (verified.user.clone().unwrap(), session_of(verified))
    }

    /// Revokes one session by its id, as "sign out that device" does.
    pub async fn revoke_session_id(&self, session_id: &str) {
        let request = pb::RevokeSessionRequest {
            session: Some(pb::revoke_session_request::Session::SessionId(session_id.into())),
        };
        self.sessions().revoke_session(request).await.expect("revoked");
    }

    pub async fn update_user(&self, user_id: &str, user: pb::User, paths: &[&str]) -> Result<pb::User, Status> {
        let request = pb::UpdateUserRequest {
            user: Some(pb::User {
                user_id: user_id.into(),
                ..user
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
        };
        self.users()
            .update_user(request)
            .await
            .map(|r| r.into_inner().user.unwrap())
    }
}

pub async fn connect(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connects")
}

/// Login links for `count` new users `{prefix}{n}@example.com`; their tokens.
pub async fn issue_tokens(
    passwordless: &mut pb::passwordless_client::PasswordlessClient<tonic::transport::Channel>,
    prefix: &str,
    count: usize,
) -> Vec<String> {
    let mut tokens = Vec::new();
    for n in 0..count {
        let issued = passwordless
            .issue_login_link(issue_request(&format!("{prefix}{n}@example.com")))
            .await
            .unwrap()
            .into_inner();
        tokens.push(token_of(&issued.link));
    }
    tokens
}

pub fn issue_request(email: &str) -> pb::IssueLoginLinkRequest {
    pb::IssueLoginLinkRequest {
        user: Some(pb::issue_login_link_request::User::Email(email.into())),
        first_name: "Ann".into(),
        last_name: "Lee".into(),
        ..Default::default()
    }
}

pub fn issue_for_user(user_id: &str) -> pb::IssueLoginLinkRequest {
    pb::IssueLoginLinkRequest {
        user: Some(pb::issue_login_link_request::User::UserId(user_id.into())),
        ..Default::default()
    }
}

/// The `token` query parameter of a link.
/// `message` with an `idempotency-key` metadata value.
pub fn keyed<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("idempotency-key", key.parse().unwrap());
    request
}

pub fn verify_request(token: &str) -> pb::VerifyTokenRequest {
    pb::VerifyTokenRequest {
        token: token.into(),
        ..Default::default()
    }
}

/// The server's overall gRPC health, or None when it does not answer.
pub async fn health(channel: Channel) -> Option<tonic_health::pb::health_check_response::ServingStatus> {
    let answer = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await;
    answer.ok().map(|answer| answer.into_inner().status())
}

pub fn token_of(link: &str) -> String {
    let url = url::Url::parse(link).expect("links are URLs");
    url.query_pairs()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .expect("link has a token")
}

pub fn session_of(verified: pb::VerifyTokenResponse) -> pb::Session {
    match verified.result {
        Some(pb::verify_token_response::Result::Session(session)) => session,
        other => panic!("expected a session, got {other:?}"),
    }
}

/// The `ErrorInfo` reason of a status (and checks its domain).
pub fn reason(status: &Status) -> String {
    let details = status.get_error_details();
    let info = details
        .error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.domain, "latchkey");
    info.reason.clone()
}

#[track_caller]
pub fn assert_error<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, expected_reason: &str) -> Status {
    let status = result.expect_err(&format!("expected {code:?} {expected_reason}"));
    assert_eq!(status.code(), code, "code of {status:?}");
    assert_eq!(reason(&status), expected_reason, "reason of {status:?}");
    status
}

/// Runs each labelled bad request through `call` and checks its code, reason and message.
pub async fn assert_refusals<R, T, F, Fut>(cases: Vec<(&str, R, Code, &str)>, mut call: F)
where
    F: FnMut(R) -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
    T: std::fmt::Debug,
{
    for (label, request, code, expected) in cases {
        let status = call(request).await.expect_err(label);
        assert_eq!(
            (status.code(), reason(&status).as_str()),
            (code, expected),
            "{label}: {status:?}"
        );
        assert!(!status.message().is_empty(), "{label}: a message for people");
    }
}

/// GET over plain HTTP/1.1 (the HTTP port serves only small documents): (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("the HTTP port answers");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, body.to_string())
}

/// A TLS channel to `addr` trusting `ca` (server name `localhost`), with a client certificate when
/// `identity` is given.
pub async fn tls_channel(
    addr: SocketAddr,
    ca: &std::path::Path,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<Channel, String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|error| format!("{error:?}"))
}

//! The real binary: acknowledged writes survive kill -9, SIGTERM drains calls in flight and exits
//! 0, no secret reaches the data directory or the log, bad config stops start-up naming the key.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::process::{BinaryServer, command};
use common::*;
use tonic::Code;

fn dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let dir = dir();
    let mut server = BinaryServer::start(dir.path(), &[], &[]);
    let channel = connect(server.addr).await;
    let mut passwordless = pb::passwordless_client::PasswordlessClient::new(channel.clone());
    let links = issue_tokens(&mut passwordless, "k", 40).await;
    let mut sessions = Vec::new();
    for token in &links[..15] {
        let verified = passwordless
            .verify_token(pb::VerifyTokenRequest {
                token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        sessions.push(session_of(verified.into_inner()));
    }
    let revoked = sessions[0].session_id.clone();
    let mut sessions_client = pb::sessions_client::SessionsClient::new(channel);
    sessions_client
        .revoke_session(pb::RevokeSessionRequest {
            session: Some(pb::revoke_session_request::Session::SessionId(revoked.clone())),
        })
        .await
        .unwrap();
    server.kill9();

    let server = BinaryServer::start(dir.path(), &[], &[]);
    let channel = connect(server.addr).await;
    let mut passwordless = pb::passwordless_client::PasswordlessClient::new(channel.clone());
    let mut sessions_client = pb::sessions_client::SessionsClient::new(channel);
    for (n, token) in links.iter().enumerate() {
        let inspected = passwordless
            .inspect_token(pb::InspectTokenRequest { token: token.clone() })
            .await;
        if n < 15 {
            assert_error(inspected, Code::FailedPrecondition, "TOKEN_ALREADY_USED");
        } else {
            inspected.unwrap_or_else(|status| panic!("link {n} lost: {status:?}"));
        }
    }
    for session in &sessions {
        let request = pb::AuthenticateSessionRequest {
            credential: Some(pb::authenticate_session_request::Credential::SessionToken(
                session.session_token.clone(),
            )),
        };
        let result = sessions_client.authenticate_session(request).await;
        if session.session_id == revoked {
            assert_error(result, Code::FailedPrecondition, "SESSION_REVOKED");
        } else {
            result.expect("the session survived");
        }
    }
}

/// What one worker of the crash test saw acknowledged, and what was in flight when the server died.
#[derive(Default)]
struct Acknowledged {
    /// (token, the session its verification returned)
    verified: Vec<(String, pb::Session)>,
    issued_only: Vec<String>,
    in_flight: Option<String>,
}

/// kill -9 while many calls write at once: every acknowledged write is there after the restart,
/// whole (a link marked used has its session, and the session its token index), and the calls cut
/// off in flight either happened whole or not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_concurrent_writes_keeps_every_acknowledged_write_whole() {
    const WORKERS: usize = 16;
    const VERIFIED_BEFORE_KILL: usize = 300;
    let dir = dir();
    let mut server = BinaryServer::start(dir.path(), &[], &[]);
    let channel = connect(server.addr).await;
    let verified_total = Arc::new(AtomicUsize::new(0));
    let (enough, enough_rx) = tokio::sync::watch::channel(false);
    let enough = Arc::new(enough);
    let workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let mut client = pb::passwordless_client::PasswordlessClient::new(channel.clone());
            let (verified_total, enough) = (verified_total.clone(), enough.clone());
            tokio::spawn(async move {
                let mut seen = Acknowledged::default();
                for n in 0.. {
                    let email = format!("w{worker}-{n}@example.com");
                    let Ok(issued) = client.issue_login_link(issue_request(&email)).await else {
                        break;
                    };
                    let token = token_of(&issued.into_inner().link);
                    seen.in_flight = Some(token.clone());
                    let request = pb::VerifyTokenRequest {
                        token: token.clone(),
                        ..Default::default()
                    };
                    let Ok(verified) = client.verify_token(request).await else {
                        break;
                    };
                    seen.in_flight = None;
                    seen.verified.push((token, session_of(verified.into_inner())));
                    if verified_total.fetch_add(1, Ordering::SeqCst) + 1 == VERIFIED_BEFORE_KILL {
                        let _ = enough.send(true);
                    }
                    // Every fourth link is left unverified.
                    if n % 4 == 0 {
                        let email = format!("w{worker}-{n}-spare@example.com");
                        let Ok(issued) = client.issue_login_link(issue_request(&email)).await else {
                            break;
                        };
                        seen.issued_only.push(token_of(&issued.into_inner().link));
                    }
                }
                seen
            })
        })
        .collect();
    let mut enough_rx = enough_rx;
    enough_rx.wait_for(|enough| *enough).await.unwrap();
    server.kill9();
    let mut seen = Vec::new();
    for worker in workers {
        seen.push(worker.await.unwrap());
    }

    let server = BinaryServer::start(dir.path(), &[], &[]);
    let channel = connect(server.addr).await;
    let mut passwordless = pb::passwordless_client::PasswordlessClient::new(channel.clone());
    let mut sessions = pb::sessions_client::SessionsClient::new(channel);
    let mut checked = 0;
    for worker in &seen {
        for (token, session) in &worker.verified {
            let again = passwordless
                .verify_token(pb::VerifyTokenRequest {
                    token: token.clone(),
                    ..Default::default()
                })
                .await;
            assert_error(again, Code::FailedPrecondition, "TOKEN_ALREADY_USED");
            let request = pb::AuthenticateSessionRequest {
                credential: Some(pb::authenticate_session_request::Credential::SessionToken(
                    session.session_token.clone(),
                )),
            };
            let authenticated = sessions
                .authenticate_session(request)
                .await
                .expect("the session survived");
            assert_eq!(
                authenticated.into_inner().session.unwrap().session_id,
                session.session_id
            );
            checked += 1;
        }
        for token in &worker.issued_only {
            passwordless
                .inspect_token(pb::InspectTokenRequest { token: token.clone() })
                .await
                .expect("an acknowledged link survived");
        }
        // Cut off in flight: either the verification happened (and then wholly) or it did not.
        if let Some(token) = &worker.in_flight {
            let request = pb::VerifyTokenRequest {
                token: token.clone(),
                ..Default::default()
            };
            match passwordless.verify_token(request).await {
                Ok(verified) => assert!(!session_of(verified.into_inner()).session_token.is_empty()),
                Err(status) => assert_eq!(reason(&status), "TOKEN_ALREADY_USED", "{status:?}"),
            }
        }
    }
    assert!(checked >= VERIFIED_BEFORE_KILL, "checked {checked}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_calls_in_flight_and_exits_zero() {
    const CALLS: usize = 1000;
    let dir = dir();
    let mut server = BinaryServer::start(dir.path(), &[], &[]);
    let channel = connect(server.addr).await;
    let completed = Arc::new(AtomicUsize::new(0));
    let signalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let completed_after_signal = Arc::new(AtomicUsize::new(0));
    let (first_done, first_done_rx) = tokio::sync::oneshot::channel::<()>();
    let first_done = Arc::new(std::sync::Mutex::new(Some(first_done)));
    let calls: Vec<_> = (0..CALLS)
        .map(|n| {
            let mut client = pb::passwordless_client::PasswordlessClient::new(channel.clone());
            let completed = completed.clone();
            let first_done = first_done.clone();
            let signalled = signalled.clone();
            let completed_after_signal = completed_after_signal.clone();
            tokio::spawn(async move {
                let result = client
                    .issue_login_link(issue_request(&format!("t{n}@example.com")))
                    .await;
                if result.is_ok() && signalled.load(Ordering::SeqCst) {
                    completed_after_signal.fetch_add(1, Ordering::SeqCst);
                }
                if completed.fetch_add(1, Ordering::SeqCst) == 10
                    && let Some(done) = first_done.lock().unwrap().take()
                {
                    let _ = done.send(());
                }
                result.map(|r| r.into_inner())
            })
        })
        .collect();
    // Signal while most calls are still on their way.
    first_done_rx.await.unwrap();
    signalled.store(true, Ordering::SeqCst);
    server.sigterm();
    let mut succeeded = Vec::new();
    for call in calls {
        match call.await.unwrap() {
            Ok(issued) => succeeded.push(issued),
            // Calls that had not reached the server before it stopped accepting are refused
            // (UNAVAILABLE), or never left the client's queue before the connection closed
            // (CANCELLED), or were opened after the server's GOAWAY had named the last stream it
            // would serve (tonic's client reports those INTERNAL, "GoAway(NO_ERROR, Remote)"), or
            // were still waiting in the client for one of the connection's 128 streams
            // (limits.max_concurrent_streams) when it closed (UNKNOWN, "DispatchGone"); none is
            // cut off half-way by the server.
            Err(status) => assert!(
                matches!(status.code(), Code::Unavailable | Code::Cancelled)
                    || refused_by_goaway(&status)
                    || never_sent(&status),
                "{status:?}"
            ),
        }
    }
    eprintln!(
        "{} calls completed ({} after SIGTERM), {} refused",
        succeeded.len(),
        completed_after_signal.load(Ordering::SeqCst),
        CALLS - succeeded.len()
    );
    let exit = server.wait();
    assert!(exit.success(), "exit status {exit:?}; log:\n{}", server.log());
    assert!(server.log().contains("latchkey stopped cleanly"));
    let drained = completed_after_signal.load(Ordering::SeqCst);
    assert!(
        drained > 0,
        "calls in flight when the signal came completed ({drained})"
    );

    let server = BinaryServer::start(dir.path(), &[], &[]);
    let mut passwordless = pb::passwordless_client::PasswordlessClient::new(connect(server.addr).await);
    for issued in &succeeded {
        passwordless
            .inspect_token(pb::InspectTokenRequest {
                token: token_of(&issued.link),
            })
            .await
            .expect("acknowledged link kept");
    }
}

/// A stream the server's GOAWAY left unserved, as tonic's client reports it.
/// A call the client still held, waiting for a free stream, when its connection closed.
fn never_sent(status: &tonic::Status) -> bool {
    status.code() == Code::Unknown && format!("{status:?}").contains("DispatchGone")
}

fn refused_by_goaway(status: &tonic::Status) -> bool {
    status.code() == Code::Internal && format!("{status:?}").contains("GoAway(b\"\", NO_ERROR, Remote)")
}

#[test]
fn sigterm_right_after_the_serving_line_still_exits_zero() {
    // The signal handlers are installed before start-up, so there is no moment after "serving"
    // at which SIGTERM kills the process instead of draining it.
    for _ in 0..5 {
        let dir = dir();
        let mut server = BinaryServer::start(dir.path(), &[], &[]);
        server.sigterm();
        let status = server.wait();
        assert_eq!(status.code(), Some(0), "{status:?}\n{}", server.log());
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_data_directory_or_the_log() {
    let dir = dir();
    // The most talkative logging there is.
    let mut server = BinaryServer::start(dir.path(), &[], &[("RUST_LOG", "trace")]);
    let channel = connect(server.addr).await;
    let mut passwordless = pb::passwordless_client::PasswordlessClient::new(channel.clone());
    let mut sessions = pb::sessions_client::SessionsClient::new(channel);
    let mut secrets = Vec::new();
    for n in 0..5 {
        let mut request = issue_request(&format!("secret{n}@example.com"));
        request.code_challenge = CHALLENGE.into();
        let issued = passwordless.issue_login_link(request).await.unwrap().into_inner();
        let token = token_of(&issued.link);
        // Reuse re-derives the same token: it must not be stored for that.
        let again = passwordless
            .issue_login_link(issue_for_user(&issued.user_id))
            .await
            .unwrap()
            .into_inner();
        secrets.push(token_of(&again.link));
        if n % 2 == 0 {
            let _ = passwordless
                .verify_token(pb::VerifyTokenRequest {
                    token: token.clone(),
                    code_verifier: "x".repeat(43),
                    ..Default::default()
                })
                .await;
            let verified = passwordless
                .verify_token(pb::VerifyTokenRequest {
                    token: token.clone(),
                    code_verifier: VERIFIER.into(),
                    ..Default::default()
                })
                .await
                .unwrap();
            let session = session_of(verified.into_inner());
            let request = pb::AuthenticateSessionRequest {
                credential: Some(pb::authenticate_session_request::Credential::SessionToken(
                    session.session_token.clone(),
                )),
            };
            sessions.authenticate_session(request).await.unwrap();
            secrets.push(session.session_token);
            secrets.push(session.session_jwt);
        }
        secrets.push(token);
    }
    server.sigterm();
    assert!(server.wait().success());

    let server_key = std::fs::read_to_string(dir.path().join("latchkey-server.key")).unwrap();
    secrets.push(server_key.trim().to_string());
    secrets.push(VERIFIER.to_string());
    let data = common::store::stored_bytes(dir.path());
    assert!(data.len() > 1000, "the store holds the records");
    let log = server.log();
    assert!(log.lines().count() > 10, "trace logging produced output");
    for secret in &secrets {
        assert!(!contains(&data, secret), "a secret is in the store");
        assert!(!log.contains(secret.as_str()), "a secret is in the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_overrides_flags() {
    let dir = dir();
    // --listen points at a port that cannot be bound; the environment wins and picks a free one.
    let mut command = command(dir.path());
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:1",
            "--metrics-listen",
            "127.0.0.1:0",
            "--data-dir",
            "data",
        ])
        .env("LATCHKEY_LISTEN", "127.0.0.1:0")
        // What Kubernetes injects for a Service named latchkey: ignored, not unknown keys.
        .env("LATCHKEY_PORT", "tcp://10.0.0.7:50051")
        .env("LATCHKEY_PORT_50051_TCP_ADDR", "10.0.0.7")
        .env("LATCHKEY_SERVICE_HOST", "10.0.0.7")
        .env("LATCHKEY_SERVICE_PORT_GRPC", "50051");
    let server = BinaryServer::spawn(command, dir.path());
    let mut health = tonic_health::pb::health_client::HealthClient::new(connect(server.addr).await);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("serving where the environment said");
}

struct Output {
    status: std::process::ExitStatus,
    stderr: String,
    stdout: String,
}

fn command_output(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = command(dir);
    command.args(args).stdout(std::process::Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().unwrap();
    Output {
        status: output.status,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
    }
}

#[test]
fn bad_config_stops_start_up_naming_the_key() {
    let dir = dir();
    let file = dir.path().join("latchkey.toml");
    let cases: &[(&str, &str)] = &[
        ("[store]\ndurability = \"sometimes\"\n", "store.durability"),
        ("[store]\ncache_capacity = 1\n", "cache_capacity"),
        ("listen = \"not an address\"\n", "listen"),
        ("[auth]\nrequired = true\n", "auth.api_keys"),
        (
            "[[auth.api_keys]]\nname = \"web\"\nsha256 = \"abc\"\nscopes = [\"links\"]\n",
            "auth.api_keys[0].sha256",
        ),
        (
            "[[auth.api_keys]]\nname = \"web\"\nsha256 = \"abc\"\nscopes = [\"everything\"]\n",
            "scopes",
        ),
    ];
    for (toml, key) in cases {
        std::fs::write(&file, toml).unwrap();
        let output = command_output(dir.path(), &["serve", "--config", "latchkey.toml"], &[]);
        assert_eq!(output.status.code(), Some(2), "{toml}: {}", output.stderr);
        assert!(
            output.stderr.contains(key),
            "{toml}: expected {key} in {}",
            output.stderr
        );
    }
    // An unknown LATCHKEY_* variable is a typo to report, like an unknown key in the file.
    let typo = command_output(
        dir.path(),
        &["serve", "--listen", "127.0.0.1:0"],
        &[("LATCHKEY_STORE__DURABLITY", "flush")],
    );
    assert_eq!(typo.status.code(), Some(2), "{}", typo.stderr);
    assert!(typo.stderr.to_lowercase().contains("durablity"), "{}", typo.stderr);

    let missing = command_output(dir.path(), &["serve", "--config", "nope.toml"], &[]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(missing.stderr.contains("nope.toml"));

    // Auth off is for loopback only.
    let open = command_output(dir.path(), &["serve", "--listen", "0.0.0.0:0"], &[]);
    assert_eq!(open.status.code(), Some(2));
    assert!(open.stderr.contains("auth.required"), "{}", open.stderr);

    // Production without a server key.
    let digest = latchkey::crypto::api_key_digest("k");
    std::fs::write(
        &file,
        format!(
            "[[auth.api_keys]]\nname = \"web\"\nsha256 = \"{digest}\"\nscopes = [\"links\"]\n\n[mail.smtp]\nhost = \"smtp.example.com\"\n"
        ),
    )
    .unwrap();
    let keyless = command_output(dir.path(), &["serve", "--config", "latchkey.toml"], &[]);
    assert_eq!(keyless.status.code(), Some(2));
    assert!(keyless.stderr.contains("server_key_file"), "{}", keyless.stderr);
    assert!(
        !dir.path().join("latchkey-server.key").exists(),
        "production never generates a key"
    );
}

#[test]
fn hash_key_prints_the_digest_config_expects() {
    let dir = dir();
    let output = command_output(dir.path(), &["hash-key", "my-secret-key"], &[]);
    assert!(output.status.success());
    assert_eq!(output.stdout.trim(), latchkey::crypto::api_key_digest("my-secret-key"));

    let mut child = command(dir.path())
        .arg("hash-key")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"my-secret-key\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        latchkey::crypto::api_key_digest("my-secret-key")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_config_with_keys_from_file_and_environment() {
    let dir = dir();
    let key = "prod-api-key-42";
    let digest = latchkey::crypto::api_key_digest(key);
    let server_key = latchkey::crypto::ServerKey::generate_encoded();
    let config = format!(
        "listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n\n[log]\nformat = \"json\"\n\n[[auth.api_keys]]\nname = \"web\"\nsha256 = \"{digest}\"\nscopes = [\"links\", \"sessions\"]\n\n[links]\ndefault_redirect_url = \"https://app.example.com/auth/callback\"\nredirect_allow_list = [\"https://app.example.com/auth/\"]\n\n[mail]\ntransport = \"file\"\n"
    );
    std::fs::write(dir.path().join("latchkey.toml"), config).unwrap();
    let mut command = command(dir.path());
    command
        .args(["serve", "--config", "latchkey.toml"])
        .env("LATCHKEY_SERVER_KEY", &server_key);
    let server = BinaryServer::spawn(command, dir.path());
    let mut passwordless = pb::passwordless_client::PasswordlessClient::new(connect(server.addr).await);
    assert_error(
        passwordless
            .issue_login_link(issue_request("p@example.com"))
            .await
            .map(|_| ()),
        Code::Unauthenticated,
        "API_KEY_INVALID",
    );
    let mut request = tonic::Request::new(issue_request("p@example.com"));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    let issued = passwordless.issue_login_link(request).await.unwrap().into_inner();
    assert!(issued.link.starts_with("https://app.example.com/auth/callback?token="));
    assert!(!server.log().contains("AUTH IS OFF"));
}

/// Everything the server writes is for its own user: the store, the development mail that holds
/// working links, and the generated server key: files 0600, directories 0700, whatever the umask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_the_server_writes_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = dir();
    // A permissive umask, as a careless service manager might leave.
    let mut server = BinaryServer::spawn(
        {
            let mut shell = std::process::Command::new("sh");
            shell
                .current_dir(dir.path())
                .env_remove("RUST_LOG")
                .env("LATCHKEY_LOG__FORMAT", "json")
                .arg("-c")
                .arg(format!(
                    "umask 000; exec {} serve --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --data-dir data",
                    env!("CARGO_BIN_EXE_latchkey")
                ))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped());
            shell
        },
        dir.path(),
    );
    let mut passwordless = pb::passwordless_client::PasswordlessClient::new(connect(server.addr).await);
    let sent = passwordless
        .login_or_create(pb::LoginOrCreateRequest {
            email: "private@example.com".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut emails = pb::emails_client::EmailsClient::new(connect(server.addr).await);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status = emails
            .get_email_status(pb::GetEmailStatusRequest {
                email_id: sent.email_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        if status.status() == pb::get_email_status_response::Status::Sent {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the email was not written");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    server.sigterm();
    assert!(server.wait().success());

    let mut checked = 0;
    let mut pending = vec![dir.path().join("data")];
    while let Some(path) = pending.pop() {
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        if path.is_dir() {
            assert_eq!(mode, 0o700, "{}", path.display());
            pending.extend(std::fs::read_dir(&path).unwrap().map(|entry| entry.unwrap().path()));
        } else {
            assert_eq!(mode, 0o600, "{}", path.display());
        }
        checked += 1;
    }
    assert!(checked > 5, "the store and the mail were there");
    assert!(
        std::fs::read_dir(dir.path().join("data/mail"))
            .unwrap()
            .next()
            .is_some(),
        "an .eml file was written"
    );
    let key = dir.path().join("latchkey-server.key");
    assert_eq!(std::fs::metadata(key).unwrap().permissions().mode() & 0o777, 0o600);
}

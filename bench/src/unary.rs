//! Unary scenarios: health (the ceiling), issue, verify, authenticate, the open-loop runs at half
//! the peak rate, and the h2load cross-check.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::api::pb::{self, authenticate_session_request::Credential, issue_login_link_request::User};
use crate::api::{Api, PasswordlessClient, SessionsClient, query_value};
use crate::bench::{Bench, Row, SessionCredentials, TokenPool, finish_perf, new_email, round, store_figures};
use crate::load::{self, CallFuture, Op};

pub fn health_op() -> Op {
    Arc::new(|channel: Channel, _n| {
        Some(Box::pin(async move {
            let mut client = HealthClient::new(channel);
            client
                .check(HealthCheckRequest { service: String::new() })
                .await
                .map(|_| ())
        }) as CallFuture)
    })
}

/// IssueLoginLink for a new user each call; the token of every `keep_every`-th link goes to
/// `pool` for verify.
pub fn issue_op(api: Arc<Api>, pool: Arc<TokenPool>, keep_every: u64) -> Op {
    Arc::new(move |channel: Channel, n| {
        let (api, pool) = (api.clone(), pool.clone());
        Some(Box::pin(async move {
            let mut client = PasswordlessClient::new(channel);
            let request = pb::IssueLoginLinkRequest {
                user: Some(User::Email(new_email("issue"))),
                first_name: "Bench".into(),
                last_name: "User".into(),
                ..Default::default()
            };
            let response = client.issue_login_link(api.request(request)).await?.into_inner();
            if n % keep_every == 0
                && let Some(token) = query_value(&response.link, "token")
            {
                pool.push(token);
            }
            Ok(())
        }) as CallFuture)
    })
}

/// VerifyToken of the next pre-issued token; keeps the first sessions for authenticate.
pub fn verify_op(
    api: Arc<Api>,
    pool: Arc<TokenPool>,
    sessions: Option<Arc<std::sync::Mutex<Vec<SessionCredentials>>>>,
) -> Op {
    Arc::new(move |channel: Channel, _n| {
        let token = pool.take()?;
        let (api, sessions) = (api.clone(), sessions.clone());
        Some(Box::pin(async move {
            let mut client = PasswordlessClient::new(channel);
            let request = pb::VerifyTokenRequest {
                token,
                ..Default::default()
            };
            let response = client.verify_token(api.request(request)).await?.into_inner();
            if let (Some(sessions), Some(pb::verify_token_response::Result::Session(session))) =
                (sessions, response.result)
            {
                let mut sessions = sessions.lock().expect("sessions lock");
                if sessions.len() < 4096 {
                    sessions.push(SessionCredentials {
                        token: session.session_token,
                        jwt: session.session_jwt,
                    });
                }
            }
            Ok(())
        }) as CallFuture)
    })
}

fn authenticate_op(api: Arc<Api>, sessions: Arc<Vec<SessionCredentials>>, by_jwt: bool) -> Op {
    Arc::new(move |channel: Channel, n| {
        let session = &sessions[(n as usize) % sessions.len()];
        let credential = if by_jwt {
            Credential::SessionJwt(session.jwt.clone())
        } else {
            Credential::SessionToken(session.token.clone())
        };
        let api = api.clone();
        Some(Box::pin(async move {
            let mut client = SessionsClient::new(channel);
            let request = pb::AuthenticateSessionRequest {
                credential: Some(credential),
            };
            client.authenticate_session(api.request(request)).await.map(|_| ())
        }) as CallFuture)
    })
}

impl Bench {
    pub(crate) async fn closed_loop(&mut self, name: &str, op: Op) -> Row {
        let s = &self.settings;
        let (warmup, duration, per_connection) = (s.warmup, s.duration, s.per_connection);
        self.settle();
        let perf = if name == "issue" || name == "verify" {
            self.start_perf(name, warmup, duration)
        } else {
            None
        };
        let probe = self.probe();
        let before = self.server().metrics();
        let measured = load::closed(self.channels(), per_connection, warmup, duration, probe, &self.rss, op).await;
        let after = self.server().metrics();
        finish_perf(perf);
        let mut row = Row::from_measured(name, &measured);
        row.extra
            .extend(store_figures(&before, &after, (warmup + duration).as_secs_f64()));
        row
    }

    pub async fn health(&mut self) {
        let row = self.closed_loop("health", health_op()).await;
        self.push(row);
    }

    pub async fn issue(&mut self) {
        let op = issue_op(self.api.clone(), self.tokens.clone(), 1);
        let row = self.closed_loop("issue", op).await;
        self.push(row);
    }

    /// Issues links (unmeasured) until the pool holds `wanted` unused tokens.
    pub async fn top_up_tokens(&mut self, wanted: usize) {
        let missing = wanted.saturating_sub(self.tokens.remaining());
        if missing == 0 {
            return;
        }
        eprintln!("  (issuing {missing} more links for verify)");
        let counted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let inner = issue_op(self.api.clone(), self.tokens.clone(), 1);
        let op: Op = Arc::new(move |channel, n| {
            if counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= missing {
                return None;
            }
            inner(channel, n)
        });
        let probe = self.probe();
        load::closed(
            self.channels(),
            self.settings.per_connection,
            Duration::ZERO,
            Duration::from_secs(3600),
            probe,
            &self.rss,
            op,
        )
        .await;
    }

    /// Tokens for a closed-loop verify: the issue rate times the run's length, plus half.
    fn verify_tokens_wanted(&self) -> usize {
        let issue_rate = self.row("issue").map(|row| row.calls_per_s).unwrap_or(2000.0);
        let seconds = (self.settings.warmup + self.settings.duration).as_secs_f64();
        (issue_rate.max(1000.0) * seconds * 1.5) as usize
    }

    pub async fn verify(&mut self) {
        self.top_up_tokens(self.verify_tokens_wanted()).await;
        let op = verify_op(self.api.clone(), self.tokens.clone(), Some(self.sessions.clone()));
        let row = self.closed_loop("verify", op).await;
        self.push(row);
    }

    /// Open loop at half the closed-loop peak of `of` ("issue" or "verify").
    pub async fn half_peak(&mut self, of: &str) {
        let Some(peak) = self.row(of).map(|row| row.calls_per_s) else {
            return;
        };
        let rate = (peak / 2.0).max(10.0);
        let (warmup, duration) = (self.settings.warmup, self.settings.duration);
        let op = match of {
            "issue" => issue_op(self.api.clone(), self.tokens.clone(), 1),
            _ => {
                let wanted = (rate * (warmup + duration).as_secs_f64() * 1.2) as usize + 1000;
                self.top_up_tokens(wanted).await;
                verify_op(self.api.clone(), self.tokens.clone(), None)
            }
        };
        self.settle();
        let probe = self.probe();
        let before = self.server().metrics();
        let measured = load::open(self.channels(), rate, 4096, warmup, duration, probe, &self.rss, op).await;
        let after = self.server().metrics();
        let mut row = Row::from_measured(&format!("{of}_half_peak"), &measured);
        row.extra
            .extend(store_figures(&before, &after, (warmup + duration).as_secs_f64()));
        row.extra
            .insert("target_rate".into(), serde_json::json!(round(rate, 1)));
        row.note = format!("open loop at {rate:.0}/s (50% of peak); latency from scheduled start");
        self.push(row);
    }

    /// Sessions for authenticate and h2load when verify did not leave any.
    pub async fn ensure_sessions(&mut self) {
        if !self.sessions.lock().expect("sessions lock").is_empty() {
            return;
        }
        self.top_up_tokens(1000).await;
        let op = verify_op(self.api.clone(), self.tokens.clone(), Some(self.sessions.clone()));
        crate::flows::batch(self, self.channels(), self.settings.per_connection, 1000, op).await;
    }

    pub async fn authenticate(&mut self) {
        let sessions = self.sessions.lock().expect("sessions lock").clone();
        if sessions.is_empty() {
            self.problems
                .push("authenticate: no sessions (verify did not run or failed)".into());
            return;
        }
        let sessions = Arc::new(sessions);
        for (name, by_jwt) in [("authenticate_token", false), ("authenticate_jwt", true)] {
            let op = authenticate_op(self.api.clone(), sessions.clone(), by_jwt);
            let row = self.closed_loop(name, op).await;
            self.push(row);
        }
    }

    /// h2load against Health/Check and AuthenticateSession (by token), in the same shape as the
    /// Rust generator (connections × calls in flight each).
    pub async fn cross_check(&mut self) {
        let dir = self.settings.work_dir.clone();
        let health_body = grpc_frame(&[]);
        let session = self.sessions.lock().expect("sessions lock").first().cloned();
        let mut checks = vec![("health", "/grpc.health.v1.Health/Check", health_body, false)];
        if let Some(session) = session {
            let message = pb::AuthenticateSessionRequest {
                credential: Some(Credential::SessionToken(session.token)),
            };
            checks.push((
                "authenticate_token",
                "/latchkey.v1.Sessions/AuthenticateSession",
                grpc_frame(&message.encode_to_vec()),
                true,
            ));
        }
        for (name, path, body, auth) in checks {
            let body_file = dir.join(format!("{name}.body.bin"));
            if let Err(error) = std::fs::write(&body_file, &body) {
                self.problems.push(format!("h2load {name}: {error}"));
                continue;
            }
            let header = auth.then(|| self.api.authorization_header());
            let run = crate::h2load::Run {
                url: format!("{}{path}", self.server().url),
                body_file,
                header,
                connections: self.settings.connections,
                streams: self.settings.per_connection,
                warmup: self.settings.warmup,
                duration: self.settings.duration,
            };
            let probe = self.server().probe();
            match crate::h2load::run(run, probe).await {
                Ok(result) => {
                    let rust = self.row(name).cloned();
                    eprintln!(
                        "  h2load {:<15} {:>10.1}/s  mean {:>6.2} ms  max {:>7.2} ms  failed {}  cpu {:.1} us/call  (rust generator: {:.1}/s)",
                        name,
                        result.calls_per_s,
                        result.mean_ms,
                        result.max_ms,
                        result.failed,
                        result.cpu_us_per_call,
                        rust.as_ref().map(|row| row.calls_per_s).unwrap_or(0.0)
                    );
                    if result.failed > 0 || result.errored > 0 {
                        self.problems.push(format!(
                            "h2load {name}: {} failed, {} errored",
                            result.failed, result.errored
                        ));
                    }
                    let mut value = result.to_json();
                    if let Some(rust) = rust {
                        value["rust_calls_per_s"] = serde_json::json!(rust.calls_per_s);
                        value["rust_p50_ms"] = serde_json::json!(rust.p50_ms);
                        value["h2load_to_rust"] =
                            serde_json::json!(round(result.calls_per_s / rust.calls_per_s.max(1.0), 3));
                    }
                    let checks = self.extra.entry("h2load").or_insert_with(|| serde_json::json!({}));
                    checks[name] = value;
                }
                Err(error) => self.problems.push(format!("h2load {name}: {error}")),
            }
        }
    }
}

/// A gRPC length-prefixed message: 1 byte "not compressed", 4 bytes big-endian length, the bytes.
pub fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.push(0);
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

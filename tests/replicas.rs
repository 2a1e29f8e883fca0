//! Several replicas of the real binary over one PostgreSQL (whatever `LATCHKEY_TEST_STORE` says):
//! any replica serves any call. A link issued on one is reused on another and verifies once
//! anywhere; concurrent verifications spread over three give one success; a long poll on one
//! replica is woken by a click on another; mail queued round-robin is delivered exactly once; the
//! rate limit is one budget; a JWT from one verifies with another's JWKS; an email caught
//! mid-send by kill -9 of its replica goes out once from another.

mod common;

use std::path::Path;
use std::time::Instant;

use common::mail::*;
use common::mime::header;
use common::process::BinaryServer;
use common::*;
use pb::passwordless_client::PasswordlessClient;
use pb::poll_session_response::Status as PollStatus;
use tonic::Code;
use tonic::transport::Channel;

/// A replica named `name` (its data directory `data-<name>`) of the deployment in `dir`.
fn replica(dir: &Path, name: &str, extra: &[(&str, &str)]) -> BinaryServer {
    let url = common::store::postgres_url(dir);
    let data_dir = format!("data-{name}");
    let patient = common::store::patient_env();
    let mut env = vec![
        ("LATCHKEY_STORE__BACKEND", "postgres"),
        ("LATCHKEY_STORE__POSTGRES__URL", url.as_str()),
        ("LATCHKEY_DATA_DIR", data_dir.as_str()),
    ];
    env.extend(patient.iter().map(|(key, value)| (*key, value.as_str())));
    env.extend_from_slice(extra);
    BinaryServer::start(dir, &[], &env)
}

/// Three replicas, started one after another (the first generates the shared development key).
fn three(dir: &Path, extra: &[(&str, &str)]) -> Vec<BinaryServer> {
    ["a", "b", "c"].iter().map(|name| replica(dir, name, extra)).collect()
}

async fn clients(replicas: &[BinaryServer]) -> Vec<PasswordlessClient<Channel>> {
    let mut clients = Vec::new();
    for replica in replicas {
        clients.push(PasswordlessClient::new(connect(replica.addr).await));
    }
    clients
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_issued_on_one_replica_is_reused_on_another_and_verifies_once_on_any() {
    let dir = tempfile::tempdir().unwrap();
    let replicas = three(dir.path(), &[]);
    let mut clients = clients(&replicas).await;

    let issued = clients[0]
        .issue_login_link(issue_request("everywhere@example.com"))
        .await
        .unwrap()
        .into_inner();
    let token = token_of(&issued.link);
    let inspected = clients[1]
        .inspect_token(pb::InspectTokenRequest { token: token.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(inspected.masked_email, "e***@example.com");
    let again = clients[1]
        .issue_login_link(issue_request("everywhere@example.com"))
        .await
        .unwrap()
        .into_inner();
    assert!(again.reused, "the same parameters on another replica reuse the link");
    assert_eq!(again.link, issued.link);

    let verified = clients[2]
        .verify_token(verify_request(&token))
        .await
        .unwrap()
        .into_inner();
    let session = session_of(verified);
    for client in &mut clients {
        assert_error(
            client.verify_token(verify_request(&token)).await,
            Code::FailedPrecondition,
            "TOKEN_ALREADY_USED",
        );
    }

    // A session JWT signed on C verifies with A's JWKS, and every replica publishes the same keys.
    let mut jwks = Vec::new();
    for replica in &replicas {
        let mut sessions = pb::sessions_client::SessionsClient::new(connect(replica.addr).await);
        let keys = sessions.get_jwks(pb::GetJwksRequest {}).await.unwrap().into_inner();
        jwks.push(format!("{:?}", keys.keys));
        let request = pb::AuthenticateSessionRequest {
            credential: Some(pb::authenticate_session_request::Credential::SessionJwt(
                session.session_jwt.clone(),
            )),
        };
        sessions.authenticate_session(request).await.unwrap();
    }
    assert!(jwks.windows(2).all(|pair| pair[0] == pair[1]), "{jwks:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_64_verifications_spread_over_three_replicas_wins_each_time() {
    let dir = tempfile::tempdir().unwrap();
    let replicas = three(dir.path(), &[]);
    let clients = clients(&replicas).await;
    for round in 0..3 {
        let issued = clients[round % 3]
            .clone()
            .issue_login_link(issue_request(&format!("race{round}@example.com")))
            .await
            .unwrap()
            .into_inner();
        let token = token_of(&issued.link);
        let mut calls = tokio::task::JoinSet::new();
        for n in 0..64 {
            let (mut client, token) = (clients[n % 3].clone(), token.clone());
            calls.spawn(async move { client.verify_token(verify_request(&token)).await });
        }
        let mut wins = 0;
        while let Some(outcome) = calls.join_next().await {
            match outcome.unwrap() {
                Ok(_) => wins += 1,
                Err(status) => assert_eq!(
                    reason(&status),
                    "TOKEN_ALREADY_USED",
                    "{status:?}\n{}",
                    replicas.iter().map(|r| r.log()).collect::<Vec<_>>().join("\n")
                ),
            }
        }
        assert_eq!(wins, 1, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_on_one_replica_is_woken_by_a_click_on_another() {
    let dir = tempfile::tempdir().unwrap();
    // Only a notification can answer B's poll before its 30 s are up: B's recheck is a minute.
    let a = replica(dir.path(), "a", &[]);
    let b = replica(
        dir.path(),
        "b",
        &[("LATCHKEY_STORE__POSTGRES__RECHECK_MILLIS", "60000")],
    );
    let c = replica(dir.path(), "c", &[]);
    let sent = PasswordlessClient::new(connect(a.addr).await)
        .send_enchanted_link(pb::SendEnchantedLinkRequest {
            login_id: "cross@example.com".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // Any replica's worker may have sent it.
    let message = eventually("the enchanted email", async || {
        ["a", "b", "c"]
            .iter()
            .flat_map(|name| eml_files(&dir.path().join(format!("data-{name}/mail"))))
            .find(|message| header(message, "X-Latchkey-Email-Id").as_deref() == Some(sent.email_id.as_str()))
    })
    .await;
    let right = numbered_links(&message)
        .into_iter()
        .find(|(number, _)| *number == sent.link_id)
        .unwrap()
        .1;

    let mut poller = PasswordlessClient::new(connect(b.addr).await);
    let pending_ref = sent.pending_ref.clone();
    let poll = tokio::spawn(async move {
        let request = pb::PollSessionRequest {
            pending_ref,
            wait_seconds: 30,
            client: None,
        };
        poller.poll_session(request).await.unwrap().into_inner()
    });
    let b_http = b.http_addr.unwrap();
    eventually("B to hold the poll", async || {
        let (_, metrics) = http_get(b_http, "/metrics").await;
        metrics.contains("latchkey_long_polls_live 1").then_some(())
    })
    .await;
    let clicked = Instant::now();
    PasswordlessClient::new(connect(c.addr).await)
        .verify_token(verify_request(&right))
        .await
        .unwrap();
    let answer = poll.await.unwrap();
    assert_eq!(
        answer.status(),
        PollStatus::Verified,
        "the poll on B answered {:?} after {:?}",
        answer.status(),
        clicked.elapsed()
    );
    assert!(answer.session.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_queued_round_robin_is_delivered_exactly_once_and_the_rate_limit_is_one_budget() {
    let dir = tempfile::tempdir().unwrap();
    let maildir = tempfile::tempdir().unwrap();
    let port = free_port();
    let smtp = SmtpServer::start(maildir.path(), port, &SmtpOptions::default());
    let port = port.to_string();
    let smtp_env = smtp_env(&port, "60");
    let replicas = three(dir.path(), &smtp_env);
    let mut clients = clients(&replicas).await;
    let mut email_ids = Vec::new();
    for n in 0..100 {
        let request = pb::LoginOrCreateRequest {
            email: format!("round{n}@example.com"),
            ..Default::default()
        };
        let queued = clients[n % 3].login_or_create(request).await.unwrap().into_inner();
        email_ids.push(queued.email_id);
    }
    for email_id in &email_ids {
        sent(replicas[1].addr, email_id).await;
    }
    let mut delivered: Vec<String> = smtp
        .messages()
        .iter()
        .map(|message| header(message, "X-Latchkey-Email-Id").unwrap())
        .collect();
    delivered.sort();
    email_ids.sort();
    assert_eq!(delivered, email_ids, "each email exactly once");

    // The default budget is 5 at once per recipient, whichever replica is asked.
    let mut outcomes = Vec::new();
    for n in 0..9 {
        let request = pb::LoginOrCreateRequest {
            email: "budget@example.com".into(),
            ..Default::default()
        };
        outcomes.push(
            clients[n % 3]
                .login_or_create(request)
                .await
                .map_err(|status| reason(&status)),
        );
    }
    assert_eq!(
        outcomes.iter().filter(|outcome| outcome.is_ok()).count(),
        5,
        "{outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .filter_map(|outcome| outcome.as_ref().err())
            .all(|reason| reason == "RATE_LIMITED")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_caught_mid_send_by_kill_9_of_its_replica_goes_out_once_from_another() {
    let dir = tempfile::tempdir().unwrap();
    let maildir = tempfile::tempdir().unwrap();
    let port = free_port();
    let smtp = stalling_smtp_server(maildir.path(), port);
    let port = port.to_string();
    let env = smtp_env(&port, "3");
    // A alone, so A's worker claims the email.
    let mut a = replica(dir.path(), "a", &env);
    let request = pb::LoginOrCreateRequest {
        email: "midsend@example.com".into(),
        ..Default::default()
    };
    let email_id = PasswordlessClient::new(connect(a.addr).await)
        .login_or_create(request)
        .await
        .unwrap()
        .into_inner()
        .email_id;
    eventually("the SMTP server to hold the message", async || {
        (smtp.stalled() == 1).then_some(())
    })
    .await;
    a.kill9();

    let b = replica(dir.path(), "b", &env);
    let sent = sent(b.addr, &email_id).await;
    assert_eq!(sent.attempts, 2);
    let delivered = smtp.messages();
    assert_eq!(delivered.len(), 1, "exactly once");
    assert_eq!(
        header(&delivered[0], "X-Latchkey-Email-Id").as_deref(),
        Some(email_id.as_str())
    );
}

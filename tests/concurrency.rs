//! Single use under concurrency: of many simultaneous verifications of one token, exactly one
//! succeeds, every time.

mod common;

use common::*;
use tonic::Code;

const CONCURRENT: usize = 64;
const ROUNDS: usize = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_one_of_64_concurrent_verifications_wins() {
    let app = TestApp::spawn().await;
    for round in 0..ROUNDS {
        let issued = app.issue_for_email(&format!("race{round}@example.com")).await;
        let token = token_of(&issued.link);
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(CONCURRENT));
        let attempts: Vec<_> = (0..CONCURRENT)
            .map(|_| {
                let mut client = app.passwordless();
                let token = token.clone();
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    client
                        .verify_token(pb::VerifyTokenRequest {
                            token,
                            ..Default::default()
                        })
                        .await
                })
            })
            .collect();
        let mut sessions = Vec::new();
        for attempt in attempts {
            match attempt.await.unwrap() {
                Ok(response) => sessions.push(session_of(response.into_inner())),
                Err(status) => {
                    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                    assert_eq!(reason(&status), "TOKEN_ALREADY_USED");
                }
            }
        }
        assert_eq!(sessions.len(), 1, "round {round}: exactly one winner");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_quick_creation_of_one_email_makes_one_user() {
    let app = TestApp::spawn().await;
    let calls: Vec<_> = (0..16)
        .map(|_| {
            let mut client = app.passwordless();
            tokio::spawn(async move { client.issue_login_link(issue_request("same@example.com")).await })
        })
        .collect();
    let mut user_ids = Vec::new();
    let mut created = 0;
    for call in calls {
        let issued = call.await.unwrap().expect("every call gets a link").into_inner();
        created += usize::from(issued.user_created);
        user_ids.push(issued.user_id);
    }
    user_ids.dedup();
    assert_eq!(user_ids.len(), 1, "one user");
    assert_eq!(created, 1, "created once");
}

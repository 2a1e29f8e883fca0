//! The store contract: what every backend of `domain::store::Store` promises (see the trait's
//! doc), checked the same way on each. The backend comes from `LATCHKEY_TEST_STORE` (`sled`, the
//! default), opened through `store::open` as the server opens it. Nothing here knows a backend's
//! layout; tests of sled's own layout are in `src/store/sled_store` and `tests/sled_*.rs`.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::store::{TestStore, open_test_store};
use latchkey::crypto::Digest32;
use latchkey::domain::error::{Error, Reason, Result};
use latchkey::domain::model::{
    Attempt, AttemptStatus, AuthCode, ClientInfo, Email, EmailKind, EmailLink, EmailStatus, HOUR, Link, LinkKind,
    LinkOtp, MINUTE, Millis, OAuthRequest, Role, Session, SigningKeyRecord, User, UserStatus,
};
use latchkey::domain::rate_limit::RateLimit;
use latchkey::domain::store::{
    Claimant, CodeRedemption, Collection, IdempotencyClaim, IdempotencyState, LinkInsert, LiveAt, NewEmail,
    OutboxClaim, OutboxDepth, RateCharge, Redemption, Store,
};
use latchkey::domain::wakeups::Topic;

const NOW: Millis = 1_795_545_258_952;
/// Past every retention a test config allows (`store.retention_hours` of 24).
const LONG_AFTER: Millis = NOW + 30 * 24 * HOUR;

fn user(n: usize) -> User {
    User {
        id: format!("user-{n:04}"),
        email: format!("Person{n}@Example.com"),
        first_name: "Ada".into(),
        last_name: "Lovelace".into(),
        status: UserStatus::Active,
        role: Role::Client,
        mfa_enabled: false,
        email_verified: false,
        created_at: NOW,
        updated_at: NOW,
        last_login_at: None,
        sessions_revoked_at: None,
        locale: None,
    }
}

fn link(name: &str, user_id: &str) -> Link {
    Link {
        token_digest: Digest32::of(name),
        seed: [7; 32],
        kind: LinkKind::Login,
        user_id: user_id.into(),
        redirect_url: "https://app.example.com/callback".into(),
        created_at: NOW,
        expires_at: NOW + 15 * MINUTE,
        used_at: None,
        code_challenge: None,
        reuse_key: None,
        attempt: None,
        oauth: None,
        otp: None,
    }
}

fn session(name: &str, user_id: &str) -> Session {
    Session {
        id: format!("session-{name}"),
        user_id: user_id.into(),
        token_digest: Digest32::of(&format!("session token {name}")),
        created_at: NOW,
        expires_at: NOW + HOUR,
        revoked_at: None,
        link_kind: LinkKind::Login,
        claims: serde_json::Map::new(),
        via_otp: false,
        client: None,
        last_authenticated_at: None,
    }
}

fn email(name: &str, user: &User, links: &[Link]) -> Email {
    Email {
        id: format!("email-{name}"),
        recipient: user.email.clone(),
        user_id: user.id.clone(),
        first_name: user.first_name.clone(),
        last_name: user.last_name.clone(),
        kind: EmailKind::Login,
        template_id: None,
        links: links
            .iter()
            .map(|link| EmailLink {
                token_digest: link.token_digest,
                number: None,
                otp: link.otp.is_some(),
            })
            .collect(),
        link_expires_at: NOW + 15 * MINUTE,
        status: EmailStatus::Queued,
        attempts: 0,
        last_error: None,
        created_at: NOW,
        next_attempt_at: NOW,
        sent_at: None,
        locale: "en".into(),
    }
}

fn attempt(name: &str, user_id: &str, right_link: &Link) -> Attempt {
    Attempt {
        ref_digest: Digest32::of(&format!("ref {name}")),
        user_id: user_id.into(),
        status: AttemptStatus::Pending,
        right_link: right_link.token_digest,
        created_at: NOW,
        expires_at: NOW + 15 * MINUTE,
        verified_at: None,
        claims: serde_json::Map::new(),
        session_id: None,
    }
}

/// Queues `email` with its links (and a new user, when given), no rate limit.
async fn queue(store: &dyn Store, links: &[Link], new_user: Option<&User>, email: &Email) -> Result<()> {
    store
        .insert_email(NewEmail {
            links,
            attempt: None,
            new_user,
            email,
            rate: None,
            now: NOW,
        })
        .await
}

/// Queues an enchanted-link email for a new `user` with its links and attempt.
async fn queue_enchanted(store: &dyn Store, user: &User, links: &[Link], attempt: &Attempt) {
    let queued = email(&attempt.user_id, user, links);
    store
        .insert_email(NewEmail {
            links,
            attempt: Some(attempt),
            new_user: Some(user),
            email: &queued,
            rate: None,
            now: NOW,
        })
        .await
        .unwrap();
}

/// A user with one link, stored.
async fn stored_user(store: &dyn Store, n: usize) -> (User, Link) {
    let user = user(n);
    let link = link(&format!("first link of {n}"), &user.id);
    store.insert_link(&link, Some(&user), NOW).await.unwrap();
    (user, link)
}

/// Stores a link for an existing user; whether it was new (not a reused one).
async fn inserted(store: &dyn Store, link: &Link, now: Millis) -> bool {
    matches!(store.insert_link(link, None, now).await.unwrap(), LinkInsert::Inserted)
}

/// The decision of a verification: the first use wins, later ones are refused (nothing written).
fn first_use_wins(link: &Link, user: &User, attempt: Option<&Attempt>) -> Result<Redemption> {
    if link.used_at.is_some() {
        return Err(Error::new(Reason::TOKEN_ALREADY_USED, "used"));
    }
    Ok(Redemption {
        link: Link {
            used_at: Some(NOW + 1),
            ..link.clone()
        },
        user: User {
            last_login_at: Some(NOW + 1),
            ..user.clone()
        },
        attempt: attempt.map(|attempt| Attempt {
            status: AttemptStatus::Verified,
            verified_at: Some(NOW + 1),
            ..attempt.clone()
        }),
        code: None,
        refusal: None,
        user_activated: false,
        session: Some(session(
            &latchkey::crypto::base64url(link.token_digest.as_bytes()),
            &user.id,
        )),
    })
}

fn reason<T: std::fmt::Debug>(result: Result<T>) -> Reason {
    result.expect_err("an error").reason()
}

#[tokio::test]
async fn users_are_found_by_id_and_by_any_case_of_their_email_and_an_email_is_taken_once() {
    let TestStore { store, .. } = open_test_store().await;
    let (ada, _) = stored_user(store.as_ref(), 1).await;
    assert_eq!(store.user(&ada.id).await.unwrap(), Some(ada.clone()));
    assert_eq!(
        store.user_by_email("person1@EXAMPLE.com").await.unwrap(),
        Some(ada.clone())
    );
    assert_eq!(
        store.user_by_email(" person1@example.com ").await.unwrap(),
        Some(ada.clone())
    );
    assert_eq!(store.user("user-none").await.unwrap(), None);
    assert_eq!(store.user_by_email("nobody@example.com").await.unwrap(), None);

    // The same email, in another case, for a new user: USER_EXISTS, and nothing of it is written.
    let twin = User {
        id: "user-twin".into(),
        email: "PERSON1@example.COM".into(),
        ..user(2)
    };
    let twin_link = link("twin link", &twin.id);
    assert_eq!(
        reason(store.insert_link(&twin_link, Some(&twin), NOW).await),
        Reason::USER_EXISTS
    );
    let twin_email = email("twin", &twin, std::slice::from_ref(&twin_link));
    assert_eq!(
        reason(
            queue(
                store.as_ref(),
                std::slice::from_ref(&twin_link),
                Some(&twin),
                &twin_email
            )
            .await
        ),
        Reason::USER_EXISTS
    );
    assert_eq!(store.user(&twin.id).await.unwrap(), None);
    assert_eq!(store.link(&twin_link.token_digest).await.unwrap(), None);
    assert_eq!(store.email(&twin_email.id).await.unwrap(), None);

    // A link for a user that is gone.
    let orphan = link("orphan", "user-gone");
    assert_eq!(
        reason(store.insert_link(&orphan, None, NOW).await),
        Reason::USER_NOT_FOUND
    );
}

#[tokio::test]
async fn users_list_in_id_order_by_page_and_status_and_update_atomically() {
    let TestStore { store, .. } = open_test_store().await;
    for n in [3, 1, 4, 2, 5] {
        stored_user(store.as_ref(), n).await;
    }
    store
        .update_user("user-0004", &|user: &User| {
            Ok(User {
                status: UserStatus::Disabled,
                ..user.clone()
            })
        })
        .await
        .unwrap();
    let ids = |users: Vec<User>| users.into_iter().map(|user| user.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list_users(None, 2, None).await.unwrap()),
        ["user-0001", "user-0002"]
    );
    assert_eq!(
        ids(store.list_users(Some("user-0002"), 10, None).await.unwrap()),
        ["user-0003", "user-0004", "user-0005"]
    );
    assert_eq!(
        ids(store.list_users(None, 10, Some(UserStatus::Disabled)).await.unwrap()),
        ["user-0004"]
    );
    assert_eq!(
        store.user("user-0004").await.unwrap().unwrap().status,
        UserStatus::Disabled
    );

    let refused = store
        .update_user("user-0001", &|_: &User| Err(Error::new(Reason::INVALID_VALUE, "no")))
        .await;
    assert_eq!(reason(refused), Reason::INVALID_VALUE);
    assert_eq!(
        store.user("user-0001").await.unwrap().unwrap(),
        user(1),
        "a refused update writes nothing"
    );
    let missing = store.update_user("user-none", &|user: &User| Ok(user.clone())).await;
    assert_eq!(reason(missing), Reason::USER_NOT_FOUND);

    // 32 concurrent increments of one field: none is lost.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let store = store.clone();
        tasks.spawn(async move {
            store
                .update_user("user-0005", &|user: &User| {
                    Ok(User {
                        updated_at: user.updated_at + 1,
                        ..user.clone()
                    })
                })
                .await
                .unwrap()
        });
    }
    while tasks.join_next().await.is_some() {}
    assert_eq!(store.user("user-0005").await.unwrap().unwrap().updated_at, NOW + 32);
}

#[tokio::test]
async fn a_users_language_and_each_emails_are_kept() {
    let TestStore { store, .. } = open_test_store().await;
    // A user created with its email, in a language of its own, and one created with a link.
    let brazilian = User {
        locale: Some("pt-BR".into()),
        ..user(1)
    };
    let link_1 = link("first", &brazilian.id);
    let queued = Email {
        locale: "pt-BR".into(),
        ..email("pt", &brazilian, std::slice::from_ref(&link_1))
    };
    queue(store.as_ref(), std::slice::from_ref(&link_1), Some(&brazilian), &queued)
        .await
        .unwrap();
    let swiss = User {
        locale: Some("de-CH".into()),
        ..user(2)
    };
    store
        .insert_link(&link("second", &swiss.id), Some(&swiss), NOW)
        .await
        .unwrap();
    assert_eq!(store.user(&brazilian.id).await.unwrap(), Some(brazilian.clone()));
    assert_eq!(
        store
            .user_by_email(&swiss.email)
            .await
            .unwrap()
            .unwrap()
            .locale
            .as_deref(),
        Some("de-CH")
    );
    let listed: Vec<Option<String>> = store
        .list_users(None, 10, None)
        .await
        .unwrap()
        .into_iter()
        .map(|user| user.locale)
        .collect();
    assert_eq!(listed, [Some("pt-BR".to_string()), Some("de-CH".to_string())]);

    // Set, then removed.
    for locale in [Some("zh-Hant-TW"), None] {
        let updated = store
            .update_user(&swiss.id, &|user: &User| {
                Ok(User {
                    locale: locale.map(str::to_string),
                    ..user.clone()
                })
            })
            .await
            .unwrap();
        assert_eq!(updated.locale.as_deref(), locale);
        assert_eq!(store.user(&swiss.id).await.unwrap().unwrap().locale.as_deref(), locale);
    }

    // The email keeps its language through the claim and the outcome.
    assert_eq!(store.email(&queued.id).await.unwrap(), Some(queued.clone()));
    let claim = OutboxClaim {
        now: NOW,
        lease: MINUTE,
        limit: 10,
    };
    let claimed = store.claim_emails(claim).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].locale, "pt-BR");
    let sent = Email {
        status: EmailStatus::Sent,
        sent_at: Some(NOW),
        ..claimed[0].clone()
    };
    assert_eq!(store.finish_emails(std::slice::from_ref(&sent)).await.unwrap(), [true]);
    assert_eq!(store.email(&queued.id).await.unwrap().unwrap().locale, "pt-BR");
}

#[tokio::test]
async fn a_live_link_is_reused_under_its_key_and_a_used_or_expired_one_is_not() {
    let TestStore { store, .. } = open_test_store().await;
    let (ada, _) = stored_user(store.as_ref(), 1).await;
    let key = Some(Digest32::of("same parameters"));
    let first = Link {
        reuse_key: key,
        ..link("reusable", &ada.id)
    };
    assert!(inserted(store.as_ref(), &first, NOW).await);
    let again = Link {
        reuse_key: key,
        ..link("second try", &ada.id)
    };
    match store.insert_link(&again, None, NOW + 1).await.unwrap() {
        LinkInsert::Existing(existing) => assert_eq!(*existing, first),
        LinkInsert::Inserted => panic!("the live link was not reused"),
    }
    assert_eq!(store.link(&again.token_digest).await.unwrap(), None);
    // Another user's key does not count.
    let (bob, _) = stored_user(store.as_ref(), 2).await;
    let bobs = Link {
        reuse_key: key,
        ..link("bob's", &bob.id)
    };
    assert!(inserted(store.as_ref(), &bobs, NOW).await);
    // Expired: a new link.
    let late = Link {
        reuse_key: key,
        created_at: first.expires_at,
        expires_at: first.expires_at + 15 * MINUTE,
        ..link("after expiry", &ada.id)
    };
    assert!(inserted(store.as_ref(), &late, first.expires_at).await);
    // Used: a new link.
    store.redeem_link(&late.token_digest, &first_use_wins).await.unwrap();
    let after_use = Link {
        reuse_key: key,
        created_at: first.expires_at + 1,
        expires_at: first.expires_at + 15 * MINUTE,
        ..link("after use", &ada.id)
    };
    assert!(inserted(store.as_ref(), &after_use, first.expires_at + 1).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_of_64_concurrent_redemptions_of_a_link_wins() {
    let TestStore { store, .. } = open_test_store().await;
    let (ada, link) = stored_user(store.as_ref(), 1).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (store, digest) = (store.clone(), link.token_digest);
        tasks.spawn(async move { store.redeem_link(&digest, &first_use_wins).await });
    }
    let mut wins = 0;
    while let Some(outcome) = tasks.join_next().await {
        match outcome.unwrap() {
            Ok(redemption) => {
                wins += 1;
                let session = redemption.session.unwrap();
                assert_eq!(
                    store.session_by_token(&session.token_digest).await.unwrap(),
                    Some(session)
                );
            }
            Err(error) => assert_eq!(error.reason(), Reason::TOKEN_ALREADY_USED),
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(
        store.link(&link.token_digest).await.unwrap().unwrap().used_at,
        Some(NOW + 1)
    );
    assert_eq!(store.user(&ada.id).await.unwrap().unwrap().last_login_at, Some(NOW + 1));
    assert_eq!(
        reason(store.redeem_link(&Digest32::of("no such link"), &first_use_wins).await),
        Reason::TOKEN_NOT_FOUND
    );
}

#[tokio::test]
async fn a_refusal_is_written_then_returned() {
    let TestStore { store, .. } = open_test_store().await;
    let ada = user(1);
    let links = [link("right", &ada.id), link("wrong", &ada.id)];
    let attempt = attempt("a", &ada.id, &links[0]);
    let links = links.map(|link| Link {
        kind: LinkKind::Enchanted,
        attempt: Some(attempt.ref_digest),
        ..link
    });
    queue_enchanted(store.as_ref(), &ada, &links, &attempt).await;
    // The wrong link: the attempt fails, and the caller hears why.
    let fail = |link: &Link, user: &User, attempt: Option<&Attempt>| -> Result<Redemption> {
        Ok(Redemption {
            link: Link {
                used_at: Some(NOW + 1),
                ..link.clone()
            },
            user: user.clone(),
            attempt: attempt.map(|attempt| Attempt {
                status: AttemptStatus::Failed,
                ..attempt.clone()
            }),
            code: None,
            refusal: Some(Error::new(Reason::WRONG_ENCHANTED_LINK, "the other link")),
            user_activated: false,
            session: None,
        })
    };
    let redemption = store.redeem_link(&links[1].token_digest, &fail).await.unwrap();
    assert_eq!(
        redemption.refusal.map(|error| error.reason()),
        Some(Reason::WRONG_ENCHANTED_LINK)
    );
    let stored = store.attempt(&attempt.ref_digest).await.unwrap().unwrap();
    assert_eq!(stored.status, AttemptStatus::Failed);
    assert!(
        store
            .link(&links[1].token_digest)
            .await
            .unwrap()
            .unwrap()
            .used_at
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_of_64_concurrent_exchanges_of_a_code_wins_and_a_replay_revokes_its_session() {
    let TestStore { store, .. } = open_test_store().await;
    let (ada, link) = stored_user(store.as_ref(), 1).await;
    let code = AuthCode {
        code_digest: Digest32::of("code"),
        user_id: ada.id.clone(),
        request: OAuthRequest {
            client_id: "zapier".into(),
            redirect_uri: "https://zapier.com/cb".into(),
            scope: "openid".into(),
            state: "s".into(),
            nonce: "n".into(),
            code_challenge: "c".into(),
        },
        created_at: NOW,
        expires_at: NOW + MINUTE,
        auth_time: NOW,
        used_at: None,
        session_id: None,
    };
    // The verification that issues the code.
    let issue = |link: &Link, user: &User, _: Option<&Attempt>| -> Result<Redemption> {
        Ok(Redemption {
            code: Some(code.clone()),
            session: None,
            ..first_use_wins(link, user, None)?
        })
    };
    store.redeem_link(&link.token_digest, &issue).await.unwrap();
    let exchange = |code: &AuthCode, user: &User| -> Result<CodeRedemption> {
        match &code.session_id {
            None => {
                let session = session(&format!("for code {}", user.id), &user.id);
                Ok(CodeRedemption {
                    code: AuthCode {
                        used_at: Some(NOW + 2),
                        session_id: Some(session.id.clone()),
                        ..code.clone()
                    },
                    user: user.clone(),
                    session: Some(session),
                    revoke_session: None,
                    refusal: None,
                })
            }
            Some(first) => Ok(CodeRedemption {
                code: code.clone(),
                user: user.clone(),
                session: None,
                revoke_session: Some((first.clone(), NOW + 3)),
                refusal: Some(Error::new(Reason::CODE_ALREADY_USED, "replayed")),
            }),
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let store = store.clone();
        tasks.spawn(async move { store.redeem_code(&Digest32::of("code"), &exchange).await.unwrap() });
    }
    let mut issued = Vec::new();
    while let Some(redemption) = tasks.join_next().await {
        let redemption = redemption.unwrap();
        if redemption.refusal.is_none() {
            issued.push(redemption.session.unwrap());
        }
    }
    assert_eq!(issued.len(), 1, "one exchange issued a session");
    let revoked = store.session(&issued[0].id).await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(NOW + 3), "the replays revoked it");
    assert_eq!(
        reason(store.redeem_code(&Digest32::of("no such code"), &exchange).await),
        Reason::CODE_NOT_FOUND
    );
}

/// A code a browser session yields (no link): stored as it is, exchanged once, purged after its
/// retention like a link's code.
#[tokio::test]
async fn an_inserted_code_redeems_like_a_link_s_and_is_purged() {
    let TestStore { store, .. } = open_test_store().await;
    let (ada, _) = stored_user(store.as_ref(), 1).await;
    let code = AuthCode {
        code_digest: Digest32::of("session code"),
        user_id: ada.id.clone(),
        request: OAuthRequest {
            client_id: "grafana".into(),
            redirect_uri: "https://grafana.example/login/generic_oauth".into(),
            scope: "openid email".into(),
            state: "s".into(),
            nonce: String::new(),
            code_challenge: String::new(),
        },
        created_at: NOW,
        expires_at: NOW + MINUTE,
        auth_time: NOW - HOUR,
        used_at: None,
        session_id: None,
    };
    store.insert_code(&code).await.unwrap();
    let seen = std::sync::Mutex::new(None);
    let exchange = |stored: &AuthCode, user: &User| -> Result<CodeRedemption> {
        *seen.lock().unwrap() = Some(stored.clone());
        Ok(CodeRedemption {
            code: AuthCode {
                used_at: Some(NOW + 1),
                ..stored.clone()
            },
            user: user.clone(),
            session: None,
            revoke_session: None,
            refusal: None,
        })
    };
    store.redeem_code(&code.code_digest, &exchange).await.unwrap();
    assert_eq!(seen.lock().unwrap().as_ref(), Some(&code), "stored as given");
    let again = |stored: &AuthCode, _: &User| -> Result<CodeRedemption> {
        assert_eq!(stored.used_at, Some(NOW + 1), "the exchange was written");
        Err(Error::new(Reason::CODE_ALREADY_USED, "used"))
    };
    assert_eq!(
        reason(store.redeem_code(&code.code_digest, &again).await),
        Reason::CODE_ALREADY_USED
    );
    assert!(store.purge_expired(LONG_AFTER, 100).await.unwrap() >= 1);
    assert_eq!(
        reason(store.redeem_code(&code.code_digest, &again).await),
        Reason::CODE_NOT_FOUND,
        "purged with its retention"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_of_64_concurrent_collections_of_an_attempt_gets_the_session() {
    let TestStore { store, wakeups, .. } = open_test_store().await;
    let ada = user(1);
    let right = Link {
        kind: LinkKind::Enchanted,
        ..link("right", &ada.id)
    };
    let attempt = attempt("collect", &ada.id, &right);
    let right = Link {
        attempt: Some(attempt.ref_digest),
        ..right
    };
    queue_enchanted(store.as_ref(), &ada, std::slice::from_ref(&right), &attempt).await;
    let pending = session("too early", &ada.id);
    assert!(matches!(
        store.collect_attempt(&attempt.ref_digest, &pending).await.unwrap(),
        Some(Collection::Unchanged(_))
    ));
    let changed = wakeups.watch(Topic::Attempt(attempt.ref_digest));
    store.redeem_link(&right.token_digest, &first_use_wins).await.unwrap();
    wakeups.notify(Topic::Attempt(attempt.ref_digest));
    changed.await;

    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..64 {
        let (store, ref_digest) = (store.clone(), attempt.ref_digest);
        let session = session(&format!("poller {n}"), &ada.id);
        tasks.spawn(async move {
            let outcome = store.collect_attempt(&ref_digest, &session).await.unwrap();
            (session, outcome)
        });
    }
    let mut collected = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (session, outcome) = done.unwrap();
        match outcome {
            Some(Collection::Collected(attempt)) => {
                assert_eq!(attempt.session_id.as_deref(), Some(session.id.as_str()));
                collected.push(session);
            }
            Some(Collection::Unchanged(attempt)) => assert_eq!(attempt.status, AttemptStatus::Collected),
            None => panic!("the attempt vanished"),
        }
    }
    assert_eq!(collected.len(), 1);
    assert_eq!(
        store
            .session_by_token(&collected[0].token_digest)
            .await
            .unwrap()
            .as_ref(),
        Some(&collected[0])
    );
    assert!(
        store
            .collect_attempt(&Digest32::of("none"), &pending)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn deleting_a_user_with_many_links_voids_them_all_revokes_its_sessions_and_frees_its_email() {
    let TestStore { store, .. } = open_test_store().await;
    let (ada, first) = stored_user(store.as_ref(), 1).await;
    let mut links = vec![first];
    for n in 0..40 {
        let link = Link {
            reuse_key: (n % 2 == 0).then(|| Digest32::of(&format!("key {n}"))),
            ..link(&format!("link {n}"), &ada.id)
        };
        store.insert_link(&link, None, NOW).await.unwrap();
        links.push(link);
    }
    // Two used (each with a session), one expired: 38 still usable.
    for link in &links[..2] {
        store.redeem_link(&link.token_digest, &first_use_wins).await.unwrap();
    }
    let deleted_at = links[0].expires_at - 1;
    let expired = Link {
        created_at: NOW - HOUR,
        expires_at: NOW - 1,
        ..link("expired", &ada.id)
    };
    store.insert_link(&expired, None, NOW).await.unwrap();
    let deletion = store.delete_user(&ada.id, deleted_at).await.unwrap().unwrap();
    assert_eq!(deletion.voided_links, 39);
    assert_eq!(deletion.revoked_sessions, 2);
    for link in links.iter().chain([&expired]) {
        assert_eq!(store.link(&link.token_digest).await.unwrap(), None);
    }
    assert_eq!(store.user(&ada.id).await.unwrap(), None);
    assert_eq!(store.user_by_email(&ada.email).await.unwrap(), None);
    assert!(store.delete_user(&ada.id, deleted_at).await.unwrap().is_none());
    // The email is free for a new user.
    let again = User {
        id: "user-again".into(),
        ..ada.clone()
    };
    store
        .insert_link(&link("new", &again.id), Some(&again), NOW)
        .await
        .unwrap();
    assert_eq!(store.user_by_email(&ada.email).await.unwrap().unwrap().id, "user-again");
}

#[tokio::test]
async fn sessions_revoke_once_and_a_users_sessions_revoke_together() {
    let TestStore { store, .. } = open_test_store().await;
    let (ada, _) = stored_user(store.as_ref(), 1).await;
    let mut sessions = Vec::new();
    for n in 0..3 {
        let link = link(&format!("login {n}"), &ada.id);
        store.insert_link(&link, None, NOW).await.unwrap();
        sessions.push(
            store
                .redeem_link(&link.token_digest, &first_use_wins)
                .await
                .unwrap()
                .session
                .unwrap(),
        );
    }
    let first = store.revoke_session(&sessions[0].id, NOW + 10).await.unwrap().unwrap();
    assert_eq!(first.revoked_at, Some(NOW + 10));
    let again = store.revoke_session(&sessions[0].id, NOW + 20).await.unwrap().unwrap();
    assert_eq!(again.revoked_at, Some(NOW + 10), "the first revocation's time stays");
    assert!(store.revoke_session("session-none", NOW).await.unwrap().is_none());
    assert_eq!(store.revoke_user_sessions(&ada.id, NOW + 30).await.unwrap(), 2);
    assert_eq!(
        store.user(&ada.id).await.unwrap().unwrap().sessions_revoked_at,
        Some(NOW + 30)
    );
    for session in &sessions[1..] {
        let stored = store.session_by_token(&session.token_digest).await.unwrap().unwrap();
        assert_eq!(stored.revoked_at, Some(NOW + 30));
    }
    assert_eq!(store.revoke_user_sessions(&ada.id, NOW + 40).await.unwrap(), 0);
}

/// A wrong one-time code: one more failure on the link, written with the refusal.
fn count_a_wrong_code(link: &Link, user: &User, _: Option<&Attempt>) -> Result<Redemption> {
    let otp = link.otp.expect("the link has a code");
    Ok(Redemption {
        link: Link {
            otp: Some(LinkOtp {
                failures: otp.failures + 1,
                ..otp
            }),
            ..link.clone()
        },
        user: user.clone(),
        attempt: None,
        code: None,
        refusal: Some(Error::new(Reason::OTP_INVALID, "wrong code")),
        user_activated: false,
        session: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_link_keeps_its_code_and_counts_every_one_of_64_concurrent_wrong_codes() {
    let TestStore { store, .. } = open_test_store().await;
    let ada = user(1);
    let with_code = Link {
        kind: LinkKind::Magic,
        otp: Some(LinkOtp {
            digest: Digest32::of("keyed digest of the code"),
            digits: 8,
            failures: 0,
        }),
        ..link("with a code", &ada.id)
    };
    let queued = email("with a code", &ada, std::slice::from_ref(&with_code));
    assert!(queued.links[0].otp);
    queue(store.as_ref(), std::slice::from_ref(&with_code), Some(&ada), &queued)
        .await
        .unwrap();
    assert_eq!(store.link(&with_code.token_digest).await.unwrap().unwrap(), with_code);
    assert_eq!(
        store.email(&queued.id).await.unwrap().unwrap(),
        queued,
        "the email marks the code's link"
    );

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let store = store.clone();
        let digest = with_code.token_digest;
        tasks.spawn(async move { store.redeem_link(&digest, &count_a_wrong_code).await.unwrap() });
    }
    let mut counts = HashSet::new();
    while let Some(redemption) = tasks.join_next().await {
        let redemption = redemption.unwrap();
        assert_eq!(redemption.refusal.unwrap().reason(), Reason::OTP_INVALID);
        counts.insert(redemption.link.otp.unwrap().failures);
    }
    assert_eq!(counts.len(), 64, "each count seen once: none lost, none doubled");
    let stored = store.link(&with_code.token_digest).await.unwrap().unwrap();
    assert_eq!(stored.otp.unwrap().failures, 64);
    assert_eq!(stored.used_at, None);
    // The code's link is used like any other: the winner's session, then refusals.
    let won = store
        .redeem_link(&with_code.token_digest, &first_use_wins)
        .await
        .unwrap();
    assert!(won.session.is_some());
    assert_eq!(
        reason(store.redeem_link(&with_code.token_digest, &first_use_wins).await),
        Reason::TOKEN_ALREADY_USED
    );
    assert_eq!(
        store
            .link(&with_code.token_digest)
            .await
            .unwrap()
            .unwrap()
            .otp
            .unwrap()
            .failures,
        64,
        "a redemption keeps the count"
    );
}

/// Stores a session for `user` through a link's redemption (the only way sessions are made).
async fn stored_session(store: &dyn Store, user: &User, session: Session) -> Session {
    let link = link(&format!("link of {}", session.id), &user.id);
    store.insert_link(&link, None, NOW).await.unwrap();
    let make = |link: &Link, user: &User, _: Option<&Attempt>| -> Result<Redemption> {
        Ok(Redemption {
            link: Link {
                used_at: Some(NOW),
                ..link.clone()
            },
            user: user.clone(),
            attempt: None,
            code: None,
            refusal: None,
            user_activated: false,
            session: Some(session.clone()),
        })
    };
    store
        .redeem_link(&link.token_digest, &make)
        .await
        .unwrap()
        .session
        .unwrap()
}

#[tokio::test]
async fn a_users_live_sessions_list_by_page_with_their_device_and_authentication_time() {
    let TestStore { store, .. } = open_test_store().await;
    let (ada, _) = stored_user(store.as_ref(), 1).await;
    let (bob, _) = stored_user(store.as_ref(), 2).await;
    let device = ClientInfo {
        ip_address: "2001:db8::7".into(),
        user_agent: "Mozilla/5.0 (Macintosh) Safari/605.1.15".into(),
    };
    let mut made = Vec::new();
    for n in 0..6 {
        let mut session = session(&format!("ada-{n}"), &ada.id);
        session.created_at = NOW + n;
        session.via_otp = n % 2 == 0;
        session.client = (n != 3).then(|| device.clone());
        session.link_kind = LinkKind::Magic;
        made.push(stored_session(store.as_ref(), &ada, session).await);
    }
    stored_session(store.as_ref(), &bob, session("bob-0", &bob.id)).await;
    // Not live: expired, revoked one by one.
    let mut expired = session("ada-expired", &ada.id);
    expired.expires_at = NOW + MINUTE;
    stored_session(store.as_ref(), &ada, expired).await;
    store.revoke_session(&made[4].id, NOW + 5).await.unwrap();
    assert_eq!(
        store.session(&made[0].id).await.unwrap().unwrap(),
        made[0],
        "stored as made"
    );

    let live = LiveAt {
        now: NOW + 2 * MINUTE,
        revoked_through: None,
    };
    let ids = |sessions: Vec<Session>| sessions.into_iter().map(|session| session.id).collect::<Vec<_>>();
    let first = store.list_user_sessions(&ada.id, None, 3, live).await.unwrap();
    assert_eq!(ids(first.clone()), ["session-ada-0", "session-ada-1", "session-ada-2"]);
    assert_eq!(first[0].client.as_ref(), Some(&device));
    assert!(first[0].via_otp && !first[1].via_otp);
    let rest = store
        .list_user_sessions(&ada.id, Some("session-ada-2"), 3, live)
        .await
        .unwrap();
    assert_eq!(ids(rest.clone()), ["session-ada-3", "session-ada-5"]);
    assert_eq!(rest[0].client, None);
    assert!(
        store
            .list_user_sessions(&ada.id, Some("session-ada-5"), 3, live)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .list_user_sessions("user-none", None, 3, live)
            .await
            .unwrap()
            .is_empty()
    );
    // RevokeUserSessions' time: sessions created up to then are not live either.
    let after_revocation = LiveAt {
        revoked_through: Some(NOW + 2),
        ..live
    };
    assert_eq!(
        ids(store
            .list_user_sessions(&ada.id, None, 10, after_revocation)
            .await
            .unwrap()),
        ["session-ada-3", "session-ada-5"]
    );

    // The authentication time is written at most once a minute.
    assert!(store.touch_session(&made[1].id, NOW + MINUTE).await.unwrap());
    assert!(!store.touch_session(&made[1].id, NOW + MINUTE + 59_999).await.unwrap());
    assert_eq!(
        store.session(&made[1].id).await.unwrap().unwrap().last_authenticated_at,
        Some(NOW + MINUTE)
    );
    assert!(store.touch_session(&made[1].id, NOW + 2 * MINUTE).await.unwrap());
    assert_eq!(
        store.session(&made[1].id).await.unwrap().unwrap().last_authenticated_at,
        Some(NOW + 2 * MINUTE)
    );
    assert!(!store.touch_session("session-none", NOW).await.unwrap());
}

#[tokio::test]
async fn a_recipients_bucket_limits_queued_emails_and_an_empty_one_writes_nothing() {
    let TestStore { store, .. } = open_test_store().await;
    let (ada, _) = stored_user(store.as_ref(), 1).await;
    let limit = RateLimit {
        burst: 2,
        per_minute: 1,
    };
    let send = async |n: usize, now: Millis| {
        let link = link(&format!("limited {n}"), &ada.id);
        let queued = email(&format!("limited-{n}"), &ada, std::slice::from_ref(&link));
        let outcome = store
            .insert_email(NewEmail {
                links: std::slice::from_ref(&link),
                attempt: None,
                new_user: None,
                email: &queued,
                rate: Some(RateCharge {
                    key: "person1@example.com",
                    limit: &limit,
                }),
                now,
            })
            .await;
        (outcome, queued, link)
    };
    assert!(send(1, NOW).await.0.is_ok());
    assert!(send(2, NOW).await.0.is_ok());
    let (refused, queued, link) = send(3, NOW).await;
    match refused {
        Err(Error::RateLimited { retry_after }) => assert!(retry_after.as_secs() >= 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.email(&queued.id).await.unwrap(), None);
    assert_eq!(store.link(&link.token_digest).await.unwrap(), None);
    assert!(
        send(4, NOW + MINUTE).await.0.is_ok(),
        "one send regained a minute later"
    );
    assert_eq!(store.outbox_depth().await.unwrap().queued, 3);
}

#[tokio::test]
async fn purging_removes_each_expired_record_with_every_index_entry_and_counts_each_once() {
    let TestStore { store, .. } = open_test_store().await;
    let (ada, link) = stored_user(store.as_ref(), 1).await;
    let redeemed = store.redeem_link(&link.token_digest, &first_use_wins).await.unwrap();
    let session = redeemed.session.unwrap();
    let queued_link = self::link("queued", &ada.id);
    let queued = email("purged", &ada, std::slice::from_ref(&queued_link));
    store
        .insert_email(NewEmail {
            links: std::slice::from_ref(&queued_link),
            attempt: None,
            new_user: None,
            email: &queued,
            rate: Some(RateCharge {
                key: "person1@example.com",
                limit: &RateLimit {
                    burst: 5,
                    per_minute: 1,
                },
            }),
            now: NOW,
        })
        .await
        .unwrap();
    assert_eq!(store.purge_expired(NOW, 100).await.unwrap(), 0, "nothing has expired");
    // Bounded by the limit, then the rest.
    let first = store.purge_expired(LONG_AFTER, 2).await.unwrap();
    assert_eq!(first, 2);
    let rest = store.purge_expired(LONG_AFTER, 100).await.unwrap();
    // Two links, a session, an email, a rate bucket.
    assert_eq!(first + rest, 5);
    assert_eq!(store.purge_expired(LONG_AFTER, 100).await.unwrap(), 0);
    assert_eq!(store.link(&link.token_digest).await.unwrap(), None);
    assert_eq!(store.link(&queued_link.token_digest).await.unwrap(), None);
    assert_eq!(store.session(&session.id).await.unwrap(), None);
    assert_eq!(store.session_by_token(&session.token_digest).await.unwrap(), None);
    assert_eq!(store.email(&queued.id).await.unwrap(), None);
    assert_eq!(store.outbox_depth().await.unwrap(), OutboxDepth::default());
    assert_eq!(store.next_email_due().await.unwrap(), None);
    assert_eq!(store.user(&ada.id).await.unwrap().unwrap().id, ada.id, "users stay");
    // The bucket went too: the recipient starts full again.
    let limit = RateLimit {
        burst: 1,
        per_minute: 1,
    };
    let again_link = self::link("after purge", &ada.id);
    let again = email("after-purge", &ada, std::slice::from_ref(&again_link));
    store
        .insert_email(NewEmail {
            links: std::slice::from_ref(&again_link),
            attempt: None,
            new_user: None,
            email: &again,
            rate: Some(RateCharge {
                key: "person1@example.com",
                limit: &limit,
            }),
            now: LONG_AFTER,
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_claiming_together_get_each_email_once() {
    let TestStore { store, .. } = open_test_store().await;
    let (ada, _) = stored_user(store.as_ref(), 1).await;
    let mut ids = HashSet::new();
    for n in 0..60 {
        let link = link(&format!("mail {n}"), &ada.id);
        let queued = Email {
            next_attempt_at: NOW + n as Millis,
            ..email(&format!("{n:03}"), &ada, std::slice::from_ref(&link))
        };
        queue(store.as_ref(), std::slice::from_ref(&link), None, &queued)
            .await
            .unwrap();
        ids.insert(queued.id);
    }
    assert_eq!(
        store.outbox_depth().await.unwrap(),
        OutboxDepth { queued: 60, sending: 0 }
    );
    assert_eq!(store.next_email_due().await.unwrap(), Some(NOW));
    let worker = |store: Arc<dyn Store>| async move {
        let mut mine = Vec::new();
        loop {
            let claim = OutboxClaim {
                now: NOW + 100,
                lease: MINUTE,
                limit: 7,
            };
            let claimed = store.claim_emails(claim).await.unwrap();
            if claimed.is_empty() {
                return mine;
            }
            mine.extend(claimed);
        }
    };
    let (a, b) = tokio::join!(tokio::spawn(worker(store.clone())), tokio::spawn(worker(store.clone())));
    let claimed: Vec<Email> = a.unwrap().into_iter().chain(b.unwrap()).collect();
    assert_eq!(claimed.len(), 60);
    assert_eq!(
        claimed.iter().map(|email| email.id.clone()).collect::<HashSet<_>>(),
        ids
    );
    for email in &claimed {
        assert_eq!(email.status, EmailStatus::Sending);
        assert_eq!(email.attempts, 1);
        assert_eq!(
            email.next_attempt_at,
            NOW + 100 + MINUTE,
            "due again when the lease runs out"
        );
    }
    assert_eq!(
        store.outbox_depth().await.unwrap(),
        OutboxDepth { queued: 0, sending: 60 }
    );
    assert_eq!(store.next_email_due().await.unwrap(), Some(NOW + 100 + MINUTE));
}

#[tokio::test]
async fn an_email_whose_lease_ran_out_is_claimed_again_and_the_old_claim_cannot_record() {
    let TestStore { store, .. } = open_test_store().await;
    let (ada, _) = stored_user(store.as_ref(), 1).await;
    let link = link("leased", &ada.id);
    let queued = email("leased", &ada, std::slice::from_ref(&link));
    queue(store.as_ref(), std::slice::from_ref(&link), None, &queued)
        .await
        .unwrap();
    let claim = |now| OutboxClaim {
        now,
        lease: 1_000,
        limit: 10,
    };
    let first = store.claim_emails(claim(NOW)).await.unwrap().pop().unwrap();
    assert!(
        store.claim_emails(claim(NOW + 999)).await.unwrap().is_empty(),
        "the lease holds"
    );
    let second = store.claim_emails(claim(NOW + 1_000)).await.unwrap().pop().unwrap();
    assert_eq!(second.attempts, 2);
    assert_eq!(store.email(&queued.id).await.unwrap().unwrap(), second);

    // The first worker comes back: its outcome is not recorded.
    let stale = Email {
        status: EmailStatus::Sent,
        sent_at: Some(NOW + 1_500),
        ..first
    };
    assert_eq!(store.finish_emails(&[stale]).await.unwrap(), [false]);
    assert_eq!(
        store.email(&queued.id).await.unwrap().unwrap().status,
        EmailStatus::Sending
    );
    // The second records a retry, then (claimed again when due) a success.
    let retry = Email {
        status: EmailStatus::Queued,
        next_attempt_at: NOW + 5_000,
        last_error: Some("451 try again".into()),
        ..second
    };
    assert_eq!(store.finish_emails(&[retry]).await.unwrap(), [true]);
    assert_eq!(
        store.outbox_depth().await.unwrap(),
        OutboxDepth { queued: 1, sending: 0 }
    );
    assert_eq!(store.next_email_due().await.unwrap(), Some(NOW + 5_000));
    assert!(store.claim_emails(claim(NOW + 4_999)).await.unwrap().is_empty());
    let third = store.claim_emails(claim(NOW + 5_000)).await.unwrap().pop().unwrap();
    assert_eq!(third.attempts, 3);
    let sent = Email {
        status: EmailStatus::Sent,
        sent_at: Some(NOW + 5_001),
        ..third
    };
    assert_eq!(store.finish_emails(std::slice::from_ref(&sent)).await.unwrap(), [true]);
    assert_eq!(store.email(&queued.id).await.unwrap().unwrap(), sent);
    assert_eq!(store.outbox_depth().await.unwrap(), OutboxDepth::default());
    assert_eq!(store.next_email_due().await.unwrap(), None);
    assert!(
        store.claim_emails(claim(LONG_AFTER)).await.unwrap().is_empty(),
        "a sent email is never claimed"
    );
    assert_eq!(
        store.finish_emails(&[sent]).await.unwrap(),
        [false],
        "a finished claim cannot record twice"
    );
}

#[tokio::test]
async fn outcomes_recorded_together_each_count_only_if_their_claim_holds() {
    let TestStore { store, .. } = open_test_store().await;
    let (ada, _) = stored_user(store.as_ref(), 1).await;
    let mut queued = Vec::new();
    for n in 0..5 {
        let link = link(&format!("batch-{n}"), &ada.id);
        let email = email(&format!("batch-{n}"), &ada, std::slice::from_ref(&link));
        queue(store.as_ref(), std::slice::from_ref(&link), None, &email)
            .await
            .unwrap();
        queued.push(email);
    }
    let claim = OutboxClaim {
        now: NOW,
        lease: MINUTE,
        limit: 10,
    };
    let mut claimed = store.claim_emails(claim).await.unwrap();
    claimed.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(claimed.len(), 5);
    let sent = |email: &Email| Email {
        status: EmailStatus::Sent,
        sent_at: Some(NOW + 10),
        ..email.clone()
    };
    // One of them was recorded already, one carries an attempt count no claim holds.
    assert_eq!(store.finish_emails(&[sent(&claimed[1])]).await.unwrap(), [true]);
    let stale = Email {
        attempts: claimed[3].attempts + 1,
        ..sent(&claimed[3])
    };
    let retry = Email {
        status: EmailStatus::Queued,
        next_attempt_at: NOW + 5_000,
        last_error: Some("451 try again".into()),
        ..claimed[4].clone()
    };
    let batch = [
        sent(&claimed[0]),
        sent(&claimed[1]),
        sent(&claimed[2]),
        stale,
        retry.clone(),
    ];
    assert_eq!(
        store.finish_emails(&batch).await.unwrap(),
        [true, false, true, false, true],
        "answers in the order asked"
    );
    assert_eq!(store.finish_emails(&[]).await.unwrap(), Vec::<bool>::new());
    for (n, expected) in [
        (0, EmailStatus::Sent),
        (1, EmailStatus::Sent),
        (2, EmailStatus::Sent),
        (3, EmailStatus::Sending),
        (4, EmailStatus::Queued),
    ] {
        let stored = store.email(&claimed[n].id).await.unwrap().unwrap();
        assert_eq!(stored.status, expected, "email {n}");
    }
    assert_eq!(store.email(&retry.id).await.unwrap().unwrap(), retry);
    assert_eq!(
        store.outbox_depth().await.unwrap(),
        OutboxDepth { queued: 1, sending: 1 }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_signing_key_set_changes_only_by_compare_and_swap() {
    let TestStore { store, .. } = open_test_store().await;
    let key = |kid: &str, salt: u8| SigningKeyRecord {
        kid: kid.into(),
        salt: [salt; 32],
        created_at: NOW,
        signs_from: NOW,
        retire_at: NOW + HOUR,
    };
    assert_eq!(store.signing_keys().await.unwrap(), []);
    assert!(
        !store
            .replace_signing_keys(&[key("a", 1)], &[key("b", 2)])
            .await
            .unwrap()
    );
    assert!(store.replace_signing_keys(&[], &[key("a", 1)]).await.unwrap());
    assert_eq!(store.signing_keys().await.unwrap(), [key("a", 1)]);
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..16u8 {
        let store = store.clone();
        let (expected, new) = (vec![key("a", 1)], vec![key("a", 1), key(&format!("k{n}"), n)]);
        tasks.spawn(async move { store.replace_signing_keys(&expected, &new).await.unwrap() });
    }
    let mut swapped = 0;
    while let Some(done) = tasks.join_next().await {
        swapped += usize::from(done.unwrap());
    }
    assert_eq!(swapped, 1, "one rotation wins");
    assert_eq!(store.signing_keys().await.unwrap().len(), 2);
}

#[tokio::test]
async fn wake_ups_reach_watches_armed_before_the_notify() {
    let TestStore { wakeups, .. } = open_test_store().await;
    let attempt = Topic::Attempt(Digest32::of("ref"));
    let outbox = wakeups.watch(Topic::Outbox);
    let polls: Vec<_> = (0..3).map(|_| wakeups.watch(attempt)).collect();
    wakeups.notify(Topic::Outbox);
    wakeups.notify(attempt);
    outbox.await;
    for poll in polls {
        poll.await;
    }
    assert!(wakeups.recheck() <= std::time::Duration::from_secs(60));
}

#[tokio::test]
async fn a_closed_store_answers_store_unavailable() {
    let TestStore { store, .. } = open_test_store().await;
    let (ada, _) = stored_user(store.as_ref(), 1).await;
    store.close().await.unwrap();
    assert_eq!(reason(store.user(&ada.id).await), Reason::STORE_UNAVAILABLE);
    assert_eq!(
        reason(store.insert_link(&link("late", &ada.id), None, NOW).await),
        Reason::STORE_UNAVAILABLE
    );
    assert_eq!(reason(store.outbox_depth().await), Reason::STORE_UNAVAILABLE);
    store.close().await.unwrap();
}

fn claim<'a>(key: &'a Digest32, request: &'a Digest32, claimant: Claimant, now: Millis) -> IdempotencyClaim<'a> {
    IdempotencyClaim {
        key,
        request,
        claimant,
        now,
        lease: MINUTE,
        keep: 24 * HOUR,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_is_claimed_once_then_answers_and_is_purged_after_its_keep() {
    let TestStore { store, .. } = open_test_store().await;
    let (key, request, other) = (Digest32::of("key"), Digest32::of("request"), Digest32::of("other"));
    // Of 16 concurrent claims, one runs; the others see it running.
    let claims: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let claimant = Claimant::random();
                let state = store
                    .claim_idempotency_key(claim(&key, &request, claimant, NOW))
                    .await
                    .unwrap();
                (state, claimant)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for outcome in claims {
        match outcome.await.unwrap() {
            (IdempotencyState::Claimed, claimant) => winners.push(claimant),
            (state, _) => assert_eq!(state, IdempotencyState::Running),
        }
    }
    let [winner] = winners[..] else {
        panic!("{} claims won", winners.len());
    };
    let reused = store
        .claim_idempotency_key(claim(&key, &other, Claimant::random(), NOW))
        .await
        .unwrap();
    assert_eq!(reused, IdempotencyState::Reused);
    store
        .settle_idempotency_key(&key, &winner, Some(b"sealed answer"))
        .await
        .unwrap();
    let answered = store
        .claim_idempotency_key(claim(&key, &request, Claimant::random(), NOW + 1))
        .await
        .unwrap();
    assert_eq!(answered, IdempotencyState::Answered(b"sealed answer".to_vec()));
    // An answer is kept past the lease, and a failed call's key is free again.
    let later = store
        .claim_idempotency_key(claim(&key, &request, Claimant::random(), NOW + 2 * MINUTE))
        .await
        .unwrap();
    assert_eq!(later, IdempotencyState::Answered(b"sealed answer".to_vec()));
    let failing = Digest32::of("failing");
    let first = Claimant::random();
    assert_eq!(
        store
            .claim_idempotency_key(claim(&failing, &request, first, NOW))
            .await
            .unwrap(),
        IdempotencyState::Claimed
    );
    store.settle_idempotency_key(&failing, &first, None).await.unwrap();
    assert_eq!(
        store
            .claim_idempotency_key(claim(&failing, &request, Claimant::random(), NOW))
            .await
            .unwrap(),
        IdempotencyState::Claimed
    );
    // A claimant that died: its lease runs out, then a repeat takes the key over.
    assert_eq!(
        store
            .claim_idempotency_key(claim(&failing, &request, Claimant::random(), NOW + 1))
            .await
            .unwrap(),
        IdempotencyState::Running
    );
    assert_eq!(
        store
            .claim_idempotency_key(claim(&failing, &request, Claimant::random(), NOW + MINUTE))
            .await
            .unwrap(),
        IdempotencyState::Claimed
    );
    // Past its keep the key is purged (both keys count), and then new.
    assert_eq!(store.purge_expired(NOW + HOUR, 100).await.unwrap(), 0);
    assert_eq!(store.purge_expired(NOW + 25 * HOUR, 100).await.unwrap(), 2);
    assert_eq!(
        store
            .claim_idempotency_key(claim(&key, &other, Claimant::random(), NOW + 25 * HOUR))
            .await
            .unwrap(),
        IdempotencyState::Claimed
    );
}

#[tokio::test]
async fn an_idempotency_key_is_settled_only_by_the_claimant_that_holds_it() {
    let TestStore { store, .. } = open_test_store().await;
    let (key, request) = (Digest32::of("owned key"), Digest32::of("request"));
    let claim_as = async |key: &Digest32, claimant: Claimant, now: Millis| {
        store
            .claim_idempotency_key(claim(key, &request, claimant, now))
            .await
            .unwrap()
    };
    let (holder, stranger) = (Claimant::random(), Claimant::random());
    assert_eq!(claim_as(&key, holder, NOW).await, IdempotencyState::Claimed);
    // A claimant that does not hold the key neither answers it nor lets go of it.
    store
        .settle_idempotency_key(&key, &stranger, Some(b"not mine"))
        .await
        .unwrap();
    store.settle_idempotency_key(&key, &stranger, None).await.unwrap();
    assert_eq!(
        claim_as(&key, Claimant::random(), NOW + 1).await,
        IdempotencyState::Running
    );

    // The holder's lease runs out and a repeat takes the key over: the first claimant, come
    // back late, touches the repeat's claim neither way.
    let repeat = Claimant::random();
    assert_eq!(claim_as(&key, repeat, NOW + MINUTE).await, IdempotencyState::Claimed);
    store.settle_idempotency_key(&key, &holder, None).await.unwrap();
    assert_eq!(
        claim_as(&key, Claimant::random(), NOW + MINUTE + 1).await,
        IdempotencyState::Running,
        "the late release freed the repeat's key"
    );
    store
        .settle_idempotency_key(&key, &holder, Some(b"stale answer"))
        .await
        .unwrap();
    assert_eq!(
        claim_as(&key, Claimant::random(), NOW + MINUTE + 2).await,
        IdempotencyState::Running,
        "the late answer landed on the repeat's key"
    );
    store
        .settle_idempotency_key(&key, &repeat, Some(b"repeat's answer"))
        .await
        .unwrap();
    // An answered key stays answered, whoever lets go of it afterwards.
    store.settle_idempotency_key(&key, &repeat, None).await.unwrap();
    assert_eq!(
        claim_as(&key, Claimant::random(), NOW + MINUTE + 3).await,
        IdempotencyState::Answered(b"repeat's answer".to_vec())
    );

    // The claimant's own release frees the key at once, well inside its lease: a claim whose
    // acknowledgement was lost, let go of by the call that made it.
    let lost = Digest32::of("lost acknowledgement");
    let caller = Claimant::random();
    assert_eq!(claim_as(&lost, caller, NOW).await, IdempotencyState::Claimed);
    store.settle_idempotency_key(&lost, &caller, None).await.unwrap();
    assert_eq!(
        claim_as(&lost, Claimant::random(), NOW + 1).await,
        IdempotencyState::Claimed
    );
    // A second release by the first call (its background retry) leaves the retry's claim alone.
    store.settle_idempotency_key(&lost, &caller, None).await.unwrap();
    assert_eq!(
        claim_as(&lost, Claimant::random(), NOW + 2).await,
        IdempotencyState::Running
    );
}

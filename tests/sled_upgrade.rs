//! sled only (whatever `LATCHKEY_TEST_STORE` says): a data directory written by an earlier version keeps working: JSON records, links filed in
//! `user_links` instead of noted on the user record, reuse keys in a separate `link_reuse` tree
//! (reuse key → token digest) with empty `user_links` values, secrets handed out before they
//! were stamped with their creation time (keyed by their plain SHA-256), and idempotency keys
//! kept without a claimant.

mod common;

use common::*;
use latchkey::crypto::Digest32;
use latchkey::domain::clock::Clock;
use latchkey::domain::model::{HOUR, MINUTE, Millis};
use latchkey::domain::store::{Claimant, IdempotencyClaim, IdempotencyState};
use latchkey::store::sled_store::codec::{Expiring, decode, encode, expiry_key};
// sled's own records, as they are on disk.
use latchkey::store::sled_store::records::{
    IdempotencyRecord, LinkRecord as Link, SessionRecord as Session, UserRecord as User,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn sled(config: &mut latchkey::config::Config) {
    config.store.backend = latchkey::config::StoreBackend::Sled;
}

/// Rewrites every record of `tree` as JSON, as versions before the MessagePack records wrote them.
fn rewrite_as_json<T: Serialize + DeserializeOwned>(db: &sled::Db, tree: &str) -> usize {
    let tree = db.open_tree(tree).unwrap();
    let mut rewritten = 0;
    for entry in tree.iter() {
        let (key, value) = entry.unwrap();
        let record: T = decode(&value).unwrap();
        tree.insert(key, serde_json::to_vec(&record).unwrap()).unwrap();
        rewritten += 1;
    }
    rewritten
}

/// Rewrites users as the earliest versions kept them: JSON without link notes. Each noted link
/// goes back to a `user_links` entry with an empty value, and its reuse key to a `link_reuse`
/// tree (reuse key → token digest). Returns how many reuse keys moved.
fn rewrite_users_into_the_earliest_layout(db: &sled::Db) -> usize {
    let (users, user_links, old) = (
        db.open_tree("users").unwrap(),
        db.open_tree("user_links").unwrap(),
        db.open_tree("link_reuse").unwrap(),
    );
    let mut moved = 0;
    for entry in users.iter() {
        let (key, value) = entry.unwrap();
        let user: User = decode(&value).unwrap();
        for note in &user.links {
            let mut entry_key = user.id.as_bytes().to_vec();
            entry_key.push(0);
            entry_key.extend_from_slice(note.token_digest.as_bytes());
            user_links.insert(entry_key, &[]).unwrap();
            if let Some(reuse_key) = note.reuse_key {
                old.insert(reuse_key.as_bytes(), note.token_digest.as_bytes()).unwrap();
                moved += 1;
            }
        }
        let mut json = serde_json::to_value(&user).unwrap();
        json.as_object_mut().unwrap().remove("links");
        users.insert(key, serde_json::to_vec(&json).unwrap()).unwrap();
    }
    moved
}

/// The secret an earlier version would have handed out in place of `stamped`: the same 256 bits
/// without the stamp (its first 8 characters).
fn unstamped(stamped: &str) -> &str {
    &stamped[8..]
}

/// Moves the record `stamped` keys in `tree` to the key an earlier version gave it, the SHA-256
/// of the unstamped secret, and renames it in the `expiry` index. Returns the two keys.
fn rekey_as_before_stamps(db: &sled::Db, tree: &str, stamped: &str) -> (Digest32, Digest32) {
    let (old, new) = (Digest32::of_secret(stamped), Digest32::of(unstamped(stamped)));
    let tree = db.open_tree(tree).unwrap();
    let value = tree
        .remove(old.as_bytes())
        .unwrap()
        .expect("a record under the stamped key");
    tree.insert(new.as_bytes(), value).unwrap();
    let expiry = db.open_tree("expiry").unwrap();
    for entry in expiry.iter() {
        let (key, _) = entry.unwrap();
        if key.ends_with(old.as_bytes()) {
            expiry.remove(&key).unwrap();
            let mut renamed = key[..key.len() - 32].to_vec();
            renamed.extend_from_slice(new.as_bytes());
            expiry.insert(renamed, &[]).unwrap();
        }
    }
    (old, new)
}

/// Keys a link as an earlier version did: the record, its field and its note on the user record.
fn rekey_link_as_before_stamps(db: &sled::Db, token: &str) {
    let (old, new) = rekey_as_before_stamps(db, "links", token);
    let links = db.open_tree("links").unwrap();
    let mut link: Link = decode(&links.get(new.as_bytes()).unwrap().unwrap()).unwrap();
    link.token_digest = new;
    links.insert(new.as_bytes(), encode(&link)).unwrap();
    let users = db.open_tree("users").unwrap();
    let mut user: User = decode(&users.get(&link.user_id).unwrap().unwrap()).unwrap();
    let note = user.links.iter_mut().find(|note| note.token_digest == old).unwrap();
    note.token_digest = new;
    users.insert(link.user_id.as_bytes(), encode(&user)).unwrap();
}

/// Keys a session's token index entry and record as an earlier version did.
fn rekey_session_as_before_stamps(db: &sled::Db, token: &str) {
    let (_, new) = rekey_as_before_stamps(db, "session_tokens", token);
    let session_id = db
        .open_tree("session_tokens")
        .unwrap()
        .get(new.as_bytes())
        .unwrap()
        .unwrap();
    let sessions = db.open_tree("sessions").unwrap();
    let mut session: Session = decode(&sessions.get(&session_id).unwrap().unwrap()).unwrap();
    session.token_digest = new;
    sessions.insert(session_id, encode(&session)).unwrap();
}

#[tokio::test]
async fn a_store_from_an_earlier_version_serves_its_users_links_reuse_and_sessions() {
    let app = TestApp::spawn_with(sled).await;
    let pending = app.issue_for_email("pending@example.com").await;
    let (signed_in, session) = app.signed_in("signed-in@example.com").await;
    let (dir, clock) = app.stop().await;
    let pending_token = token_of(&pending.link);

    {
        let db = sled::open(dir.path().join("data")).unwrap();
        rekey_link_as_before_stamps(&db, &pending_token);
        rekey_session_as_before_stamps(&db, &session.session_token);
        assert_eq!(rewrite_users_into_the_earliest_layout(&db), 2, "one link per user");
        assert_eq!(rewrite_as_json::<Link>(&db, "links"), 2);
        assert_eq!(rewrite_as_json::<Session>(&db, "sessions"), 1);
        db.flush().unwrap();
    }

    let mut config = test_config(&dir);
    sled(&mut config);
    let app = TestApp::start_in(dir, config, clock).await;
    // JSON records read.
    let lookup = pb::GetUserRequest {
        user: Some(pb::get_user_request::User::UserId(signed_in.user_id.clone())),
    };
    let user = app.users().get_user(lookup).await.unwrap().into_inner().user.unwrap();
    assert_eq!(user.email, "signed-in@example.com");
    let by_token = pb::AuthenticateSessionRequest {
        credential: Some(pb::authenticate_session_request::Credential::SessionToken(
            unstamped(&session.session_token).to_string(),
        )),
    };
    app.sessions()
        .authenticate_session(by_token)
        .await
        .expect("a session stored as JSON, with an unstamped token, still authenticates");
    // The reuse key moved from `link_reuse` onto the link's user entry: the same request gets the
    // same link, with the unstamped token it was handed out with, and that token still verifies.
    let again = app.issue(issue_for_user(&pending.user_id)).await.unwrap();
    assert!(again.reused, "the reuse key of the old tree was lost");
    let handed_out_before = pending.link.replace(&pending_token, unstamped(&pending_token));
    assert_eq!(
        again.link, handed_out_before,
        "a reused link must keep its unstamped token"
    );
    app.inspect(&pending_token)
        .await
        .expect_err("the stamped form of an unstamped link's token is no token");
    app.verify(unstamped(&pending_token), "")
        .await
        .expect("a link stored as JSON, with an unstamped token, verifies");
    // A record written since reads alongside the old ones, and the used link is not reused.
    let fresh = app.issue(issue_for_user(&pending.user_id)).await.unwrap();
    assert!(!fresh.reused);
    app.verify(&token_of(&fresh.link), "").await.unwrap();
    // DeleteUser finds links filed the old way (in `user_links`) and the new way (noted on the
    // user record) alike.
    let live = app
        .issue(pb::IssueLoginLinkRequest {
            expiration_minutes: 30,
            ..issue_for_user(&pending.user_id)
        })
        .await
        .unwrap();
    app.users()
        .delete_user(pb::DeleteUserRequest {
            user_id: pending.user_id.clone(),
        })
        .await
        .unwrap();
    for link in [&handed_out_before, &fresh.link, &live.link] {
        let status = app.inspect(&token_of(link)).await.unwrap_err();
        assert_eq!(reason(&status), "TOKEN_NOT_FOUND", "{link}");
    }
}

/// An idempotency key as the build before claimants kept it: its four fields, with no claimant
/// after them (sled's records are MessagePack arrays of their fields, as a tuple is).
type IdempotencyBefore = (Digest32, Option<Vec<u8>>, Millis, Millis);

#[tokio::test]
async fn idempotency_keys_kept_before_claimants_still_answer_and_wait_out_their_lease() {
    let app = TestApp::spawn_with(sled).await;
    let request = pb::LoginOrCreateRequest {
        email: "kept-before@example.com".into(),
        ..Default::default()
    };
    let first = app
        .passwordless()
        .login_or_create(keyed(request.clone(), "before-claimants"))
        .await
        .unwrap()
        .into_inner();
    let (dir, clock) = app.stop().await;

    // The answered key loses its claimant; beside it, a claim whose call never settled it.
    let now = clock.now();
    let running = Digest32::of("running before claimants");
    let asked = Digest32::of("request");
    {
        let db = sled::open(dir.path().join("data")).unwrap();
        let keys = db.open_tree("idempotency_keys").unwrap();
        let mut rewritten = 0;
        for entry in keys.iter() {
            let (key, value) = entry.unwrap();
            let record: IdempotencyRecord = decode(&value).unwrap();
            assert!(record.claimant.is_some());
            let before: IdempotencyBefore = (record.request, record.answer, record.lease_until, record.expires_at);
            keys.insert(key, encode(&before)).unwrap();
            rewritten += 1;
        }
        assert_eq!(rewritten, 1);
        let expires_at = now + 24 * HOUR;
        let claim: IdempotencyBefore = (asked, None, now + 2 * MINUTE, expires_at);
        keys.insert(running.as_bytes(), encode(&claim)).unwrap();
        let expiry = expiry_key(expires_at, Expiring::IdempotencyKey, running.as_bytes());
        db.open_tree("expiry").unwrap().insert(expiry, &[]).unwrap();
        db.flush().unwrap();
    }

    let mut config = test_config(&dir);
    sled(&mut config);
    let app = TestApp::start_in(dir, config, clock).await;
    let repeat = app
        .passwordless()
        .login_or_create(keyed(request, "before-claimants"))
        .await
        .expect("an answer kept without a claimant still answers")
        .into_inner();
    assert_eq!(repeat, first);
    // No claimant settles the old claim, either way; its lease still ends it.
    let store = app.running().domain().store.clone();
    let claim = |now| IdempotencyClaim {
        key: &running,
        request: &asked,
        claimant: Claimant::random(),
        now,
        lease: 2 * MINUTE,
        keep: 24 * HOUR,
    };
    for answer in [Some(&b"not its answer"[..]), None] {
        store
            .settle_idempotency_key(&running, &Claimant::random(), answer)
            .await
            .unwrap();
    }
    assert_eq!(
        store.claim_idempotency_key(claim(now + 1)).await.unwrap(),
        IdempotencyState::Running
    );
    assert_eq!(
        store.claim_idempotency_key(claim(now + 2 * MINUTE)).await.unwrap(),
        IdempotencyState::Claimed
    );
}

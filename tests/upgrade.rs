//! A data directory written by an earlier version keeps working: JSON records, links filed in
//! `user_links` instead of noted on the user record, and reuse keys in a separate `link_reuse`
//! tree (reuse key → token digest) with empty `user_links` values.

mod common;

use common::*;
use latchkey::domain::model::{Link, Session, User};
use latchkey::store::codec::decode;
use serde::Serialize;
use serde::de::DeserializeOwned;

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

#[tokio::test]
async fn a_store_from_an_earlier_version_serves_its_users_links_reuse_and_sessions() {
    let app = TestApp::spawn().await;
    let pending = app.issue_for_email("pending@example.com").await;
    let (signed_in, session) = app.signed_in("signed-in@example.com").await;
    let (dir, clock) = app.stop().await;

    {
        let db = sled::open(dir.path().join("data")).unwrap();
        assert_eq!(rewrite_users_into_the_earliest_layout(&db), 2, "one link per user");
        assert_eq!(rewrite_as_json::<Link>(&db, "links"), 2);
        assert_eq!(rewrite_as_json::<Session>(&db, "sessions"), 1);
        db.flush().unwrap();
    }

    let config = test_config(&dir);
    let app = TestApp::start_in(dir, config, clock).await;
    // JSON records read.
    let lookup = pb::GetUserRequest {
        user: Some(pb::get_user_request::User::UserId(signed_in.user_id.clone())),
    };
    let user = app.users().get_user(lookup).await.unwrap().into_inner().user.unwrap();
    assert_eq!(user.email, "signed-in@example.com");
    let by_token = pb::AuthenticateSessionRequest {
        credential: Some(pb::authenticate_session_request::Credential::SessionToken(
            session.session_token,
        )),
    };
    app.sessions()
        .authenticate_session(by_token)
        .await
        .expect("a session stored as JSON still authenticates");
    // The reuse key moved from `link_reuse` onto the link's user entry: the same request gets the
    // same link, which still verifies.
    let again = app.issue(issue_for_user(&pending.user_id)).await.unwrap();
    assert!(again.reused, "the reuse key of the old tree was lost");
    assert_eq!(again.link, pending.link);
    app.verify(&token_of(&pending.link), "")
        .await
        .expect("a link stored as JSON verifies");
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
    for link in [&pending.link, &fresh.link, &live.link] {
        let status = app.inspect(&token_of(link)).await.unwrap_err();
        assert_eq!(reason(&status), "TOKEN_NOT_FOUND", "{link}");
    }
}

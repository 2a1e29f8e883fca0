//! Users administration over gRPC: get, list (stable pages, status filter), update with a field
//! mask, delete (voids links, revokes sessions).

mod common;

use common::*;
use pb::get_user_request::User as Lookup;
use tonic::Code;

#[tokio::test]
async fn list_users_pages_in_a_stable_order_with_a_status_filter() {
    let app = TestApp::spawn().await;
    let mut created = Vec::new();
    for n in 0..7 {
        created.push(app.issue_for_email(&format!("list{n}@example.com")).await.user_id);
    }
    // Two of them sign in and become ACTIVE.
    for n in [1, 4] {
        let issued = app.issue(issue_for_user(&created[n])).await.unwrap();
        app.verify(&token_of(&issued.link), "").await.unwrap();
    }
    let mut users = app.users();
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = users
            .list_users(pb::ListUsersRequest {
                page_size: 3,
                page_token: page_token.clone(),
                status: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.users.len() <= 3);
        seen.extend(page.users.into_iter().map(|u| u.user_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen, created, "every user once, in creation order");

    let active = users
        .list_users(pb::ListUsersRequest {
            page_size: 0,
            page_token: String::new(),
            status: pb::user::Status::Active.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let active_ids: Vec<_> = active.users.iter().map(|u| u.user_id.clone()).collect();
    assert_eq!(active_ids, vec![created[1].clone(), created[4].clone()]);
    assert!(active.next_page_token.is_empty());

    // A page token made for one filter is refused for another.
    let first = users
        .list_users(pb::ListUsersRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let other_filter = pb::ListUsersRequest {
        page_size: 1,
        page_token: first.next_page_token,
        status: pb::user::Status::Pending.into(),
    };
    assert_error(
        users.list_users(other_filter).await,
        Code::InvalidArgument,
        "INVALID_PAGE_TOKEN",
    );
}

#[tokio::test]
async fn update_user_changes_only_the_masked_fields() {
    let app = TestApp::spawn().await;
    let (user, _) = app.signed_in("mask@example.com").await;
    let change = pb::User {
        first_name: "  Grace ".into(),
        last_name: "Ignored".into(),
        role: pb::user::Role::Staff.into(),
        mfa_enabled: true,
        ..Default::default()
    };
    let updated = app
        .update_user(&user.user_id, change, &["first_name", "mfa_enabled"])
        .await
        .unwrap();
    assert_eq!(updated.first_name, "Grace");
    assert_eq!(updated.last_name, user.last_name);
    assert_eq!(updated.role(), pb::user::Role::Client);
    assert!(updated.mfa_enabled);
    assert_eq!(updated.email, user.email);
    assert_eq!(updated.created_at, user.created_at);
    let fetched = app
        .users()
        .get_user(pb::GetUserRequest {
            user: Some(Lookup::UserId(user.user_id.clone())),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(fetched, updated, "the update is stored");
}

/// More live links than a user record lists (8; the rest go to an index of their own): reuse
/// finds the last of them, and DeleteUser voids them all.
#[tokio::test]
async fn a_user_with_many_live_links_gets_reuse_and_deletion_for_each() {
    const LINKS: u32 = 12;
    let app = TestApp::spawn().await;
    let user_id = app.issue_for_email("many@example.com").await.user_id;
    // Each expiry is a different set of parameters, so a different link.
    let request = |n: u32| pb::IssueLoginLinkRequest {
        expiration_minutes: 30 + n,
        ..issue_for_user(&user_id)
    };
    let mut links = Vec::new();
    for n in 1..LINKS {
        let issued = app.issue(request(n)).await.unwrap();
        assert!(!issued.reused);
        links.push(issued.link);
    }
    for n in [1, LINKS - 1] {
        let again = app.issue(request(n)).await.unwrap();
        assert!(again.reused, "link {n} was not reused");
        assert_eq!(again.link, links[n as usize - 1]);
    }
    let deleted = app
        .users()
        .delete_user(pb::DeleteUserRequest {
            user_id: user_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        deleted.voided_links,
        LINKS,
        "the first link and the {} others",
        LINKS - 1
    );
    for link in &links {
        assert_error(app.verify(&token_of(link), "").await, Code::NotFound, "TOKEN_NOT_FOUND");
    }
}

#[tokio::test]
async fn delete_user_voids_links_and_revokes_sessions() {
    let app = TestApp::spawn().await;
    let (user, session) = app.signed_in("gone@example.com").await;
    let pending = app.issue(issue_for_user(&user.user_id)).await.unwrap();
    let mut users = app.users();
    let deleted = users
        .delete_user(pb::DeleteUserRequest {
            user_id: user.user_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.revoked_sessions, 1);
    assert_eq!(deleted.voided_links, 1);

    assert_error(
        app.verify(&token_of(&pending.link), "").await,
        Code::NotFound,
        "TOKEN_NOT_FOUND",
    );
    let authenticate = pb::AuthenticateSessionRequest {
        credential: Some(pb::authenticate_session_request::Credential::SessionToken(
            session.session_token,
        )),
    };
    assert_error(
        app.sessions().authenticate_session(authenticate).await,
        Code::FailedPrecondition,
        "SESSION_REVOKED",
    );
    assert_error(
        users
            .get_user(pb::GetUserRequest {
                user: Some(Lookup::Email("gone@example.com".into())),
            })
            .await,
        Code::NotFound,
        "USER_NOT_FOUND",
    );
    assert_error(
        users.delete_user(pb::DeleteUserRequest { user_id: user.user_id }).await,
        Code::NotFound,
        "USER_NOT_FOUND",
    );

    // The email is free again: a new user, a new id.
    let again = app.issue_for_email("gone@example.com").await;
    assert!(again.user_created);
}

//! latchkey.v1.Users.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::idempotency::Idempotency;

use super::convert;
use super::pb::{self, users_server::Users};
use crate::domain::error::{Error, Reason};
use crate::domain::users::UserPatch;
use crate::domain::{Domain, UserRef};

pub struct UsersApi {
    domain: Arc<Domain>,
    once: Idempotency,
}

impl UsersApi {
    pub fn new(domain: Arc<Domain>) -> Self {
        Self {
            once: Idempotency::new(&domain),
            domain,
        }
    }
}

/// Reads the fields named by the mask out of `user`.
fn patch_from_mask(user: &pb::User, paths: &[String]) -> Result<UserPatch, Error> {
    if paths.is_empty() {
        return Err(Error::missing("update_mask"));
    }
    let mut patch = UserPatch::default();
    for path in paths {
        match path.as_str() {
            "first_name" => patch.first_name = Some(user.first_name.clone()),
            "last_name" => patch.last_name = Some(user.last_name.clone()),
            "status" => patch.status = Some(convert::user_status_from(user.status)),
            "role" => patch.role = Some(convert::role_from(user.role)),
            "mfa_enabled" => patch.mfa_enabled = Some(user.mfa_enabled),
            "locale" => patch.locale = Some(user.locale.clone()),
            other => {
                return Err(Error::field(
                    Reason::INVALID_FIELD_MASK,
                    "update_mask",
                    format!(
                        "{other:?} cannot be updated; use first_name, last_name, status, role, mfa_enabled, locale"
                    ),
                ));
            }
        }
    }
    Ok(patch)
}

/// The RPCs as they run once; `Users` below puts the mutating ones behind their idempotency keys.
impl UsersApi {
    async fn get_user(&self, request: Request<pb::GetUserRequest>) -> Result<Response<pb::GetUserResponse>, Status> {
        use pb::get_user_request::User as Which;
        let user = request.into_inner().user.map(|user| match user {
            Which::UserId(id) => UserRef::Id(id),
            Which::Email(email) => UserRef::Email(email),
        });
        let user = self.domain.get_user(user).await?;
        Ok(Response::new(pb::GetUserResponse {
            user: Some(convert::user(user)),
        }))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let request = request.into_inner();
        let status = match request.status {
            0 => None,
            value => Some(convert::user_status_from(value).ok_or_else(|| {
                Error::field(
                    Reason::INVALID_VALUE,
                    "status",
                    "status must be PENDING, ACTIVE or DISABLED",
                )
            })?),
        };
        let page = self
            .domain
            .list_users(request.page_size, &request.page_token, status)
            .await?;
        Ok(Response::new(pb::ListUsersResponse {
            users: page.users.into_iter().map(convert::user).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn update_user(
        &self,
        request: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::UpdateUserResponse>, Status> {
        let request = request.into_inner();
        let user = request.user.ok_or_else(|| Error::missing("user"))?;
        let paths = request.update_mask.map(|mask| mask.paths).unwrap_or_default();
        let patch = patch_from_mask(&user, &paths)?;
        let updated = self.domain.update_user(&user.user_id, patch).await?;
        Ok(Response::new(pb::UpdateUserResponse {
            user: Some(convert::user(updated)),
        }))
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let deletion = self.domain.delete_user(&request.into_inner().user_id).await?;
        Ok(Response::new(pb::DeleteUserResponse {
            revoked_sessions: deletion.revoked_sessions,
            voided_links: deletion.voided_links,
        }))
    }
}

#[tonic::async_trait]
impl Users for UsersApi {
    async fn get_user(&self, request: Request<pb::GetUserRequest>) -> Result<Response<pb::GetUserResponse>, Status> {
        UsersApi::get_user(self, request).await
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        UsersApi::list_users(self, request).await
    }

    async fn update_user(
        &self,
        request: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::UpdateUserResponse>, Status> {
        self.once
            .run("UpdateUser", request, |request| UsersApi::update_user(self, request))
            .await
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        self.once
            .run("DeleteUser", request, |request| UsersApi::delete_user(self, request))
            .await
    }
}

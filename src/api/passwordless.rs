//! latchkey.v1.Passwordless.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert::{self, timestamp};
use super::error::not_implemented;
use super::pb::{self, passwordless_server::Passwordless};
use crate::domain::links::IssueLoginLink;
use crate::domain::magic::LoginOrCreate;
use crate::domain::{Domain, UserRef};

pub struct PasswordlessApi {
    domain: Arc<Domain>,
}

impl PasswordlessApi {
    pub fn new(domain: Arc<Domain>) -> Self {
        Self { domain }
    }
}

#[tonic::async_trait]
impl Passwordless for PasswordlessApi {
    async fn issue_login_link(
        &self,
        request: Request<pb::IssueLoginLinkRequest>,
    ) -> Result<Response<pb::IssueLoginLinkResponse>, Status> {
        use pb::issue_login_link_request::User as Which;
        let request = request.into_inner();
        let issued = self
            .domain
            .issue_login_link(IssueLoginLink {
                user: request.user.map(|user| match user {
                    Which::UserId(id) => UserRef::Id(id),
                    Which::Email(email) => UserRef::Email(email),
                }),
                first_name: request.first_name,
                last_name: request.last_name,
                redirect_url: request.redirect_url,
                expiration_minutes: request.expiration_minutes,
                code_challenge: request.code_challenge,
                oauth_requested: request.oauth.is_some(),
            })
            .await?;
        Ok(Response::new(pb::IssueLoginLinkResponse {
            link: issued.link,
            user_id: issued.user_id,
            user_created: issued.user_created,
            expires_at: timestamp(issued.expires_at),
            reused: issued.reused,
        }))
    }

    async fn login_or_create(
        &self,
        request: Request<pb::LoginOrCreateRequest>,
    ) -> Result<Response<pb::LoginOrCreateResponse>, Status> {
        let request = request.into_inner();
        let queued = self
            .domain
            .login_or_create(LoginOrCreate {
                email: request.email,
                login_url: request.login_magic_link_url,
                signup_url: request.signup_magic_link_url,
                login_minutes: request.login_expiration_minutes,
                signup_minutes: request.signup_expiration_minutes,
                login_template: request.login_template_id,
                signup_template: request.signup_template_id,
                create_user_as_pending: request.create_user_as_pending,
                code_challenge: request.code_challenge,
            })
            .await?;
        Ok(Response::new(pb::LoginOrCreateResponse {
            user_id: queued.user_id,
            user_created: queued.user_created,
            email_id: queued.email_id,
        }))
    }

    async fn send_enchanted_link(
        &self,
        _request: Request<pb::SendEnchantedLinkRequest>,
    ) -> Result<Response<pb::SendEnchantedLinkResponse>, Status> {
        Err(not_implemented("SendEnchantedLink"))
    }

    async fn inspect_token(
        &self,
        request: Request<pb::InspectTokenRequest>,
    ) -> Result<Response<pb::InspectTokenResponse>, Status> {
        let inspection = self.domain.inspect_token(&request.into_inner().token).await?;
        Ok(Response::new(pb::InspectTokenResponse {
            link_kind: convert::link_kind(inspection.kind).into(),
            masked_email: inspection.masked_email,
            expires_at: timestamp(inspection.expires_at),
            pkce_required: inspection.pkce_required,
            user_exists: inspection.user_exists,
        }))
    }

    async fn verify_token(
        &self,
        request: Request<pb::VerifyTokenRequest>,
    ) -> Result<Response<pb::VerifyTokenResponse>, Status> {
        let request = request.into_inner();
        let verified = self
            .domain
            .verify_token(&request.token, &request.code_verifier, request.session_duration_minutes)
            .await?;
        Ok(Response::new(pb::VerifyTokenResponse {
            user: Some(convert::user(verified.user)),
            user_activated: verified.user_activated,
            link_kind: convert::link_kind(verified.kind).into(),
            result: Some(pb::verify_token_response::Result::Session(convert::session(
                verified.session,
            ))),
        }))
    }

    async fn poll_session(
        &self,
        _request: Request<pb::PollSessionRequest>,
    ) -> Result<Response<pb::PollSessionResponse>, Status> {
        Err(not_implemented("PollSession"))
    }

    async fn exchange_code(
        &self,
        _request: Request<pb::ExchangeCodeRequest>,
    ) -> Result<Response<pb::ExchangeCodeResponse>, Status> {
        Err(not_implemented("ExchangeCode"))
    }
}

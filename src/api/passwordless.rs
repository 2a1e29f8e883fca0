//! latchkey.v1.Passwordless.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::idempotency::Idempotency;

use super::convert::{self, timestamp};
use super::pb::{self, passwordless_server::Passwordless};
use crate::domain::enchanted::{Mode, PollOutcome, SendEnchantedLink};
use crate::domain::error::{Error, Reason};
use crate::domain::links::{IssueLoginLink, VerifyOutcome};
use crate::domain::magic::LoginOrCreate;
use crate::domain::oauth::{Exchange, OAuthParams};
use crate::domain::otp::VerifyOtp;
use crate::domain::{Domain, UserRef};

pub struct PasswordlessApi {
    domain: Arc<Domain>,
    once: Idempotency,
}

impl PasswordlessApi {
    pub fn new(domain: Arc<Domain>) -> Self {
        Self {
            once: Idempotency::new(&domain),
            domain,
        }
    }
}

/// The RPCs as they run once; `Passwordless` below puts the mutating ones behind their idempotency keys.
impl PasswordlessApi {
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
                oauth: request.oauth.map(|oauth| OAuthParams {
                    client_id: oauth.client_id,
                    redirect_uri: oauth.redirect_uri,
                    scope: oauth.scope,
                    state: oauth.state,
                    nonce: oauth.nonce,
                    code_challenge: oauth.code_challenge,
                    code_challenge_method: oauth.code_challenge_method,
                    response_type: oauth.response_type,
                }),
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
                locale: request.locale,
                include_otp: request.include_otp,
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
        request: Request<pb::SendEnchantedLinkRequest>,
    ) -> Result<Response<pb::SendEnchantedLinkResponse>, Status> {
        use pb::send_enchanted_link_request::Mode as ModePb;
        let request = request.into_inner();
        let options = request.login_options.unwrap_or_default();
        let mode = match ModePb::try_from(request.mode) {
            Ok(ModePb::Unspecified | ModePb::SignInOrUp) => Mode::SignInOrUp,
            Ok(ModePb::SignUp) => Mode::SignUp,
            Ok(ModePb::SignIn) => Mode::SignIn,
            Err(_) => {
                return Err(Error::field(
                    Reason::INVALID_VALUE,
                    "mode",
                    "mode is SIGN_IN_OR_UP, SIGN_UP or SIGN_IN",
                )
                .into());
            }
        };
        let sent = self
            .domain
            .send_enchanted_link(SendEnchantedLink {
                login_id: request.login_id,
                redirect_url: request.redirect_url,
                stepup: options.stepup,
                mfa: options.mfa,
                custom_claims: options.custom_claims.map(convert::json_object).unwrap_or_default(),
                provider_id: request.provider_id,
                sso_app_id: request.sso_app_id,
                mode,
                expiration_minutes: request.expiration_minutes,
                template_id: request.template_id,
                locale: request.locale,
                include_otp: request.include_otp,
            })
            .await?;
        Ok(Response::new(pb::SendEnchantedLinkResponse {
            link_id: sent.link_id,
            pending_ref: sent.pending_ref,
            masked_email: sent.masked_email,
            expires_at: timestamp(sent.expires_at),
            user_id: sent.user_id,
            user_created: sent.user_created,
            email_id: sent.email_id,
        }))
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
            .verify_token(
                &request.token,
                &request.code_verifier,
                request.session_duration_minutes,
                convert::client_from(request.client),
            )
            .await?;
        Ok(Response::new(pb::VerifyTokenResponse {
            user: Some(convert::user(verified.user)),
            user_activated: verified.user_activated,
            link_kind: convert::link_kind(verified.kind).into(),
            result: Some(match verified.outcome {
                VerifyOutcome::Session(session) => {
                    pb::verify_token_response::Result::Session(convert::session(*session))
                }
                VerifyOutcome::Authorization {
                    code,
                    redirect_url,
                    expires_at,
                } => pb::verify_token_response::Result::Authorization(pb::Authorization {
                    code,
                    redirect_url,
                    expires_at: timestamp(expires_at),
                }),
                VerifyOutcome::Enchanted { verified_at } => {
                    pb::verify_token_response::Result::Enchanted(pb::EnchantedConfirmation {
                        verified_at: timestamp(verified_at),
                    })
                }
            }),
        }))
    }

    async fn verify_otp(
        &self,
        request: Request<pb::VerifyOtpRequest>,
    ) -> Result<Response<pb::VerifyOtpResponse>, Status> {
        let request = request.into_inner();
        let verified = self
            .domain
            .verify_otp(VerifyOtp {
                email_id: request.email_id,
                otp: request.otp,
                code_verifier: request.code_verifier,
                session_minutes: request.session_duration_minutes,
                client: convert::client_from(request.client),
            })
            .await?;
        let VerifyOutcome::Session(session) = verified.outcome else {
            return Err(Error::internal("a one-time code gave no session").into());
        };
        Ok(Response::new(pb::VerifyOtpResponse {
            user: Some(convert::user(verified.user)),
            user_activated: verified.user_activated,
            link_kind: convert::link_kind(verified.kind).into(),
            session: Some(convert::session(*session)),
        }))
    }

    async fn poll_session(
        &self,
        request: Request<pb::PollSessionRequest>,
    ) -> Result<Response<pb::PollSessionResponse>, Status> {
        use pb::poll_session_response::Status as PollStatus;
        let request = request.into_inner();
        let outcome = self
            .domain
            .poll_session(
                &request.pending_ref,
                request.wait_seconds,
                convert::client_from(request.client),
            )
            .await?;
        let (status, user, session) = match outcome {
            PollOutcome::Pending => (PollStatus::Pending, None, None),
            PollOutcome::Verified { user, session } => (
                PollStatus::Verified,
                Some(convert::user(user)),
                Some(convert::session(*session)),
            ),
            PollOutcome::Expired => (PollStatus::Expired, None, None),
            PollOutcome::Failed => (PollStatus::Failed, None, None),
            PollOutcome::Collected => (PollStatus::Collected, None, None),
        };
        Ok(Response::new(pb::PollSessionResponse {
            status: status.into(),
            user,
            session,
        }))
    }

    async fn exchange_code(
        &self,
        request: Request<pb::ExchangeCodeRequest>,
    ) -> Result<Response<pb::ExchangeCodeResponse>, Status> {
        let request = request.into_inner();
        let exchanged = self
            .domain
            .exchange_code(Exchange {
                grant_type: request.grant_type,
                code: request.code,
                code_verifier: request.code_verifier,
                client_id: request.client_id,
                redirect_uri: request.redirect_uri,
            })
            .await?;
        Ok(Response::new(pb::ExchangeCodeResponse {
            access_token: exchanged.access_token,
            token_type: "Bearer".into(),
            expires_in: exchanged.expires_in,
            scope: exchanged.scope,
            id_token: exchanged.id_token.unwrap_or_default(),
            session_id: exchanged.session_id,
        }))
    }
}

#[tonic::async_trait]
impl Passwordless for PasswordlessApi {
    async fn issue_login_link(
        &self,
        request: Request<pb::IssueLoginLinkRequest>,
    ) -> Result<Response<pb::IssueLoginLinkResponse>, Status> {
        self.once
            .run("IssueLoginLink", request, |request| {
                PasswordlessApi::issue_login_link(self, request)
            })
            .await
    }

    async fn login_or_create(
        &self,
        request: Request<pb::LoginOrCreateRequest>,
    ) -> Result<Response<pb::LoginOrCreateResponse>, Status> {
        self.once
            .run("LoginOrCreate", request, |request| {
                PasswordlessApi::login_or_create(self, request)
            })
            .await
    }

    async fn send_enchanted_link(
        &self,
        request: Request<pb::SendEnchantedLinkRequest>,
    ) -> Result<Response<pb::SendEnchantedLinkResponse>, Status> {
        self.once
            .run("SendEnchantedLink", request, |request| {
                PasswordlessApi::send_enchanted_link(self, request)
            })
            .await
    }

    async fn inspect_token(
        &self,
        request: Request<pb::InspectTokenRequest>,
    ) -> Result<Response<pb::InspectTokenResponse>, Status> {
        PasswordlessApi::inspect_token(self, request).await
    }

    async fn verify_token(
        &self,
        request: Request<pb::VerifyTokenRequest>,
    ) -> Result<Response<pb::VerifyTokenResponse>, Status> {
        self.once
            .run("VerifyToken", request, |request| {
                PasswordlessApi::verify_token(self, request)
            })
            .await
    }

    async fn verify_otp(
        &self,
        request: Request<pb::VerifyOtpRequest>,
    ) -> Result<Response<pb::VerifyOtpResponse>, Status> {
        self.once
            .run("VerifyOtp", request, |request| {
                PasswordlessApi::verify_otp(self, request)
            })
            .await
    }

    async fn poll_session(
        &self,
        request: Request<pb::PollSessionRequest>,
    ) -> Result<Response<pb::PollSessionResponse>, Status> {
        self.once
            .run("PollSession", request, |request| {
                PasswordlessApi::poll_session(self, request)
            })
            .await
    }

    async fn exchange_code(
        &self,
        request: Request<pb::ExchangeCodeRequest>,
    ) -> Result<Response<pb::ExchangeCodeResponse>, Status> {
        self.once
            .run("ExchangeCode", request, |request| {
                PasswordlessApi::exchange_code(self, request)
            })
            .await
    }
}

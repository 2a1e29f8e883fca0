//! latchkey.v1.Sessions.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::idempotency::Idempotency;

use super::convert;
use super::pb::{self, sessions_server::Sessions};
use crate::domain::Domain;
use crate::domain::error::{Error, Reason};
use crate::domain::sessions::{SessionCredential, SessionRef};

pub struct SessionsApi {
    domain: Arc<Domain>,
    once: Idempotency,
}

impl SessionsApi {
    pub fn new(domain: Arc<Domain>) -> Self {
        Self {
            once: Idempotency::new(&domain),
            domain,
        }
    }
}

/// The RPCs as they run once; `Sessions` below puts the mutating ones behind their idempotency keys.
impl SessionsApi {
    async fn authenticate_session(
        &self,
        request: Request<pb::AuthenticateSessionRequest>,
    ) -> Result<Response<pb::AuthenticateSessionResponse>, Status> {
        use pb::authenticate_session_request::Credential;
        let credential = match request.into_inner().credential {
            Some(Credential::SessionToken(token)) => SessionCredential::Token(token),
            Some(Credential::SessionJwt(jwt)) => SessionCredential::Jwt(jwt),
            None => {
                return Err(Error::field(
                    Reason::MISSING_FIELD,
                    "session_token",
                    "session_token or session_jwt is required",
                )
                .into());
            }
        };
        let (user, session) = self.domain.authenticate_session(credential).await?;
        Ok(Response::new(pb::AuthenticateSessionResponse {
            user: Some(convert::user(user)),
            session: Some(convert::session(session)),
        }))
    }

    async fn revoke_session(
        &self,
        request: Request<pb::RevokeSessionRequest>,
    ) -> Result<Response<pb::RevokeSessionResponse>, Status> {
        use pb::revoke_session_request::Session;
        let target = match request.into_inner().session {
            Some(Session::SessionId(id)) => SessionRef::Id(id),
            Some(Session::SessionToken(token)) => SessionRef::Token(token),
            None => return Err(Error::missing("session_id").into()),
        };
        let session_id = self.domain.revoke_session(target).await?;
        Ok(Response::new(pb::RevokeSessionResponse { session_id }))
    }

    async fn revoke_user_sessions(
        &self,
        request: Request<pb::RevokeUserSessionsRequest>,
    ) -> Result<Response<pb::RevokeUserSessionsResponse>, Status> {
        let revoked_count = self.domain.revoke_user_sessions(&request.into_inner().user_id).await?;
        Ok(Response::new(pb::RevokeUserSessionsResponse { revoked_count }))
    }

    async fn list_user_sessions(
        &self,
        request: Request<pb::ListUserSessionsRequest>,
    ) -> Result<Response<pb::ListUserSessionsResponse>, Status> {
        let request = request.into_inner();
        let page = self
            .domain
            .list_user_sessions(&request.user_id, request.page_size, &request.page_token)
            .await?;
        Ok(Response::new(pb::ListUserSessionsResponse {
            sessions: page.sessions.into_iter().map(convert::user_session).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn get_jwks(&self, _request: Request<pb::GetJwksRequest>) -> Result<Response<pb::GetJwksResponse>, Status> {
        let (keys, jwks_json) = self.domain.keys.jwks();
        let keys = keys
            .into_iter()
            .map(|key| pb::Jwk {
                kid: key.kid,
                kty: key.kty.into(),
                crv: key.crv.into(),
                x: key.x,
                alg: key.alg.into(),
                r#use: key.use_.into(),
            })
            .collect();
        Ok(Response::new(pb::GetJwksResponse {
            keys,
            jwks_json: jwks_json.to_string(),
        }))
    }
}

#[tonic::async_trait]
impl Sessions for SessionsApi {
    async fn authenticate_session(
        &self,
        request: Request<pb::AuthenticateSessionRequest>,
    ) -> Result<Response<pb::AuthenticateSessionResponse>, Status> {
        SessionsApi::authenticate_session(self, request).await
    }

    async fn revoke_session(
        &self,
        request: Request<pb::RevokeSessionRequest>,
    ) -> Result<Response<pb::RevokeSessionResponse>, Status> {
        self.once
            .run("RevokeSession", request, |request| {
                SessionsApi::revoke_session(self, request)
            })
            .await
    }

    async fn revoke_user_sessions(
        &self,
        request: Request<pb::RevokeUserSessionsRequest>,
    ) -> Result<Response<pb::RevokeUserSessionsResponse>, Status> {
        self.once
            .run("RevokeUserSessions", request, |request| {
                SessionsApi::revoke_user_sessions(self, request)
            })
            .await
    }

    async fn list_user_sessions(
        &self,
        request: Request<pb::ListUserSessionsRequest>,
    ) -> Result<Response<pb::ListUserSessionsResponse>, Status> {
        SessionsApi::list_user_sessions(self, request).await
    }

    async fn get_jwks(&self, request: Request<pb::GetJwksRequest>) -> Result<Response<pb::GetJwksResponse>, Status> {
        SessionsApi::get_jwks(self, request).await
    }
}

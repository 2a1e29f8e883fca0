//! latchkey.v1.Emails.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert::timestamp;
use super::pb::{self, emails_server::Emails, get_email_status_response::Status as EmailStatusPb};
use crate::domain::Domain;
use crate::domain::model::EmailStatus;
use crate::domain::validate::mask_email;

pub struct EmailsApi {
    domain: Arc<Domain>,
}

impl EmailsApi {
    pub fn new(domain: Arc<Domain>) -> Self {
        Self { domain }
    }
}

#[tonic::async_trait]
impl Emails for EmailsApi {
    async fn get_email_status(
        &self,
        request: Request<pb::GetEmailStatusRequest>,
    ) -> Result<Response<pb::GetEmailStatusResponse>, Status> {
        let email = self.domain.email_status(&request.into_inner().email_id).await?;
        let status = match email.status {
            EmailStatus::Queued => EmailStatusPb::Queued,
            EmailStatus::Sending => EmailStatusPb::Sending,
            EmailStatus::Sent => EmailStatusPb::Sent,
            EmailStatus::Failed => EmailStatusPb::Failed,
        };
        Ok(Response::new(pb::GetEmailStatusResponse {
            email_id: email.id,
            status: status.into(),
            attempts: email.attempts,
            last_error: email.last_error.unwrap_or_default(),
            created_at: timestamp(email.created_at),
            sent_at: email.sent_at.and_then(timestamp),
            masked_recipient: mask_email(&email.recipient),
        }))
    }
}

//! latchkey.v1.Emails. GetEmailStatus arrives with the mail outbox.

use tonic::{Request, Response, Status};

use super::error::not_implemented;
use super::pb::{self, emails_server::Emails};

pub struct EmailsApi;

#[tonic::async_trait]
impl Emails for EmailsApi {
    async fn get_email_status(
        &self,
        _request: Request<pb::GetEmailStatusRequest>,
    ) -> Result<Response<pb::GetEmailStatusResponse>, Status> {
        Err(not_implemented("GetEmailStatus"))
    }
}

//! GetEmailStatus: what became of a queued email.

use super::Domain;
use super::error::{Error, Reason, Result};
use super::model::Email;

impl Domain {
    pub async fn email_status(&self, email_id: &str) -> Result<Email> {
        let email_id = email_id.trim();
        if email_id.is_empty() {
            return Err(Error::missing("email_id"));
        }
        let email = self.store.email(email_id).await?;
        email.ok_or_else(|| Error::new(Reason::EMAIL_NOT_FOUND, "no email with this email_id"))
    }
}

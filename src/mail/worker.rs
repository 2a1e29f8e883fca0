//! The mail worker: takes due emails from the outbox, renders them (re-deriving each link's token
//! from the server key), and sends a bounded number at once, so one slow SMTP conversation does
//! not hold up the queue. It is woken when mail is queued and when a retry falls due; it never
//! polls. Transient failures retry with exponential backoff and jitter; 5xx answers and
//! exhausted attempts end FAILED. On shutdown it starts nothing new and lets the sends in flight
//! finish. After a crash, emails caught mid-send go out again (at-least-once).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lettre::Message;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::templates::{Context, NumberedLink, Templates, describe_minutes};
use super::transport::{SendFailure, Transport};
use crate::crypto::random_in_range;
use crate::domain::Domain;
use crate::domain::model::{Email, EmailStatus, MINUTE, Millis};
use crate::domain::validate::mask_email;
use crate::reload::Shared;

/// Every message names its email id, as GetEmailStatus knows it.
pub const EMAIL_ID_HEADER: HeaderName = HeaderName::new_from_ascii_str("X-Latchkey-Email-Id");

/// Pause after the store fails to answer, before the worker asks again.
const STORE_ERROR_PAUSE: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    /// base·2^(attempts−1), capped at `max`, then scaled by a random 50–150 % so that retries
    /// after an outage do not arrive together.
    pub fn delay(&self, attempts: u32) -> Duration {
        let exponential = self.base.saturating_mul(1 << attempts.saturating_sub(1).min(20));
        let capped = exponential.min(self.max);
        capped.mul_f64(f64::from(random_in_range(50, 150)) / 100.0)
    }
}

/// Outcomes of delivery attempts since start, for metrics.
#[derive(Debug, Default)]
pub struct SendCounts {
    pub sent: AtomicU64,
    pub retried: AtomicU64,
    pub failed: AtomicU64,
}

pub struct Worker {
    domain: Arc<Domain>,
    counts: Arc<SendCounts>,
    /// Replaced whole when a reload brings a new SMTP password; a send in progress keeps its own.
    transport: Arc<Shared<dyn Transport>>,
    templates: Arc<Templates>,
    from: Mailbox,
    product: String,
    policy: RetryPolicy,
    concurrency: usize,
}

impl Worker {
    pub fn new(
        domain: Arc<Domain>,
        transport: Arc<Shared<dyn Transport>>,
        templates: Arc<Templates>,
        from: Mailbox,
        product: String,
        policy: RetryPolicy,
        concurrency: usize,
    ) -> Self {
        Self {
            domain,
            counts: Arc::default(),
            transport,
            templates,
            from,
            product,
            policy,
            concurrency,
        }
    }

    pub fn counts(&self) -> Arc<SendCounts> {
        self.counts.clone()
    }

    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let store = self.domain.store.clone();
        let clock = self.domain.clock.clone();
        match store.requeue_interrupted_emails(clock.now()).await {
            Ok(0) => {}
            Ok(requeued) => tracing::info!(requeued, "queued again the emails a stop interrupted"),
            Err(error) => tracing::warn!(%error, "cannot requeue interrupted emails"),
        }
        tracing::info!(transport = %self.transport.get().describe(), concurrency = self.concurrency, "mail worker running");
        let mut sending = JoinSet::new();
        loop {
            let mut pause = None;
            let free = self.concurrency - sending.len();
            if free > 0 {
                match store.due_emails(clock.now(), free).await {
                    Ok(due) => {
                        for email in due {
                            match store.claim_email(&email.id, clock.now()).await {
                                Ok(Some(claimed)) => {
                                    let worker = self.clone();
                                    sending.spawn(async move { worker.attempt(claimed).await });
                                }
                                Ok(None) => {}
                                Err(error) => tracing::warn!(%error, "cannot claim an email"),
                            }
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot read the outbox; will retry");
                        pause = Some(STORE_ERROR_PAUSE);
                    }
                }
            }
            let next_due = if pause.is_none() && sending.len() < self.concurrency {
                store.next_email_due().await.ok().flatten()
            } else {
                None
            };
            let wait = pause.or_else(|| next_due.map(|due| Duration::from_millis((due - clock.now()).max(0) as u64)));
            let due_or_pause = async {
                match wait {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.domain.mail.outbox.notified() => {}
                Some(_) = sending.join_next(), if !sending.is_empty() => {}
                () = due_or_pause => {}
            }
        }
        // Nothing new starts; the messages being sent finish.
        while sending.join_next().await.is_some() {}
        tracing::info!("mail worker stopped");
    }

    /// One delivery attempt, its outcome stored.
    async fn attempt(&self, mut email: Email) {
        email.attempts += 1;
        let outcome = match self.compose(&email).await {
            Ok(message) => {
                let transport = self.transport.get();
                transport.send(message).await
            }
            Err(problem) => Err(SendFailure {
                permanent: true,
                detail: problem,
            }),
        };
        let now = self.domain.clock.now();
        let recipient = mask_email(&email.recipient);
        match outcome {
            Ok(()) => {
                email.status = EmailStatus::Sent;
                email.sent_at = Some(now);
                self.counts.sent.fetch_add(1, Ordering::Relaxed);
                tracing::info!(email_id = %email.id, %recipient, attempts = email.attempts, "email sent");
            }
            Err(failure) if failure.permanent || email.attempts >= self.policy.max_attempts => {
                email.status = EmailStatus::Failed;
                self.counts.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(email_id = %email.id, %recipient, attempts = email.attempts, error = %failure.detail, "email failed");
                email.last_error = Some(failure.detail);
            }
            Err(failure) => {
                let delay = self.policy.delay(email.attempts);
                email.status = EmailStatus::Queued;
                email.next_attempt_at = now + delay.as_millis() as Millis;
                self.counts.retried.fetch_add(1, Ordering::Relaxed);
                tracing::info!(email_id = %email.id, %recipient, attempts = email.attempts, retry_in = ?delay, error = %failure.detail, "email will be retried");
                email.last_error = Some(failure.detail);
            }
        }
        if let Err(error) = self.domain.store.finish_email(&email).await {
            // The email stays SENDING and goes out again after a restart.
            tracing::error!(email_id = %email.id, %error, "cannot record an email's outcome");
        }
    }

    /// Renders the email with its links' tokens derived again from the server key.
    async fn compose(&self, email: &Email) -> Result<Message, String> {
        let mut links = Vec::with_capacity(email.links.len());
        for item in &email.links {
            let link = self
                .domain
                .store
                .link(&item.token_digest)
                .await
                .map_err(|error| format!("cannot read the email's link: {error}"))?
                .ok_or("the email's link no longer exists (its user was deleted, or it expired long ago)")?;
            if link.expires_at <= self.domain.clock.now() {
                return Err("the link expired before the email could be sent".into());
            }
            let number = item.number.map(|n| n.to_string()).unwrap_or_default();
            links.push(NumberedLink {
                number,
                url: self.domain.link_url(&link),
            });
        }
        let first = links.first().map(|link| link.url.clone()).unwrap_or_default();
        let lifetime = (email.link_expires_at - email.created_at) / MINUTE;
        let context = Context {
            product: self.product.clone(),
            first_name: email.first_name.clone(),
            last_name: email.last_name.clone(),
            email: email.recipient.clone(),
            link: first,
            links,
            expires: describe_minutes(lifetime),
        };
        let rendered = self
            .templates
            .render(email.kind, email.template_id.as_deref(), &context)?;
        let to: Mailbox = email
            .recipient
            .parse()
            .map_err(|error| format!("bad recipient address: {error}"))?;
        Message::builder()
            // Not a secret: lets a bounce or a support question be matched to GetEmailStatus.
            .raw_header(HeaderValue::new(EMAIL_ID_HEADER, email.id.clone()))
            .from(self.from.clone())
            .to(to)
            .subject(rendered.subject)
            .multipart(MultiPart::alternative_plain_html(rendered.text, rendered.html))
            .map_err(|error| format!("cannot build the message: {error}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let policy = RetryPolicy {
            max_attempts: 8,
            base: Duration::from_secs(5),
            max: Duration::from_secs(60),
        };
        for _ in 0..100 {
            let first = policy.delay(1);
            assert!(
                first >= Duration::from_millis(2500) && first <= Duration::from_millis(7500),
                "{first:?}"
            );
            let third = policy.delay(3);
            assert!(
                third >= Duration::from_secs(10) && third <= Duration::from_secs(30),
                "{third:?}"
            );
            assert!(policy.delay(30) <= Duration::from_secs(90));
        }
    }
}

//! The mail worker: claims due emails from the outbox for a lease, renders them (re-deriving each
//! link's token from the server key), and sends a bounded number at once, so one slow SMTP
//! conversation does not hold up the queue. It is woken when mail is queued, when a retry or a
//! lease falls due, and at least every `Wakeups::recheck`. Transient failures retry with
//! exponential backoff and jitter; 5xx answers and exhausted attempts end FAILED. On shutdown it
//! claims nothing new and lets the sends in flight finish. Several workers (threads or replicas)
//! may share one outbox: each email is claimed by one at a time, and one whose worker died goes
//! out again when its lease runs out (at-least-once; exactly once while workers live).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lettre::Message;
use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Body, Mailbox, MultiPart, SinglePart};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::templates::{Context, NumberedLink, Templates};
use super::transport::{SendFailure, Transport};
use crate::crypto::random_in_range;
use crate::domain::Domain;
use crate::domain::error::Result;
use crate::domain::model::{Email, EmailStatus, MINUTE, Millis};
use crate::domain::store::OutboxClaim;
use crate::domain::validate::mask_email;
use crate::domain::wakeups::Topic;
use crate::reload::Shared;

/// Every message names its email id, as GetEmailStatus knows it.
pub const EMAIL_ID_HEADER: HeaderName = HeaderName::new_from_ascii_str("X-Latchkey-Email-Id");

/// The language of the template the message was rendered in (RFC 3282).
const CONTENT_LANGUAGE: HeaderName = HeaderName::new_from_ascii_str("Content-Language");

/// Pause after the store fails to answer, before the worker asks again.
const STORE_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// The worker claims up to this many times `mail.concurrency` emails at once.
const CLAIM_AHEAD: usize = 8;

/// A claimed email whose lease leaves less than this for the send goes back to the outbox.
const MIN_SEND_TIME: Duration = Duration::from_millis(500);

/// The most outcomes recorded in one write.
const RECORD_BATCH: usize = 256;

/// A claimed email given back to the outbox, due now.
fn released(email: Email, now: Millis) -> Email {
    Email {
        status: EmailStatus::Queued,
        next_attempt_at: now,
        ..email
    }
}

/// When a claim started, how many it asked for, and what it got.
type ClaimOutcome = (tokio::time::Instant, usize, Result<Vec<Email>>);

/// An email this worker claimed, and when.
struct Claimed {
    email: Email,
    at: tokio::time::Instant,
}

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

/// Outcomes of delivery attempts since start, and how long delivered emails waited, for metrics.
#[derive(Debug)]
pub struct SendCounts {
    pub sent: AtomicU64,
    pub retried: AtomicU64,
    pub failed: AtomicU64,
    /// From the call that queued an email to its handover to the transport, in seconds.
    pub delay: Histogram,
}

impl Default for SendCounts {
    fn default() -> Self {
        Self {
            sent: AtomicU64::default(),
            retried: AtomicU64::default(),
            failed: AtomicU64::default(),
            // 1 ms to ~9 minutes.
            delay: Histogram::new(exponential_buckets(0.001, 2.0, 20)),
        }
    }
}

/// What became of one claimed email.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    Sent,
    /// Failed for now; queued again for a later attempt.
    Retry,
    Failed,
    /// The outcome could not be recorded (the lease ran out and another claim took the email, it
    /// was purged, or the store failed); the email stays with whoever holds it.
    Unrecorded,
}

/// What one `Worker::step` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Step {
    pub claimed: usize,
    pub sent: usize,
    pub retried: usize,
    pub failed: usize,
    pub unrecorded: usize,
}

/// How the worker sends: from whom, how often it retries, how many at once, for how long.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    pub from: Mailbox,
    pub product: String,
    pub policy: RetryPolicy,
    pub concurrency: usize,
    pub lease: Duration,
}

pub struct Worker {
    domain: Arc<Domain>,
    counts: Arc<SendCounts>,
    /// Replaced whole when a reload brings a new SMTP password; a send in progress keeps its own.
    transport: Arc<Shared<dyn Transport>>,
    templates: Arc<Templates>,
    settings: WorkerSettings,
}

impl Worker {
    pub fn new(
        domain: Arc<Domain>,
        transport: Arc<Shared<dyn Transport>>,
        templates: Arc<Templates>,
        settings: WorkerSettings,
    ) -> Self {
        Self {
            domain,
            counts: Arc::default(),
            transport,
            templates,
            settings,
        }
    }

    pub fn counts(&self) -> Arc<SendCounts> {
        self.counts.clone()
    }

    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let store = self.domain.store.clone();
        let clock = self.domain.clock.clone();
        let concurrency = self.settings.concurrency;
        tracing::info!(transport = %self.transport.get().describe(), concurrency, "mail worker running");
        // Outcomes are recorded by a task of their own, many in one write, so that a send's slot
        // is free as soon as the transport has the message rather than after a commit.
        let (outcomes, recorder) = {
            let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
            let worker = self.clone();
            (sender, tokio::spawn(async move { worker.record_all(receiver).await }))
        };
        let mut sending = JoinSet::new();
        // Claimed, waiting for a free slot. A claim is a durable write, so the worker claims in
        // batches, keeps a few ahead of its slots, and claims the next batch while the slots are
        // still busy with this one: waiting for each claim's commit with the slots idle held the
        // drain to a batch per commit.
        let mut claimed: VecDeque<Claimed> = VecDeque::new();
        let mut claiming: Option<Pin<Box<dyn Future<Output = ClaimOutcome> + Send>>> = None;
        // Armed before the latest claim looked, so mail queued since wakes the wait below.
        let mut queued = self.domain.wakeups.watch(Topic::Outbox);
        // The latest claim found less than it asked for: claim again only once woken.
        let mut drained = false;
        let mut pause: Option<tokio::time::Instant> = None;
        let low_water = concurrency * CLAIM_AHEAD / 2;
        loop {
            let paused = pause.is_some_and(|until| tokio::time::Instant::now() < until);
            if claiming.is_none() && !drained && !paused && claimed.len() < low_water.max(concurrency) {
                queued = self.domain.wakeups.watch(Topic::Outbox);
                let (worker, limit) = (self.clone(), concurrency * CLAIM_AHEAD - claimed.len());
                claiming = Some(Box::pin(async move {
                    let at = tokio::time::Instant::now();
                    (at, limit, worker.claim(limit).await)
                }));
            }
            while sending.len() < concurrency
                && let Some(next) = claimed.pop_front()
            {
                let (worker, outcomes) = (self.clone(), outcomes.clone());
                sending.spawn(async move {
                    let _ = outcomes.send(worker.attempt(next).await);
                });
            }
            let idle = claimed.is_empty() && claiming.is_none();
            let wait = if idle {
                let recheck = self.domain.wakeups.recheck();
                let due = match pause {
                    Some(until) => Some(until.saturating_duration_since(tokio::time::Instant::now())),
                    None => store
                        .next_email_due()
                        .await
                        .ok()
                        .flatten()
                        .map(|due| Duration::from_millis((due - clock.now()).max(0) as u64)),
                };
                due.unwrap_or(recheck).min(recheck)
            } else {
                Duration::ZERO
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                (at, limit, result) = async { claiming.as_mut().expect("guarded").await }, if claiming.is_some() => {
                    claiming = None;
                    match result {
                        Ok(emails) => {
                            drained = emails.len() < limit;
                            claimed.extend(emails.into_iter().map(|email| Claimed { email, at }));
                        }
                        Err(error) => {
                            tracing::warn!(%error, "cannot claim from the outbox; will retry");
                            pause = Some(tokio::time::Instant::now() + STORE_ERROR_PAUSE);
                        }
                    }
                }
                () = &mut queued, if drained && claiming.is_none() => drained = false,
                Some(_) = sending.join_next(), if !sending.is_empty() => {}
                () = tokio::time::sleep(wait), if idle => {
                    drained = false;
                    pause = None;
                }
            }
        }
        // Nothing new starts: the claims not started go back to the outbox (due now; the claim
        // counted an attempt), and the messages being sent finish and are recorded.
        for Claimed { email, .. } in claimed {
            let _ = outcomes.send((released(email, clock.now()), Delivery::Retry));
        }
        while sending.join_next().await.is_some() {}
        drop(outcomes);
        let _ = recorder.await;
        tracing::info!("mail worker stopped");
    }

    /// One turn: claims up to `limit` due emails, sends them at once and records each outcome.
    /// Tests drain the outbox with it, step by step.
    pub async fn step(self: &Arc<Self>, limit: usize) -> Result<Step> {
        let at = tokio::time::Instant::now();
        let claimed = self.claim(limit).await?;
        let mut step = Step {
            claimed: claimed.len(),
            ..Step::default()
        };
        let mut sending = JoinSet::new();
        for email in claimed {
            let worker = self.clone();
            sending.spawn(async move { worker.attempt(Claimed { email, at }).await });
        }
        let mut outcomes = Vec::new();
        while let Some(done) = sending.join_next().await {
            match done {
                Ok(outcome) => outcomes.push(outcome),
                Err(_) => step.unrecorded += 1,
            }
        }
        for delivery in self.record(outcomes).await {
            match delivery {
                Delivery::Sent => step.sent += 1,
                Delivery::Retry => step.retried += 1,
                Delivery::Failed => step.failed += 1,
                Delivery::Unrecorded => step.unrecorded += 1,
            }
        }
        Ok(step)
    }

    async fn claim(&self, limit: usize) -> Result<Vec<Email>> {
        let claim = OutboxClaim {
            now: self.domain.clock.now(),
            lease: self.settings.lease.as_millis() as Millis,
            limit,
        };
        self.domain.store.claim_emails(claim).await
    }

    /// Records outcomes as they come, each batch what has arrived since the last write began.
    async fn record_all(&self, mut outcomes: tokio::sync::mpsc::UnboundedReceiver<(Email, Delivery)>) {
        let mut batch = Vec::with_capacity(RECORD_BATCH);
        while outcomes.recv_many(&mut batch, RECORD_BATCH).await > 0 {
            self.record(std::mem::take(&mut batch)).await;
        }
    }

    /// Writes attempts' outcomes in one durable write; answers what became of each.
    async fn record(&self, outcomes: Vec<(Email, Delivery)>) -> Vec<Delivery> {
        if outcomes.is_empty() {
            return Vec::new();
        }
        let emails: Vec<Email> = outcomes.iter().map(|(email, _)| email.clone()).collect();
        match self.domain.store.finish_emails(&emails).await {
            Ok(recorded) => outcomes
                .into_iter()
                .zip(recorded)
                .map(|((email, delivery), recorded)| {
                    if recorded {
                        delivery
                    } else {
                        tracing::warn!(email_id = %email.id, "an email's lease ran out before its outcome was recorded; another claim has it");
                        Delivery::Unrecorded
                    }
                })
                .collect(),
            Err(error) => {
                // The emails stay SENDING and go out again when their leases run out.
                for (email, _) in &outcomes {
                    tracing::error!(email_id = %email.id, %error, "cannot record an email's outcome");
                }
                vec![Delivery::Unrecorded; outcomes.len()]
            }
        }
    }

    /// One delivery attempt of a claimed email (its `attempts` already counts it): the email as
    /// it should be recorded, and what became of it.
    async fn attempt(&self, claimed: Claimed) -> (Email, Delivery) {
        let Claimed { mut email, at } = claimed;
        let policy = &self.settings.policy;
        // Four fifths of the lease from the claim: the outcome is recorded before anyone else may
        // claim the email.
        let deadline = (at + self.settings.lease.mul_f64(0.8)).saturating_duration_since(tokio::time::Instant::now());
        if deadline < MIN_SEND_TIME {
            return (released(email, self.domain.clock.now()), Delivery::Retry);
        }
        let outcome = if email.attempts > policy.max_attempts {
            // Claims whose workers died (or whose sends crashed them) count as attempts too.
            Err(SendFailure {
                permanent: true,
                detail: format!("gave up after {} interrupted attempts", email.attempts - 1),
            })
        } else {
            match self.compose(&email).await {
                Ok(message) => {
                    let transport = self.transport.get();
                    match tokio::time::timeout(deadline, transport.send(message)).await {
                        Ok(sent) => sent,
                        Err(_) => Err(SendFailure {
                            permanent: false,
                            detail: "the send took longer than its claim allows (4/5 of mail.lease_seconds)".into(),
                        }),
                    }
                }
                Err(failure) => Err(failure),
            }
        };
        let now = self.domain.clock.now();
        let recipient = mask_email(&email.recipient);
        let delivery = match outcome {
            Ok(()) => {
                self.counts
                    .delay
                    .observe(now.saturating_sub(email.created_at).max(0) as f64 / 1000.0);
                email.status = EmailStatus::Sent;
                email.sent_at = Some(now);
                email.next_attempt_at = now;
                tracing::info!(email_id = %email.id, %recipient, attempts = email.attempts, "email sent");
                Delivery::Sent
            }
            Err(failure) if failure.permanent || email.attempts >= policy.max_attempts => {
                email.status = EmailStatus::Failed;
                email.next_attempt_at = now;
                tracing::warn!(email_id = %email.id, %recipient, attempts = email.attempts, error = %failure.detail, "email failed");
                email.last_error = Some(failure.detail);
                Delivery::Failed
            }
            Err(failure) => {
                let delay = policy.delay(email.attempts);
                email.status = EmailStatus::Queued;
                email.next_attempt_at = now + delay.as_millis() as Millis;
                tracing::info!(email_id = %email.id, %recipient, attempts = email.attempts, retry_in = ?delay, error = %failure.detail, "email will be retried");
                email.last_error = Some(failure.detail);
                Delivery::Retry
            }
        };
        let counter = match delivery {
            Delivery::Sent => &self.counts.sent,
            Delivery::Retry => &self.counts.retried,
            _ => &self.counts.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        (email, delivery)
    }

    /// Renders the email with its links' tokens derived again from the server key. A store that
    /// does not answer (a database failing over) is retried like a relay that does not; what is
    /// wrong with the email itself is permanent.
    async fn compose(&self, email: &Email) -> Result<Message, SendFailure> {
        let permanent = |detail: String| SendFailure {
            permanent: true,
            detail,
        };
        let mut links = Vec::with_capacity(email.links.len());
        let mut otp = String::new();
        for item in &email.links {
            let link = self
                .domain
                .store
                .link(&item.token_digest)
                .await
                .map_err(|error| SendFailure {
                    permanent: false,
                    detail: format!("cannot read the email's link: {error}"),
                })?
                .ok_or_else(|| {
                    permanent("the email's link no longer exists (its user was deleted, or it expired long ago)".into())
                })?;
            if link.expires_at <= self.domain.clock.now() {
                return Err(permanent("the link expired before the email could be sent".into()));
            }
            if let Some(code) = self.domain.link_otp(&link) {
                otp = code;
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
            product: self.settings.product.clone(),
            first_name: email.first_name.clone(),
            last_name: email.last_name.clone(),
            email: email.recipient.clone(),
            link: first,
            links,
            expires_minutes: lifetime,
            otp: (!otp.is_empty()).then_some(otp),
            locale: email.locale.clone(),
        };
        let rendered = self
            .templates
            .render(email.kind, email.template_id.as_deref(), &context)
            .map_err(permanent)?;
        let to: Mailbox = email
            .recipient
            .parse()
            .map_err(|error| permanent(format!("bad recipient address: {error}")))?;
        Message::builder()
            // Not a secret: lets a bounce or a support question be matched to GetEmailStatus.
            .raw_header(HeaderValue::new(EMAIL_ID_HEADER, email.id.clone()))
            .raw_header(HeaderValue::new(CONTENT_LANGUAGE, rendered.lang))
            .from(self.settings.from.clone())
            .to(to)
            .subject(rendered.subject)
            .multipart({
                let eight_bit = self.transport.get().readable();
                MultiPart::alternative()
                    .singlepart(body_part(ContentType::TEXT_PLAIN, rendered.text, eight_bit))
                    .singlepart(body_part(ContentType::TEXT_HTML, rendered.html, eight_bit))
            })
            .map_err(|error| permanent(format!("cannot build the message: {error}")))
    }
}

/// A part as it is, lines ending in CRLF, when that is valid as it is: 7-bit when the text is
/// ASCII (any SMTP server takes it), 8-bit when `eight_bit` allows (the file transport, so that the
/// files stay readable), and lines of at most 998 bytes (a message line's limit). Otherwise
/// lettre's choice of encoding (quoted-printable or base64). lettre's own check for sending a part
/// as it is also wants lines of at most 78, which a link with its token exceeds, so it encoded
/// every email; choosing and encoding took about a quarter of the server's CPU while it sent
/// over SMTP (bench/RESULTS.md).
fn body_part(content_type: ContentType, text: String, eight_bit: bool) -> SinglePart {
    const MAX_LINE: usize = 998;
    let text = text.replace("\r\n", "\n");
    let fits = text
        .lines()
        .all(|line| line.len() <= MAX_LINE && !line.bytes().any(|byte| byte == b'\r' || byte == 0));
    let encoding = if !fits {
        None
    } else if text.is_ascii() {
        Some(ContentTransferEncoding::SevenBit)
    } else if eight_bit {
        Some(ContentTransferEncoding::EightBit)
    } else {
        None
    };
    let body = match encoding {
        Some(encoding) => Body::dangerous_pre_encoded(text.replace('\n', "\r\n").into_bytes(), encoding),
        None => Body::new(text),
    };
    SinglePart::builder().header(content_type).body(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_go_as_they_are_when_valid_so_and_are_encoded_otherwise() {
        let encoding = |text: &str, eight_bit: bool| {
            let formatted = body_part(ContentType::TEXT_PLAIN, text.to_string(), eight_bit).formatted();
            let formatted = String::from_utf8(formatted).unwrap();
            let header = formatted
                .lines()
                .find_map(|line| line.strip_prefix("Content-Transfer-Encoding: "))
                .unwrap()
                .to_string();
            (header, formatted)
        };
        let link = format!(
            "Sign in: https://app.example.com/auth?token={}\nThanks",
            "x".repeat(120)
        );
        let (sent_as, formatted) = encoding(&link, false);
        assert_eq!(sent_as, "7bit");
        assert!(
            formatted.contains(&format!("token={}\r\nThanks", "x".repeat(120))),
            "{formatted}"
        );
        assert_eq!(encoding(&link, true).0, "7bit");
        let german = "Hallo Jürgen,\nmelde dich an";
        assert_eq!(encoding(german, true).0, "8bit");
        assert!(["quoted-printable", "base64"].contains(&encoding(german, false).0.as_str()));
        let too_long = "a".repeat(999);
        assert!(["quoted-printable", "base64"].contains(&encoding(&too_long, true).0.as_str()));
    }

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

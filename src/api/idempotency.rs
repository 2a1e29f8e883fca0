//! Idempotency keys on the mutating RPCs: a call with `idempotency-key` metadata (1–255 printable
//! ASCII characters, scoped to the API key that makes the call) claims the key in the store, runs,
//! and stores its answer sealed under the server key (it may hold a session token). A repeat with
//! the same key and the same request within 24 h gets that answer, one with a different request
//! `IDEMPOTENCY_KEY_REUSED`, and one while the first still runs waits for it (on any replica: the
//! claim is in the store). Only a keyed digest of the request is kept. A call that fails lets go of its
//! key, so a repeat runs again; so does one whose claim failed, since the claim may have been made
//! although the store's answer was lost. Each claim carries a random claimant, and only the call
//! holding the key settles it. docs/high-availability.md says what a client should do per RPC.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use tonic::{Request, Response, Status};

use super::auth::Caller;
use super::error::to_status;
use crate::crypto::{Digest32, ServerKey, random_bytes};
use crate::domain::Domain;
use crate::domain::clock::Clock;
use crate::domain::error::{Error, Reason};
use crate::domain::model::{HOUR, Millis};
use crate::domain::store::{Claimant, IdempotencyClaim, IdempotencyState, Store};

/// The metadata key a client sends.
pub const METADATA_KEY: &str = "idempotency-key";
const MAX_LEN: usize = 255;
/// How long a key and its answer are kept.
const KEEP: Millis = 24 * HOUR;
/// How long a call may run without an answer before a repeat takes its key over (it crashed):
/// longer than any call runs, the longest being a PollSession long poll.
const LEASE: Millis = 2 * 60 * 1000;
/// How long a repeat waits for the first call before it answers `IDEMPOTENCY_KEY_IN_USE`.
const WAIT: Duration = Duration::from_secs(20);
const WAIT_STEP: Duration = Duration::from_millis(50);
/// A settle that failed (the store was unreachable), or the release of a claim whose outcome is
/// unknown, is tried again in the background this often, until the lease would have freed the
/// key anyway. A late settle is harmless: only the claimant that still holds the key matches.
const SETTLE_RETRY: Duration = Duration::from_millis(250);
const SETTLE_WITHIN: Duration = Duration::from_millis(LEASE as u64);
const SEAL_LABEL: &str = "idempotency answers";
const REQUEST_LABEL: &str = "idempotency requests";

pub struct Idempotency {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    seal: LessSafeKey,
    server_key: ServerKey,
}

impl Idempotency {
    pub fn new(domain: &Domain) -> Self {
        Self {
            store: domain.store.clone(),
            clock: domain.clock.clone(),
            seal: sealing_key(&domain.server_key),
            server_key: domain.server_key.clone(),
        }
    }

    /// Runs `call` (the RPC `method`) once per idempotency key, if the request carries one.
    pub async fn run<Req, Resp, Fut>(
        &self,
        method: &str,
        request: Request<Req>,
        call: impl FnOnce(Request<Req>) -> Fut,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Message,
        Resp: Message + Default,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let Some(key) = presented_key(&request).map_err(to_status)? else {
            return call(request).await;
        };
        let caller = request
            .extensions()
            .get::<Caller>()
            .map_or("", |caller| caller.0.as_str());
        let key = Digest32::of_bytes(&[caller.as_bytes(), b"\0", key].concat());
        // Keyed: a request may carry a secret of little entropy (VerifyOtp's 6-digit code), which a
        // plain hash in the store would give away to anyone who can read it.
        let request_bytes = [method.as_bytes(), b"\0", &request.get_ref().encode_to_vec()].concat();
        let digest = Digest32(self.server_key.derive(REQUEST_LABEL, &request_bytes));
        let claimant = Claimant::random();
        let waited_since = tokio::time::Instant::now();
        let claimed_at = loop {
            let claim = IdempotencyClaim {
                key: &key,
                request: &digest,
                claimant,
                now: self.clock.now(),
                lease: LEASE,
                keep: KEEP,
            };
            let state = match self.store.claim_idempotency_key(claim).await {
                Ok(state) => state,
                Err(error) => {
                    // The claim may be in the store although its acknowledgement was lost (the
                    // connection broke after the INSERT committed): left there, it would hold every
                    // repeat for the whole lease. Only this claimant can match, so letting go of
                    // it never touches a claim of anyone else.
                    if error.reason() == Reason::STORE_UNAVAILABLE {
                        tokio::spawn(settle_later(
                            self.store.clone(),
                            key,
                            claimant,
                            None,
                            tokio::time::Instant::now() + SETTLE_WITHIN,
                        ));
                    }
                    return Err(to_status(error));
                }
            };
            match state {
                IdempotencyState::Claimed => break tokio::time::Instant::now(),
                IdempotencyState::Answered(sealed) => {
                    let answer = open(&self.seal, &key, sealed).map_err(|what| {
                        to_status(Error::internal(format!(
                            "an answer kept under an idempotency key {what}"
                        )))
                    })?;
                    return Resp::decode(&answer[..]).map(Response::new).map_err(|_| {
                        to_status(Error::internal(
                            "an answer kept under an idempotency key does not decode",
                        ))
                    });
                }
                IdempotencyState::Reused => {
                    return Err(to_status(Error::new(
                        Reason::IDEMPOTENCY_KEY_REUSED,
                        format!("this idempotency-key was used for a different {method} request (or another RPC)"),
                    )));
                }
                IdempotencyState::Running if waited_since.elapsed() >= WAIT => {
                    return Err(to_status(Error::new(
                        Reason::IDEMPOTENCY_KEY_IN_USE,
                        "a call with this idempotency-key is still running; retry with the same key later",
                    )));
                }
                IdempotencyState::Running => tokio::time::sleep(WAIT_STEP).await,
            }
        };
        let answer = call(request).await;
        let sealed = match &answer {
            Ok(response) => Some(seal(&self.seal, &key, &response.get_ref().encode_to_vec())),
            Err(_) => None,
        };
        if let Err(error) = self
            .store
            .settle_idempotency_key(&key, &claimant, sealed.as_deref())
            .await
        {
            // The call's own outcome stands. Left claimed, the key would make every repeat wait
            // out the lease (minutes, in a failover), so the settle goes on in the background.
            tracing::warn!(%error, method, "cannot record the answer under its idempotency key yet");
            tokio::spawn(settle_later(
                self.store.clone(),
                key,
                claimant,
                sealed,
                claimed_at + SETTLE_WITHIN,
            ));
            if answer.is_ok() {
                return Err(to_status(Error::new(
                    Reason::STORE_UNAVAILABLE,
                    "the call was done but its answer could not be kept under its idempotency-key yet; \
                     retry with the same key",
                )));
            }
        }
        answer
    }
}

/// Settles a key whose settle failed (or whose claim's outcome is unknown), once the store answers
/// again, unless `until` passes first (the key is then left to its lease, as a crashed replica
/// leaves it).
async fn settle_later(
    store: Arc<dyn Store>,
    key: Digest32,
    claimant: Claimant,
    answer: Option<Vec<u8>>,
    until: tokio::time::Instant,
) {
    while tokio::time::Instant::now() + SETTLE_RETRY < until {
        tokio::time::sleep(SETTLE_RETRY).await;
        if store
            .settle_idempotency_key(&key, &claimant, answer.as_deref())
            .await
            .is_ok()
        {
            tracing::info!("recorded the outcome under an idempotency key after the store came back");
            return;
        }
    }
    tracing::warn!("gave up recording an outcome under its idempotency key; the key waits out its lease");
}

/// `answer` encrypted and authenticated under the sealing key, bound to its idempotency key:
/// a random nonce, then the ciphertext and tag.
fn seal(seal: &LessSafeKey, key: &Digest32, answer: &[u8]) -> Vec<u8> {
    let nonce = random_bytes::<NONCE_LEN>();
    let mut sealed = answer.to_vec();
    seal.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(key.as_bytes()),
        &mut sealed,
    )
    .expect("an answer fits ChaCha20-Poly1305's limits");
    [&nonce[..], &sealed].concat()
}

/// The answer `seal` sealed under the same key, or what is wrong with it.
fn open(seal: &LessSafeKey, key: &Digest32, sealed: Vec<u8>) -> Result<Vec<u8>, &'static str> {
    if sealed.len() < NONCE_LEN {
        return Err("is truncated");
    }
    let nonce = Nonce::try_assume_unique_for_key(&sealed[..NONCE_LEN]).map_err(|_| "has a bad nonce")?;
    let mut body = sealed[NONCE_LEN..].to_vec();
    let answer = seal
        .open_in_place(nonce, Aad::from(key.as_bytes()), &mut body)
        .map_err(|_| "does not open under this server key")?;
    Ok(answer.to_vec())
}

fn sealing_key(server_key: &ServerKey) -> LessSafeKey {
    let key = server_key.derive(SEAL_LABEL, b"");
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key).expect("a 32-byte key"))
}

/// The request's idempotency key, if it sent one; a malformed one is refused.
fn presented_key<T>(request: &Request<T>) -> Result<Option<&[u8]>, Error> {
    let mut values = request.metadata().get_all(METADATA_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let refuse = |why: &str| {
        Error::new(
            Reason::INVALID_IDEMPOTENCY_KEY,
            format!("idempotency-key {why}: it is 1 to {MAX_LEN} printable ASCII characters, sent once"),
        )
    };
    if values.next().is_some() {
        return Err(refuse("is sent more than once"));
    }
    let key = value.as_bytes();
    if key.is_empty() {
        return Err(refuse("is empty"));
    }
    if key.len() > MAX_LEN {
        return Err(refuse(&format!("has {} characters", key.len())));
    }
    if !key.iter().all(|byte| (0x20..0x7f).contains(byte)) {
        return Err(refuse("holds a character that is not printable ASCII"));
    }
    Ok(Some(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_key(value: &[u8]) -> Request<()> {
        let mut request = Request::new(());
        request
            .metadata_mut()
            .insert(METADATA_KEY, tonic::metadata::MetadataValue::try_from(value).unwrap());
        request
    }

    #[test]
    fn keys_are_1_to_255_printable_ascii_characters() {
        assert_eq!(presented_key(&Request::new(())).unwrap(), None);
        for good in [&b"a"[..], b"order 42/retry", &[b'k'; 255]] {
            assert_eq!(presented_key(&with_key(good)).unwrap(), Some(good));
        }
        for bad in [&b""[..], &[b'k'; 256], b"tab\there", "caf\u{e9}".as_bytes()] {
            let error = presented_key(&with_key(bad)).unwrap_err();
            assert_eq!(error.reason(), Reason::INVALID_IDEMPOTENCY_KEY, "{bad:?}");
        }
    }

    #[test]
    fn an_answer_is_unreadable_and_opens_only_under_its_own_key() {
        let server_key = ServerKey::parse(&ServerKey::generate_encoded()).unwrap();
        let key = sealing_key(&server_key);
        let (mine, other) = (Digest32::of("a"), Digest32::of("b"));
        let answer = b"session_token: lk_sess_0123456789".to_vec();
        let sealed = seal(&key, &mine, &answer);
        assert!(
            !sealed.windows(10).any(|window| window == &answer[15..25]),
            "sealed in clear"
        );
        assert_eq!(open(&key, &mine, sealed.clone()).unwrap(), answer);
        assert!(open(&key, &other, sealed.clone()).is_err());
        let another_server = sealing_key(&ServerKey::parse(&ServerKey::generate_encoded()).unwrap());
        assert!(open(&another_server, &mine, sealed).is_err());
    }
}

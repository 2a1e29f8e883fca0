//! Property tests (proptest) of the pure rules underneath the flows: stamped secrets key records in
//! creation order, links keep their redirect URL's query and add one token, PKCE S256, the store's
//! record codec, and email masking. The fuzz targets in `fuzz/` check the same code on arbitrary
//! input; the record seeds they start from are checked here too (see `committed_record_seeds_decode`).

use std::path::{Path, PathBuf};

use latchkey::crypto::{Digest32, PLAIN_SECRET_CHARS, STAMPED_SECRET_CHARS, base64url, pkce, stamped_secret};
use latchkey::domain::error::Reason;
use latchkey::domain::model::{
    Attempt, AttemptStatus, AuthCode, ClientInfo, Email, EmailKind, EmailLink, EmailStatus, LinkKind, LinkOtp,
    OAuthRequest, Role, UserStatus,
};
// The codec's properties are about the records as sled keeps them.
use latchkey::domain::redirect::{AllowedRedirect, RedirectPolicy, link_with_token};
use latchkey::domain::validate;
use latchkey::store::sled_store::codec::{decode, encode};
use latchkey::store::sled_store::records::{
    KeyRecord as SigningKeyRecord, LinkNote, LinkRecord as Link, RateBucketRecord as RateBucket,
    SessionRecord as Session, UserRecord as User,
};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use url::Url;

/// Stamps cover 48 bits of milliseconds.
const MAX_STAMP: i64 = (1 << 48) - 1;

fn digest() -> impl Strategy<Value = Digest32> {
    any::<[u8; 32]>().prop_map(Digest32)
}

fn millis() -> impl Strategy<Value = i64> {
    any::<i64>()
}

fn text() -> impl Strategy<Value = String> {
    ".{0,24}"
}

/// JSON values as claims hold them; `floats` adds non-integral numbers (they round-trip exactly
/// through MessagePack, while JSON text may lose the last bit).
fn json(floats: bool) -> impl Strategy<Value = Value> {
    let float = if floats {
        any::<f64>()
            .prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number))
            .boxed()
    } else {
        Just(Value::Null).boxed()
    };
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        text().prop_map(Value::from),
        float,
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map(text(), inner, 0..4).prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

fn claims(floats: bool) -> impl Strategy<Value = Map<String, Value>> {
    btree_map(text(), json(floats), 0..5).prop_map(|map| map.into_iter().collect())
}

fn link_kind() -> impl Strategy<Value = LinkKind> {
    prop_oneof![Just(LinkKind::Login), Just(LinkKind::Magic), Just(LinkKind::Enchanted)]
}

fn oauth_request() -> impl Strategy<Value = OAuthRequest> {
    (text(), text(), text(), text(), text(), text()).prop_map(
        |(client_id, redirect_uri, scope, state, nonce, code_challenge)| OAuthRequest {
            client_id,
            redirect_uri,
            scope,
            state,
            nonce,
            code_challenge,
        },
    )
}

fn user() -> impl Strategy<Value = User> {
    let status = prop_oneof![
        Just(UserStatus::Pending),
        Just(UserStatus::Active),
        Just(UserStatus::Disabled)
    ];
    let role = prop_oneof![Just(Role::Client), Just(Role::Staff)];
    let note =
        (digest(), proptest::option::of(digest()), millis()).prop_map(|(token_digest, reuse_key, expires_at)| {
            LinkNote {
                token_digest,
                reuse_key,
                expires_at,
            }
        });
    (
        (text(), text(), text(), text(), status, role),
        (any::<bool>(), any::<bool>(), millis(), millis()),
        (
            proptest::option::of(millis()),
            proptest::option::of(millis()),
            vec(note, 0..3),
            proptest::option::of(text()),
        ),
    )
        .prop_map(
            |(
                (id, email, first_name, last_name, status, role),
                (mfa_enabled, email_verified, created_at, updated_at),
                (last_login_at, sessions_revoked_at, links, locale),
            )| User {
                id,
                email,
                first_name,
                last_name,
                status,
                role,
                mfa_enabled,
                email_verified,
                created_at,
                updated_at,
                last_login_at,
                sessions_revoked_at,
                links,
                locale,
            },
        )
}

fn link() -> impl Strategy<Value = Link> {
    (
        (digest(), any::<[u8; 32]>(), link_kind(), text(), text()),
        (
            millis(),
            millis(),
            proptest::option::of(millis()),
            proptest::option::of(text()),
        ),
        (
            proptest::option::of(digest()),
            proptest::option::of(digest()),
            proptest::option::of(oauth_request()),
            proptest::option::of(link_otp()),
        ),
    )
        .prop_map(
            |(
                (token_digest, seed, kind, user_id, redirect_url),
                (created_at, expires_at, used_at, code_challenge),
                (reuse_key, attempt, oauth, otp),
            )| Link {
                token_digest,
                seed,
                kind,
                user_id,
                redirect_url,
                created_at,
                expires_at,
                used_at,
                code_challenge,
                reuse_key,
                attempt,
                oauth,
                otp,
            },
        )
}

fn link_otp() -> impl Strategy<Value = LinkOtp> {
    (digest(), any::<u8>(), any::<u8>()).prop_map(|(digest, digits, failures)| LinkOtp {
        digest,
        digits,
        failures,
    })
}

fn client_info() -> impl Strategy<Value = ClientInfo> {
    (text(), text()).prop_map(|(ip_address, user_agent)| ClientInfo { ip_address, user_agent })
}

fn session() -> impl Strategy<Value = Session> {
    (
        (text(), text(), digest()),
        (
            millis(),
            millis(),
            proptest::option::of(millis()),
            link_kind(),
            claims(true),
        ),
        (
            any::<bool>(),
            proptest::option::of(client_info()),
            proptest::option::of(millis()),
        ),
    )
        .prop_map(
            |(
                (id, user_id, token_digest),
                (created_at, expires_at, revoked_at, link_kind, claims),
                (via_otp, client, last_authenticated_at),
            )| Session {
                id,
                user_id,
                token_digest,
                created_at,
                expires_at,
                revoked_at,
                link_kind,
                claims,
                via_otp,
                client,
                last_authenticated_at,
            },
        )
}

fn attempt() -> impl Strategy<Value = Attempt> {
    let status = prop_oneof![
        Just(AttemptStatus::Pending),
        Just(AttemptStatus::Verified),
        Just(AttemptStatus::Failed),
        Just(AttemptStatus::Collected),
    ];
    (
        (digest(), text(), status, digest()),
        (
            millis(),
            millis(),
            proptest::option::of(millis()),
            claims(true),
            proptest::option::of(text()),
        ),
    )
        .prop_map(
            |((ref_digest, user_id, status, right_link), (created_at, expires_at, verified_at, claims, session_id))| {
                Attempt {
                    ref_digest,
                    user_id,
                    status,
                    right_link,
                    created_at,
                    expires_at,
                    verified_at,
                    claims,
                    session_id,
                }
            },
        )
}

fn email_record() -> impl Strategy<Value = Email> {
    let kind = prop_oneof![
        Just(EmailKind::Login),
        Just(EmailKind::Signup),
        Just(EmailKind::Enchanted)
    ];
    let status = prop_oneof![
        Just(EmailStatus::Queued),
        Just(EmailStatus::Sending),
        Just(EmailStatus::Sent),
        Just(EmailStatus::Failed),
    ];
    let email_link =
        (digest(), proptest::option::of(any::<u8>()), any::<bool>()).prop_map(|(token_digest, number, otp)| {
            EmailLink {
                token_digest,
                number,
                otp,
            }
        });
    (
        (text(), text(), text(), text(), text(), kind),
        (proptest::option::of(text()), vec(email_link, 0..4), millis(), status),
        (
            any::<u32>(),
            proptest::option::of(text()),
            millis(),
            millis(),
            proptest::option::of(millis()),
            text(),
        ),
    )
        .prop_map(
            |(
                (id, recipient, user_id, first_name, last_name, kind),
                (template_id, links, link_expires_at, status),
                (attempts, last_error, created_at, next_attempt_at, sent_at, locale),
            )| Email {
                id,
                recipient,
                user_id,
                first_name,
                last_name,
                kind,
                template_id,
                links,
                link_expires_at,
                status,
                attempts,
                last_error,
                created_at,
                next_attempt_at,
                sent_at,
                locale,
            },
        )
}

fn auth_code() -> impl Strategy<Value = AuthCode> {
    (
        (digest(), text(), oauth_request()),
        (
            millis(),
            millis(),
            millis(),
            proptest::option::of(millis()),
            proptest::option::of(text()),
        ),
    )
        .prop_map(
            |((code_digest, user_id, request), (created_at, expires_at, auth_time, used_at, session_id))| AuthCode {
                code_digest,
                user_id,
                request,
                created_at,
                expires_at,
                auth_time,
                used_at,
                session_id,
            },
        )
}

fn signing_keys() -> impl Strategy<Value = Vec<SigningKeyRecord>> {
    let key = (text(), any::<[u8; 32]>(), millis(), millis(), millis()).prop_map(
        |(kid, salt, created_at, signs_from, retire_at)| SigningKeyRecord {
            kid,
            salt,
            created_at,
            signs_from,
            retire_at,
        },
    );
    vec(key, 0..4)
}

fn round_trips<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(record: &T) -> Result<(), TestCaseError> {
    let bytes = encode(record);
    prop_assert_eq!(
        &decode::<T>(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?,
        record
    );
    Ok(())
}

fn reads_as_json<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    record: &T,
) -> Result<(), TestCaseError> {
    let json = serde_json::to_vec(record).unwrap();
    prop_assert_eq!(
        &decode::<T>(&json).map_err(|e| TestCaseError::fail(e.to_string()))?,
        record
    );
    Ok(())
}

/// The parts of a URL on the allow-list below: origin, path and query pairs (never `token`).
fn allowed_url() -> impl Strategy<Value = Url> {
    let origin = prop_oneof![
        Just("https://app.example.com/auth"),
        Just("http://localhost:3000/cb"),
        Just("http://127.0.0.1/cb"),
        Just("http://[::1]:8080/cb"),
    ];
    // No segment of dots: the URL parser would resolve it and leave the allowed path.
    let segment = "[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,7}";
    let name = "[a-z_]{1,6}".prop_filter("not a token parameter", |name| name != "token" && name != "other");
    (origin, vec(segment, 0..3), vec((name, ".{0,12}"), 0..4), any::<bool>()).prop_map(
        |(origin, segments, pairs, bare_question_mark)| {
            let mut url = Url::parse(&format!("{origin}/{}", segments.join("/"))).unwrap();
            if !pairs.is_empty() {
                url.query_pairs_mut().extend_pairs(&pairs);
            } else if bare_question_mark {
                url.set_query(Some(""));
            }
            url
        },
    )
}

fn policy() -> RedirectPolicy {
    RedirectPolicy::new(
        [
            "https://app.example.com/auth",
            "http://localhost:*/",
            "http://127.0.0.1/",
            "http://[::1]:*/",
        ]
        .iter()
        .map(|pattern| AllowedRedirect::parse(pattern).unwrap())
        .collect(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A stamped secret's record key starts with its creation time, so keys sort by creation
    /// time whatever the random bodies; the secret is 51 characters and validates as a token.
    #[test]
    fn stamped_secrets_key_records_in_creation_order(
        earlier in 0..MAX_STAMP,
        gap in 1..=MAX_STAMP,
        first in any::<[u8; 32]>(),
        second in any::<[u8; 32]>(),
    ) {
        let later = earlier.saturating_add(gap).min(MAX_STAMP);
        prop_assume!(later > earlier);
        let (a, b) = (stamped_secret(earlier, &first), stamped_secret(later, &second));
        prop_assert_eq!(a.len(), STAMPED_SECRET_CHARS);
        prop_assert!(Digest32::of_secret(&a) < Digest32::of_secret(&b), "{} !< {}", a, b);
        let key = Digest32::of_secret(&a);
        prop_assert_eq!(&key.as_bytes()[..6], &earlier.to_be_bytes()[2..]);
        prop_assert_eq!(&a[8..], base64url(&first));
        prop_assert_eq!(validate::secret("token", &a, Reason::TOKEN_NOT_FOUND).unwrap(), a.as_str());
        // The plain (pre-stamp) form is the body alone, keyed by its SHA-256.
        let plain = &a[8..];
        prop_assert_eq!(plain.len(), PLAIN_SECRET_CHARS);
        prop_assert_eq!(Digest32::of_secret(plain), Digest32::of(plain));
    }

    /// Times outside the 48-bit range clamp to its ends instead of wrapping.
    #[test]
    fn stamps_clamp(millis in any::<i64>(), body in any::<[u8; 32]>()) {
        let clamped = millis.clamp(0, MAX_STAMP);
        prop_assert_eq!(stamped_secret(millis, &body), stamped_secret(clamped, &body));
    }

    /// The link keeps the redirect URL (and so its own query parameters, as written) and adds
    /// exactly one token parameter, which reads back as the token.
    #[test]
    fn link_with_token_keeps_the_query_and_adds_one_token(url in allowed_url(), token in ".{1,60}") {
        prop_assert!(policy().check("redirect_url", url.as_str(), "token").is_ok(), "{}", url);
        let link = link_with_token(url.as_str(), "token", &token);
        prop_assert!(link.starts_with(url.as_str()), "{} does not start with {}", link, url);
        let parsed = Url::parse(&link).unwrap();
        let own: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        let mut pairs: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
        prop_assert_eq!(pairs.iter().filter(|(name, _)| name == "token").count(), 1, "{}", link);
        prop_assert_eq!(pairs.pop(), Some(("token".to_string(), token.clone())));
        prop_assert_eq!(pairs, own);
        prop_assert_eq!(parsed.path(), url.path());
        // The link itself still passes the allow-list (under another token parameter).
        prop_assert!(policy().check("redirect_url", &link, "other").is_ok(), "{}", link);
    }

    /// Every valid verifier matches its own S256 challenge and no other verifier does.
    #[test]
    fn pkce_s256_matches_only_its_verifier(
        verifier in "[A-Za-z0-9._~-]{43,128}",
        other in "[A-Za-z0-9._~-]{43,128}",
    ) {
        prop_assert!(pkce::is_valid_verifier(&verifier));
        let challenge = pkce::s256(&verifier);
        prop_assert!(pkce::is_valid_challenge(&challenge), "{}", challenge);
        prop_assert!(pkce::matches(&challenge, &verifier));
        prop_assert_eq!(validate::code_challenge("code_challenge", &challenge).unwrap(), Some(challenge.clone()));
        prop_assert_eq!(validate::code_verifier("code_verifier", &verifier).unwrap(), Some(verifier.as_str()));
        if other != verifier {
            prop_assert!(!pkce::matches(&challenge, &other));
        }
    }

    /// A verifier with any character outside the RFC 7636 set is refused.
    #[test]
    fn pkce_refuses_other_characters(
        head in "[A-Za-z0-9._~-]{21,60}",
        bad in "[^A-Za-z0-9._~-]",
        tail in "[A-Za-z0-9._~-]{21,60}",
    ) {
        let verifier = format!("{head}{bad}{tail}");
        prop_assert!(!pkce::is_valid_verifier(&verifier));
        prop_assert!(validate::code_verifier("code_verifier", &verifier).is_err());
    }

    /// Every record the store keeps comes back from `encode` then `decode` as it went in.
    #[test]
    fn records_round_trip_through_the_codec(
        user in user(),
        link in link(),
        session in session(),
        attempt in attempt(),
        email in email_record(),
        code in auth_code(),
        keys in signing_keys(),
        tokens in any::<f64>().prop_filter("not NaN", |t| !t.is_nan()),
        updated_at in millis(),
        full_at in millis(),
    ) {
        round_trips(&user)?;
        round_trips(&link)?;
        round_trips(&session)?;
        round_trips(&attempt)?;
        round_trips(&email)?;
        round_trips(&code)?;
        round_trips(&keys)?;
        round_trips(&RateBucket { tokens, updated_at, full_at })?;
    }

    /// Records written as JSON by earlier versions still read (claims without fractions: JSON
    /// text need not keep a float's last bit).
    #[test]
    fn json_records_from_earlier_versions_still_read(
        user in user(),
        link in link(),
        email in email_record(),
        code in auth_code(),
        keys in signing_keys(),
        claims in claims(false),
    ) {
        reads_as_json(&user)?;
        reads_as_json(&link)?;
        reads_as_json(&email)?;
        reads_as_json(&code)?;
        reads_as_json(&keys)?;
        reads_as_json(&claims)?;
    }

    /// The mask shows the first character of the local part and the domain, nothing else: two
    /// addresses that share those mask alike.
    #[test]
    fn mask_email_reveals_only_the_first_character(
        first in "[^@]",
        rest in "[^@]{0,30}",
        other_rest in "[^@]{0,30}",
        domain in ".{0,30}",
    ) {
        let masked = validate::mask_email(&format!("{first}{rest}@{domain}"));
        prop_assert_eq!(&masked, &format!("{first}***@{domain}"));
        prop_assert_eq!(&masked, &validate::mask_email(&format!("{first}{other_rest}@{domain}")));
    }

    /// Text without `@` masks to `***` whatever it is.
    #[test]
    fn mask_email_without_at_reveals_nothing(text in "[^@]{0,40}") {
        prop_assert_eq!(validate::mask_email(&text), "***");
    }

    /// What `validate::email` accepts, it accepts again unchanged.
    #[test]
    fn email_validation_is_idempotent(
        local in "[A-Za-z0-9.+_-]{1,20}|\"[a-z ]{1,10}\"",
        domain in "[A-Za-z0-9-]{1,12}(\\.[A-Za-z0-9-]{1,8}){1,3}",
        padding in "[ \t]{0,2}",
    ) {
        let raw = format!("{padding}{local}@{domain}{padding}");
        if let Ok(canonical) = validate::email("email", &raw) {
            prop_assert!(canonical.len() <= validate::MAX_EMAIL_LENGTH);
            prop_assert_eq!(validate::email("email", &canonical).unwrap(), canonical);
        }
    }
}

fn record_seeds() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/record_decode")
}

/// The `record_decode` fuzz target's seeds are records as the store writes them (and as earlier
/// versions wrote them): each still decodes as the type its name starts with. They double as
/// fixtures of the on-disk format.
#[test]
fn committed_record_seeds_decode() {
    let mut checked = 0;
    for entry in std::fs::read_dir(record_seeds()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&path).unwrap();
        let kind = name.split('-').next().unwrap();
        let decoded = match kind {
            "user" => decode::<User>(&bytes).map(drop),
            "link" => decode::<Link>(&bytes).map(drop),
            "session" => decode::<Session>(&bytes).map(drop),
            "attempt" => decode::<Attempt>(&bytes).map(drop),
            "email" => decode::<Email>(&bytes).map(drop),
            "code" => decode::<AuthCode>(&bytes).map(drop),
            "keys" => decode::<Vec<SigningKeyRecord>>(&bytes).map(drop),
            "bucket" => decode::<RateBucket>(&bytes).map(drop),
            // Corrupt records: the target's error paths.
            "corrupt" => continue,
            other => panic!("{name}: unknown record kind {other:?}"),
        };
        decoded.unwrap_or_else(|error| panic!("{name}: {error}"));
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} record seeds");
}

/// The binary seeds of the fuzz corpus (records, signed JWTs, secrets) are what the current code
/// makes: a change to a record or token format fails here until the seeds are written again with
/// `LATCHKEY_WRITE_FUZZ_SEEDS=1 cargo test --test properties fuzz_seeds`.
#[test]
fn fuzz_seeds_are_what_the_current_code_makes() {
    use ed25519_dalek::SigningKey;
    use latchkey::jwt::{self, TokenType};

    let dir = record_seeds();
    let write = |name: &str, bytes: &[u8]| seed(dir.join(name), bytes);
    let claims: Map<String, Value> =
        serde_json::from_str(r#"{"amr":["email"],"n":-3,"f":1.5,"nested":{"ok":true,"none":null}}"#).unwrap();
    let user = User {
        id: "user-01a20ed6-5bc8-762d-96c5-f3500e22c870".into(),
        email: "Ada@Example.com".into(),
        first_name: "Ada".into(),
        last_name: "Lovelace".into(),
        status: UserStatus::Active,
        role: Role::Staff,
        mfa_enabled: false,
        email_verified: true,
        created_at: 1_795_545_258_952,
        updated_at: 1_795_545_279_176,
        last_login_at: Some(1_795_545_279_176),
        sessions_revoked_at: None,
        links: vec![LinkNote {
            token_digest: Digest32::of("token"),
            reuse_key: Some(Digest32::of("reuse")),
            expires_at: 1_795_552_462_253,
        }],
        locale: Some("de-CH".into()),
    };
    let request = OAuthRequest {
        client_id: "zapier".into(),
        redirect_uri: "https://zapier.com/cb".into(),
        scope: "openid email".into(),
        state: "s".into(),
        nonce: "n".into(),
        code_challenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into(),
    };
    let link = Link {
        token_digest: Digest32::of("token"),
        seed: [7; 32],
        kind: LinkKind::Login,
        user_id: user.id.clone(),
        redirect_url: "https://app.example.com/auth/callback?x=1".into(),
        created_at: 1_795_545_262_253,
        expires_at: 1_795_552_462_253,
        used_at: None,
        code_challenge: Some("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into()),
        reuse_key: Some(Digest32::of("reuse")),
        attempt: Some(Digest32::of("attempt")),
        oauth: Some(request.clone()),
        otp: Some(LinkOtp {
            digest: Digest32::of("otp"),
            digits: 6,
            failures: 2,
        }),
    };
    let session = Session {
        id: "session-01a20ed6-aac1-734f-a09a-382b9c108d6b".into(),
        user_id: user.id.clone(),
        token_digest: Digest32::of("session token"),
        created_at: 1,
        expires_at: 2,
        revoked_at: Some(3),
        link_kind: LinkKind::Enchanted,
        claims: claims.clone(),
        via_otp: true,
        client: Some(ClientInfo {
            ip_address: "203.0.113.7".into(),
            user_agent: "Mozilla/5.0 (iPhone; CPU iPhone OS 18_0 like Mac OS X)".into(),
        }),
        last_authenticated_at: Some(2),
    };
    let attempt = Attempt {
        ref_digest: Digest32::of("ref"),
        user_id: user.id.clone(),
        status: AttemptStatus::Verified,
        right_link: Digest32::of("right"),
        created_at: 1,
        expires_at: 2,
        verified_at: Some(2),
        claims,
        session_id: Some(session.id.clone()),
    };
    let email = Email {
        id: "email-01a20ed6-aac1-734f-a09a-382b9c108d6b".into(),
        recipient: "ada@example.com".into(),
        user_id: user.id.clone(),
        first_name: "Ada".into(),
        last_name: String::new(),
        kind: EmailKind::Enchanted,
        template_id: Some("welcome-v2".into()),
        links: vec![EmailLink {
            token_digest: Digest32::of("a"),
            number: Some(42),
            otp: true,
        }],
        link_expires_at: 9,
        status: EmailStatus::Queued,
        attempts: 1,
        last_error: Some("451 try again".into()),
        created_at: 1,
        next_attempt_at: 1,
        sent_at: None,
        locale: "fr-CA".into(),
    };
    let code = AuthCode {
        code_digest: Digest32::of("code"),
        user_id: user.id.clone(),
        request,
        created_at: 1,
        expires_at: 60_001,
        auth_time: 1,
        used_at: None,
        session_id: None,
    };
    let keys = vec![SigningKeyRecord {
        kid: "vDp3APMOea6K4_yR".into(),
        salt: [9; 32],
        created_at: 1,
        signs_from: 1,
        retire_at: 2,
    }];
    let bucket = RateBucket {
        tokens: 4.5,
        updated_at: 1_795_545_262_253,
        full_at: 1_795_545_292_253,
    };
    write("user-msgpack", &encode(&user));
    write("user-json", &serde_json::to_vec(&user).unwrap());
    // A user as written before `sessions_revoked_at`, `links` and `locale` (the array's last three
    // fields).
    let mut short = serde_json::to_value(&user).unwrap();
    short
        .as_object_mut()
        .unwrap()
        .retain(|k, _| k != "sessions_revoked_at" && k != "links" && k != "locale");
    write("user-before-links-json", &serde_json::to_vec(&short).unwrap());
    // In MessagePack: the array of 14 fields cut to 11 (`None` and `[]` are one byte each).
    let full = encode(&User {
        links: Vec::new(),
        sessions_revoked_at: None,
        locale: None,
        ..user.clone()
    });
    assert_eq!(full[0], 0x9e, "a fixarray of 14 fields");
    write(
        "user-before-links-msgpack",
        &[&[0x9b][..], &full[1..full.len() - 3]].concat(),
    );
    write("link-msgpack", &encode(&link));
    write("link-json", &serde_json::to_vec(&link).unwrap());
    write("session-msgpack", &encode(&session));
    write("attempt-msgpack", &encode(&attempt));
    write("email-msgpack", &encode(&email));
    write("code-msgpack", &encode(&code));
    write("keys-msgpack", &encode(&keys));
    write("bucket-msgpack", &encode(&bucket));
    write(
        "bucket-before-full-at-msgpack",
        &encode(&(bucket.tokens, bucket.updated_at)),
    );
    write("corrupt-truncated-user", &encode(&user)[..40]);
    write("corrupt-json", b"{\"id\":\"user-1\",\"email\":");

    let jwt_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/jwt_parse");
    // The fuzz target's key (fuzz_targets/jwt_parse.rs).
    let key = SigningKey::from_bytes(&[7; 32]);
    let kid = jwt::key_id(&key.verifying_key());
    let session_claims: Map<String, Value> = serde_json::from_str(
        r#"{"iss":"https://auth.example.com","sub":"user-01a20ed6-5bc8-762d-96c5-f3500e22c870","aud":"latchkey",
            "iat":1795545262,"exp":1795545562,"sid":"session-01a20ed6-aac1-734f-a09a-382b9c108d6b","amr":["email"]}"#,
    )
    .unwrap();
    let access_claims: Map<String, Value> = serde_json::from_str(
        r#"{"iss":"https://auth.example.com","sub":"user-1","aud":"zapier","client_id":"zapier",
            "scope":"openid email","iat":1795545262,"exp":1795548862,"jti":"at-1"}"#,
    )
    .unwrap();
    let id_claims: Map<String, Value> = serde_json::from_str(
        r#"{"iss":"https://auth.example.com","sub":"user-1","aud":"zapier","azp":"zapier","nonce":"n-0S6_WzA2Mj",
            "auth_time":1795545200,"email":"ada@example.com","email_verified":true}"#,
    )
    .unwrap();
    let session_jwt = jwt::sign(&key, &kid, TokenType::Session, &session_claims);
    seed(jwt_dir.join("session"), &session_jwt);
    seed(
        jwt_dir.join("access-token"),
        jwt::sign(&key, &kid, TokenType::AccessToken, &access_claims),
    );
    seed(
        jwt_dir.join("id-token"),
        jwt::sign(&key, &kid, TokenType::IdToken, &id_claims),
    );
    seed(
        jwt_dir.join("empty-claims"),
        jwt::sign(&key, &kid, TokenType::Session, &Map::new()),
    );
    // `alg: none`, and a header without `typ`, unsigned.
    let payload = session_jwt.split('.').nth(1).unwrap();
    let none = base64url(br#"{"alg":"none","typ":"JWT"}"#);
    seed(jwt_dir.join("alg-none"), format!("{none}.{payload}."));
    let untyped = base64url(format!(r#"{{"alg":"EdDSA","kid":"{kid}"}}"#).as_bytes());
    let signature = session_jwt.rsplit('.').next().unwrap();
    seed(jwt_dir.join("no-typ"), format!("{untyped}.{payload}.{signature}"));

    let secret_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/secret_token");
    let stamped = stamped_secret(1_795_545_262_253, &[0xa5; 32]);
    seed(secret_dir.join("stamped"), &stamped);
    seed(secret_dir.join("stamped-padded"), format!(" {stamped}\n"));
    seed(secret_dir.join("plain"), &stamped[8..]);
    seed(secret_dir.join("stamped-max"), stamped_secret(MAX_STAMP, &[0xff; 32]));
    seed(secret_dir.join("stamped-zero"), stamped_secret(0, &[0; 32]));
}

/// Writes a seed (with `LATCHKEY_WRITE_FUZZ_SEEDS` set), or checks that the committed one is
/// exactly `bytes`.
fn seed(path: PathBuf, bytes: impl AsRef<[u8]>) {
    let bytes = bytes.as_ref();
    if std::env::var_os("LATCHKEY_WRITE_FUZZ_SEEDS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        return;
    }
    let committed = std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    assert!(
        committed == bytes,
        "{} is not what the current code makes; write the seeds again (LATCHKEY_WRITE_FUZZ_SEEDS=1)",
        path.display()
    );
}

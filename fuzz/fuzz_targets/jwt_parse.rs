//! `jwt::verify` with a fixed key: on arbitrary text it never panics, and only a token that
//! `jwt::sign` itself makes from the claims verifies; a token signed here verifies to its claims, is
//! refused as another type or under another key, and once any byte of it is changed, never
//! verifies.
#![no_main]

use std::sync::LazyLock;

use arbitrary::{Arbitrary, Unstructured};
use ed25519_dalek::{SigningKey, VerifyingKey};
use latchkey::jwt::{self, JwtError, TokenType};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

/// The key of the committed seed tokens (`fuzz/corpus/jwt_parse`).
static KEY: LazyLock<SigningKey> = LazyLock::new(|| SigningKey::from_bytes(&[7; 32]));
static PUBLIC: LazyLock<VerifyingKey> = LazyLock::new(|| KEY.verifying_key());
static KID: LazyLock<String> = LazyLock::new(|| jwt::key_id(&PUBLIC));
static OTHER: LazyLock<VerifyingKey> = LazyLock::new(|| SigningKey::from_bytes(&[8; 32]).verifying_key());

const KINDS: [TokenType; 3] = [TokenType::Session, TokenType::IdToken, TokenType::AccessToken];
/// One kind per header `typ` (a session JWT and an ID token are both `JWT`): enough to try a
/// changed token under every type, at a third fewer signature checks.
const TYPS: [TokenType; 2] = [TokenType::Session, TokenType::AccessToken];

/// The one call of `jwt::verify`, under the fixed key.
fn verify(token: &str, kind: TokenType) -> Result<Map<String, Value>, JwtError> {
    jwt::verify(token, kind, |kid| (kid == KID.as_str()).then_some(&*PUBLIC))
}

#[derive(Arbitrary, Debug)]
enum Claim {
    Text(String),
    Integer(i64),
    Flag(bool),
    Null,
    List(Vec<String>),
    Object(Vec<(String, i64)>),
}

impl From<Claim> for Value {
    fn from(claim: Claim) -> Self {
        match claim {
            Claim::Text(text) => text.into(),
            Claim::Integer(n) => n.into(),
            Claim::Flag(b) => b.into(),
            Claim::Null => Value::Null,
            Claim::List(items) => items.into(),
            Claim::Object(fields) => Value::Object(fields.into_iter().map(|(k, v)| (k, v.into())).collect()),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Edit {
    Set { at: u16, byte: u8 },
    Insert { at: u16, byte: u8 },
    Remove { at: u16 },
    Truncate { at: u16 },
    Swap { a: u16, b: u16 },
}

fn apply(bytes: &mut Vec<u8>, edit: &Edit) {
    let len = bytes.len();
    let pick = |at: u16| if len == 0 { 0 } else { usize::from(at) % len };
    match *edit {
        Edit::Set { at, byte } if len > 0 => bytes[pick(at)] = byte,
        Edit::Insert { at, byte } => bytes.insert(usize::from(at) % (len + 1), byte),
        Edit::Remove { at } if len > 0 => {
            bytes.remove(pick(at));
        }
        Edit::Truncate { at } => bytes.truncate(usize::from(at) % (len + 1)),
        Edit::Swap { a, b } if len > 0 => bytes.swap(pick(a), pick(b)),
        _ => {}
    }
}

/// Arbitrary text: whatever verifies must be exactly what `sign` makes of its claims.
fn raw(data: &[u8]) {
    let text = match std::str::from_utf8(data) {
        Ok(text) => text,
        Err(error) => std::str::from_utf8(&data[..error.valid_up_to()]).unwrap(),
    };
    for kind in TYPS {
        if let Ok(claims) = verify(text, kind) {
            assert_eq!(
                jwt::sign(&KEY, &KID, kind, &claims),
                text,
                "{text:?} verified as {kind:?}, yet it is not what sign makes of its claims"
            );
        }
    }
}

/// A token signed here, then changed.
fn signed(data: &[u8]) -> arbitrary::Result<()> {
    let mut u = Unstructured::new(data);
    let kind = KINDS[usize::from(u8::arbitrary(&mut u)?) % KINDS.len()];
    let claims: Map<String, Value> = Vec::<(String, Claim)>::arbitrary(&mut u)?
        .into_iter()
        .take(16)
        .map(|(name, claim)| (name, claim.into()))
        .collect();
    let token = jwt::sign(&KEY, &KID, kind, &claims);
    assert_eq!(verify(&token, kind), Ok(claims.clone()), "{token}");
    for other in KINDS {
        if other.header_typ() != kind.header_typ() {
            assert_eq!(verify(&token, other), Err(JwtError::WrongType), "{token} as {other:?}");
        }
    }
    assert_eq!(
        jwt::verify(&token, kind, |_| None),
        Err(JwtError::UnknownKey),
        "{token}"
    );
    assert_eq!(
        jwt::verify(&token, kind, |_| Some(&*OTHER)),
        Err(JwtError::BadSignature),
        "{token} under another key"
    );
    let edits: Vec<Edit> = u.arbitrary()?;
    let mut bytes = token.clone().into_bytes();
    for edit in edits.iter().take(8) {
        apply(&mut bytes, edit);
    }
    if bytes == token.as_bytes() {
        return Ok(());
    }
    let Ok(changed) = String::from_utf8(bytes) else {
        return Ok(());
    };
    for kind in TYPS {
        if let Ok(claims) = verify(&changed, kind) {
            panic!("{changed:?}, changed from {token:?} by {edits:?}, verified as {kind:?}: {claims:?}");
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    raw(data);
    let _ = signed(data);
});

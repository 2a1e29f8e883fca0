//! Languages of emails: BCP 47 tags as requests, users and config give them, and the fallback
//! chain that picks a template for one (`de-CH` → `de` → the default).

use super::error::{Error, Reason, Result};

/// The longest tag accepted. RFC 5646 §4.4.1 asks for room for 35 characters without
/// extensions; this leaves room for a few extension subtags too.
pub const MAX_LOCALE_LENGTH: usize = 64;

/// A well-formed BCP 47 tag in its canonical case (`de-CH`, `zh-Hant-TW`), or `None` for an
/// empty value. Well-formed is enough: a language no template knows falls back, it does not fail.
pub fn tag(field: &'static str, raw: &str) -> Result<Option<String>> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    let invalid = |why: &str| Error::field(Reason::INVALID_LOCALE, field, format!("{field} {why}"));
    if raw.len() > MAX_LOCALE_LENGTH {
        return Err(invalid("has at most 64 characters"));
    }
    if raw.contains('_') {
        return Err(invalid("is a BCP 47 language tag with hyphens, e.g. de-CH, not de_CH"));
    }
    let parsed =
        parse(raw).ok_or_else(|| invalid("is not a BCP 47 language tag, e.g. en, de-CH, pt-BR or zh-Hant-TW"))?;
    if parsed.language() == "und" {
        return Err(invalid("names no language (und)"));
    }
    Ok(Some(parsed.canonical()))
}

/// The tags to try for `tag`, most specific first: its language, script, region and variants
/// (extensions and private use dropped), then one subtag fewer each time (`zh-Hant-TW`,
/// `zh-Hant`, `zh`). Lower case, as template folders are matched. A malformed tag yields nothing.
pub fn fallbacks(tag: &str) -> Vec<String> {
    let Some(parsed) = parse(tag) else {
        return Vec::new();
    };
    let mut chain: Vec<String> = (1..=parsed.base)
        .rev()
        .map(|n| parsed.subtags[..n].join("-").to_ascii_lowercase())
        .collect();
    chain.dedup();
    chain
}

/// A tag split into subtags: the first `base` are language, extended language, script, region
/// and variants; the rest extensions and private use.
struct Parsed<'a> {
    subtags: Vec<&'a str>,
    base: usize,
}

impl Parsed<'_> {
    fn language(&self) -> String {
        self.subtags[0].to_ascii_lowercase()
    }

    /// RFC 5646 §2.1.1: lower case, but a script in title case and a region in upper case (only
    /// in the base, before any singleton).
    fn canonical(&self) -> String {
        self.subtags
            .iter()
            .enumerate()
            .map(|(i, subtag)| {
                let lower = subtag.to_ascii_lowercase();
                if i == 0 || i >= self.base {
                    lower
                } else if subtag.len() == 4 && subtag.bytes().all(|b| b.is_ascii_alphabetic()) {
                    let mut title = lower;
                    title[..1].make_ascii_uppercase();
                    title
                } else if subtag.len() == 2 && subtag.bytes().all(|b| b.is_ascii_alphabetic()) {
                    lower.to_ascii_uppercase()
                } else {
                    lower
                }
            })
            .collect::<Vec<_>>()
            .join("-")
    }
}

/// RFC 5646's `langtag` (well-formed, not checked against the registry); `None` if malformed.
/// Private-use-only tags and the grandfathered irregular ones (`i-klingon`) are not languages
/// for an email.
fn parse(raw: &str) -> Option<Parsed<'_>> {
    let subtags: Vec<&str> = raw.split('-').collect();
    let alpha =
        |s: &str, min: usize, max: usize| (min..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphabetic());
    let alnum = |s: &str, min: usize, max: usize| {
        (min..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
    };
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    let mut at = 0;
    let next = |at: usize| subtags.get(at).copied();
    // language: 2-3 letters (ISO 639) with up to three extended languages. RFC 5646 also reserves
    // 4-8 letter languages, but none is registered: `german` or `english` is a mistake.
    if !next(at).is_some_and(|s| alpha(s, 2, 3)) {
        return None;
    }
    at += 1;
    let mut extlangs = 0;
    while extlangs < 3 && next(at).is_some_and(|s| alpha(s, 3, 3)) {
        at += 1;
        extlangs += 1;
    }
    if next(at).is_some_and(|s| alpha(s, 4, 4)) {
        at += 1;
    }
    if next(at).is_some_and(|s| alpha(s, 2, 2) || digits(s, 3)) {
        at += 1;
    }
    let mut variants: Vec<String> = Vec::new();
    while let Some(s) = next(at) {
        let variant = alnum(s, 5, 8) || (s.len() == 4 && s.as_bytes()[0].is_ascii_digit() && alnum(s, 4, 4));
        if !variant {
            break;
        }
        let lower = s.to_ascii_lowercase();
        if variants.contains(&lower) {
            return None; // RFC 5646 §2.2.5: a variant appears once
        }
        variants.push(lower);
        at += 1;
    }
    let base = at;
    let mut singletons: Vec<u8> = Vec::new();
    while let Some(s) = next(at) {
        if !alnum(s, 1, 1) {
            return None;
        }
        let singleton = s.as_bytes()[0].to_ascii_lowercase();
        at += 1;
        let (min, max) = if singleton == b'x' { (1, 8) } else { (2, 8) };
        let start = at;
        while next(at).is_some_and(|s| alnum(s, min, max) && (singleton == b'x' || s.len() > 1)) {
            at += 1;
        }
        if at == start || (singleton != b'x' && singletons.contains(&singleton)) {
            return None;
        }
        singletons.push(singleton);
        if singleton == b'x' {
            break;
        }
    }
    (at == subtags.len()).then_some(Parsed { subtags, base })
}

/// The language an email goes out in: the request's, else the user's, else the default.
pub fn resolve(requested: Option<&str>, user: Option<&str>, default: &str) -> String {
    requested.or(user).unwrap_or(default).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_tags_are_kept_in_canonical_case() {
        for (raw, canonical) in [
            ("de", "de"),
            ("DE-ch", "de-CH"),
            (" pt-br ", "pt-BR"),
            ("zh-hant-tw", "zh-Hant-TW"),
            ("es-419", "es-419"),
            ("sl-rozaj-biske", "sl-rozaj-biske"),
            ("de-DE-u-co-phonebk", "de-DE-u-co-phonebk"),
            ("xx", "xx"),
        ] {
            assert_eq!(tag("locale", raw).unwrap().as_deref(), Some(canonical), "{raw}");
        }
        assert_eq!(tag("locale", "  ").unwrap(), None);
    }

    #[test]
    fn malformed_tags_are_refused() {
        for raw in [
            "de_CH",
            "german",
            "d",
            "de-",
            "-de",
            "de--CH",
            "de CH",
            "123",
            "de-CH-x",
            "de-CH-u",
            "de-1996-1996",
            "x-private",
            "i-klingon",
            "und",
            "é",
            "de\u{0}",
            &"a".repeat(65),
            &format!("de{}", "-abcdefgh".repeat(7)),
        ] {
            let error = tag("locale", raw).expect_err(raw);
            assert_eq!(error.reason(), Reason::INVALID_LOCALE, "{raw}");
        }
    }

    #[test]
    fn fallbacks_drop_one_subtag_at_a_time() {
        assert_eq!(fallbacks("zh-Hant-TW"), ["zh-hant-tw", "zh-hant", "zh"]);
        assert_eq!(fallbacks("de-CH"), ["de-ch", "de"]);
        assert_eq!(fallbacks("de-DE-u-co-phonebk"), ["de-de", "de"]);
        assert_eq!(fallbacks("fr"), ["fr"]);
        assert!(fallbacks("").is_empty());
    }

    #[test]
    fn the_request_beats_the_user_beats_the_default() {
        assert_eq!(resolve(Some("de-AT"), Some("fr"), "en"), "de-AT");
        assert_eq!(resolve(None, Some("fr"), "en"), "fr");
        assert_eq!(resolve(None, None, "en"), "en");
    }
}

//! Page tokens of the list methods (ListUsers, ListUserSessions): the last id a page returned,
//! bound to what was listed (the filter, the user), so a token from another listing is refused.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::error::{Error, Reason, Result};

/// `scope` names the listing; `last_id` is where the next page starts (exclusive).
pub fn encode(scope: &str, last_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("v1|{scope}|{last_id}"))
}

/// The last id of a token made for `scope`; `None` for the empty token (the first page).
/// INVALID_PAGE_TOKEN for anything else, `listing` saying what the token must be for.
pub fn decode(token: &str, scope: &str, listing: &str) -> Result<Option<String>> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || {
        Error::field(
            Reason::INVALID_PAGE_TOKEN,
            "page_token",
            format!("page_token is not one this server issued for {listing}"),
        )
    };
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let last_id = text.strip_prefix(&format!("v1|{scope}|")).ok_or_else(invalid)?;
    if last_id.is_empty() {
        return Err(invalid());
    }
    Ok(Some(last_id.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_bound_to_their_scope() {
        let token = encode("Some(Active)", "user-1");
        assert_eq!(decode(&token, "Some(Active)", "it").unwrap().as_deref(), Some("user-1"));
        assert_eq!(decode("", "None", "it").unwrap(), None);
        for (token, scope) in [(token.as_str(), "None"), ("garbage!", "None"), ("djF8Tm9uZXw", "None")] {
            assert_eq!(
                decode(token, scope, "it").unwrap_err().reason(),
                Reason::INVALID_PAGE_TOKEN,
                "{token}"
            );
        }
    }
}

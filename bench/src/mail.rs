//! The file transport's `.eml` files: counting them (delivered emails) and reading the enchanted
//! links (the link whose number the SendEnchantedLink response named) and one-time codes out of them.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::mime::{header, part};

/// The email id header the mail worker puts on every message.
const EMAIL_ID_HEADER: &str = "X-Latchkey-Email-Id";

pub fn count_eml(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "eml"))
        .count()
}

/// Reads new `.eml` files and remembers what it has read.
#[derive(Default)]
pub struct Mailbox {
    seen: HashSet<PathBuf>,
}

impl Mailbox {
    /// For each email id in `wanted` found in a file not read before, the one-time code it shows
    /// (the digits on the first non-empty line after the text part's "this code" sentence).
    pub fn otp_codes(&mut self, dir: &Path, wanted: &HashSet<String>) -> HashMap<String, String> {
        let mut found = HashMap::new();
        for (email_id, text) in self.new_messages(dir) {
            if !wanted.contains(&email_id) {
                continue;
            }
            let code = part(&text, "text/plain").and_then(|body| {
                let mut lines = body.lines().skip_while(|line| !line.contains("this code"));
                lines.next()?;
                let code = lines.map(str::trim).find(|line| !line.is_empty())?;
                code.bytes().all(|b| b.is_ascii_digit()).then(|| code.to_string())
            });
            if let Some(code) = code {
                found.insert(email_id, code);
            }
        }
        found
    }

    /// The email id and text of every `.eml` file not read before (one being written is read next
    /// time).
    fn new_messages(&mut self, dir: &Path) -> Vec<(String, String)> {
        let mut messages = Vec::new();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return messages;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|ext| ext != "eml") || self.seen.contains(&path) {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let Some(email_id) = header(&text, EMAIL_ID_HEADER) else {
                continue;
            };
            self.seen.insert(path);
            messages.push((email_id, text));
        }
        messages
    }

    /// For each email id in `wanted` (email id → the right link number) found in a file not read
    /// before, the token (`t`) of the link with that number.
    pub fn enchanted_tokens(&mut self, dir: &Path, wanted: &HashMap<String, String>) -> HashMap<String, String> {
        let mut found = HashMap::new();
        for (email_id, text) in self.new_messages(dir) {
            let Some(number) = wanted.get(&email_id) else {
                continue;
            };
            let Some(body) = part(&text, "text/plain") else {
                continue;
            };
            let prefix = format!("{number}: ");
            let token = body
                .lines()
                .find_map(|line| line.trim().strip_prefix(&prefix))
                .and_then(|url| crate::api::query_value(url, "t"));
            if let Some(token) = token {
                found.insert(email_id, token);
            }
        }
        found
    }
}

//! Reading the parts of a multipart email: the test suites and the benchmark both take tokens out
//! of the messages latchkey sends (the benchmark includes this file by path).

use base64::Engine;

/// A header's value (first occurrence, unfolded).
pub fn header(message: &str, name: &str) -> Option<String> {
    let message = message.replace("\r\n", "\n");
    let head = message.split("\n\n").next().unwrap_or(&message);
    let unfolded = head.replace("\n ", " ").replace("\n\t", " ");
    unfolded.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_string())
    })
}

/// The decoded body of the first part with this content type.
pub fn part(message: &str, content_type: &str) -> Option<String> {
    let message = message.replace("\r\n", "\n");
    let boundary = header(&message, "Content-Type")?
        .split("boundary=")
        .nth(1)?
        .trim_matches('"')
        .to_string();
    for chunk in message.split(&format!("--{boundary}")) {
        let Some((head, body)) = chunk.trim_start_matches('\n').split_once("\n\n") else {
            continue;
        };
        let head = format!("{head}\n\n");
        if !header(&head, "Content-Type").is_some_and(|kind| kind.starts_with(content_type)) {
            continue;
        }
        let encoding = header(&head, "Content-Transfer-Encoding")
            .unwrap_or_default()
            .to_lowercase();
        return match encoding.as_str() {
            "base64" => {
                let joined: String = body.split_whitespace().collect();
                let bytes = base64::engine::general_purpose::STANDARD.decode(joined).ok()?;
                String::from_utf8(bytes).ok()
            }
            "quoted-printable" => Some(decode_quoted_printable(body)),
            _ => Some(body.to_string()),
        };
    }
    None
}

pub fn decode_quoted_printable(body: &str) -> String {
    let joined = body.replace("=\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'='
            && i + 2 < bytes.len()
            && let Some(byte) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

//! Mail in tests: a real SMTP server (aiosmtpd, driven by `tests/support/smtp_server.py`), test
//! certificates for STARTTLS, reading `.eml` files, and waiting for a condition.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Python that has aiosmtpd: `SMTP_TEST_PYTHON` (set by ./scripts/test), else the
/// repository's `.venv`. Missing is a failure, never a skip.
pub fn python() -> PathBuf {
    let python = std::env::var_os("SMTP_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    let ok = Command::new(&python)
        .args(["-c", "import aiosmtpd"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} cannot import aiosmtpd: run ./scripts/test, which installs it",
        python.display()
    );
    python
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[derive(Clone, Default)]
pub struct SmtpOptions {
    /// (certificate chain, key) for STARTTLS, or for TLS from the first byte with `implicit_tls`.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub implicit_tls: bool,
    pub auth: Option<(String, String)>,
    /// Answer the first N messages with `fail_code` (-1: all of them).
    pub fail_first: i32,
    pub fail_code: String,
    /// Never answer the first N messages' DATA (see `SmtpServer::stalled`).
    pub stall_first: u32,
}

pub struct SmtpServer {
    child: Child,
    pub port: u16,
    pub maildir: PathBuf,
}

impl SmtpServer {
    pub fn start(maildir: &Path, port: u16, options: &SmtpOptions) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtp_server.py");
        let mut command = Command::new(python());
        command
            .arg(script)
            .args(["--port", &port.to_string(), "--maildir"])
            .arg(maildir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some((cert, key)) = &options.tls {
            command.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
            if options.implicit_tls {
                command.arg("--implicit-tls");
            }
        }
        if let Some((user, password)) = &options.auth {
            command.args(["--auth", &format!("{user}:{password}")]);
        }
        if !options.fail_code.is_empty() {
            command.args([
                "--fail-first",
                &options.fail_first.to_string(),
                "--fail-code",
                &options.fail_code,
            ]);
        }
        if options.stall_first > 0 {
            command.args(["--stall-first", &options.stall_first.to_string()]);
        }
        let mut child = command.spawn().expect("the SMTP server starts");
        let mut ready = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        assert_eq!(ready.trim(), "READY", "the SMTP server did not start");
        Self {
            child,
            port,
            maildir: maildir.to_path_buf(),
        }
    }

    pub fn messages(&self) -> Vec<String> {
        eml_files(&self.maildir)
    }

    /// How many messages the server holds unanswered (`stall_first`).
    pub fn stalled(&self) -> usize {
        std::fs::read_dir(&self.maildir)
            .unwrap()
            .filter(|entry| {
                let name = entry.as_ref().unwrap().file_name();
                name.to_string_lossy().starts_with("stalled-")
            })
            .count()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// A CA and a leaf certificate for `localhost`/127.0.0.1 signed by it, made with openssl.
/// Returns (ca.pem, leaf chain, leaf key).
pub fn test_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    test_certificates_for(dir, "DNS:localhost,IP:127.0.0.1")
}

/// As `test_certificates`, with the leaf valid for the names `subject_alt_names` (openssl's form).
pub fn test_certificates_for(dir: &Path, subject_alt_names: &str) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=latchkey test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("leaf.ext"),
        format!("subjectAltName={subject_alt_names}\nbasicConstraints=CA:FALSE\n"),
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
    ]);
    (dir.join("ca.pem"), dir.join("leaf.pem"), dir.join("leaf.key"))
}

/// Every `.eml` file in `dir`, sorted by name.
pub fn eml_files(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "eml"))
        .collect();
    paths.sort();
    paths.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect()
}

/// Polls `condition` until it holds; fails the test after 30 s. For effects that happen in
/// another task or process (an email arriving), where there is nothing to await directly.
pub async fn eventually<T>(what: &str, mut condition: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = condition().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A header's value with its RFC 2047 encoded words (`=?utf-8?b?...?=`, `=?utf-8?q?...?=`)
/// decoded, as a mail client shows it: a subject that is not ASCII arrives encoded.
pub fn decoded_header(message: &str, name: &str) -> Option<String> {
    let raw = super::mime::header(message, name)?;
    let mut out = String::new();
    let mut previous_encoded = false;
    for (index, word) in raw.split(' ').enumerate() {
        let decoded = decode_word(word);
        // Whitespace between two encoded words is not part of the text (RFC 2047 §6.2).
        if index > 0 && !(previous_encoded && decoded.is_some()) {
            out.push(' ');
        }
        previous_encoded = decoded.is_some();
        out.push_str(decoded.as_deref().unwrap_or(word));
    }
    Some(out)
}

fn decode_word(word: &str) -> Option<String> {
    let inner = word.strip_prefix("=?")?.strip_suffix("?=")?;
    let mut pieces = inner.splitn(3, '?');
    let charset = pieces.next()?;
    let encoding = pieces.next()?;
    let text = pieces.next()?;
    if !charset.eq_ignore_ascii_case("utf-8") {
        return None;
    }
    let bytes = match encoding {
        "b" | "B" => base64::Engine::decode(&base64::engine::general_purpose::STANDARD, text).ok()?,
        "q" | "Q" => super::mime::decode_quoted_printable(&text.replace('_', " ")).into_bytes(),
        _ => return None,
    };
    String::from_utf8(bytes).ok()
}

/// The decoded body of the part with this content type (`text/plain` or `text/html`).
pub fn part(message: &str, content_type: &str) -> String {
    super::mime::part(message, content_type).unwrap_or_else(|| panic!("no {content_type} part in:\n{message}"))
}

/// The value of the first `name=` query parameter of a URL in `text` (a token is 43 characters).
pub fn token_in(text: &str, name: &str) -> String {
    let marker = format!("{name}=");
    let start = text.find(&marker).unwrap_or_else(|| panic!("no {marker} in:\n{text}")) + marker.len();
    text[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

/// The one-time code an email shows: the digits after the text part's "this code" sentence, also
/// in the HTML part. None when the email has no code.
pub fn otp_in(message: &str) -> Option<String> {
    let text = part(message, "text/plain");
    let html = part(message, "text/html");
    let mut lines = text.lines().skip_while(|line| !line.contains("this code"));
    lines.next()?;
    let code = lines.map(str::trim).find(|line| !line.is_empty())?.to_string();
    assert!(code.bytes().all(|b| b.is_ascii_digit()), "a code of digits: {code:?}");
    assert!(html.contains(&code), "the HTML part shows the code too");
    Some(code)
}

/// The three (number, token) pairs of an enchanted email, read from its text part and checked
/// against the HTML part.
pub fn numbered_links(message: &str) -> Vec<(String, String)> {
    let text = part(message, "text/plain");
    let html = part(message, "text/html");
    let links: Vec<(String, String)> = text
        .lines()
        .filter_map(|line| {
            let (number, url) = line.split_once(": ")?;
            (number.len() == 2 && number.bytes().all(|b| b.is_ascii_digit()))
                .then(|| (number.to_string(), token_in(url, "t")))
        })
        .collect();
    assert_eq!(links.len(), 3, "three numbered links in:\n{text}");
    for (number, token) in &links {
        assert!(html.contains(token.as_str()), "the HTML part has link {number}");
        assert!(
            html.contains(&format!(">{number}<")),
            "the HTML part shows number {number}"
        );
    }
    links
}

/// The environment that sends the binary's mail to the plaintext SMTP server on `port`, giving a
/// send up to a minute and claims a lease of `lease_seconds`.
pub fn smtp_env<'a>(port: &'a str, lease_seconds: &'a str) -> [(&'static str, &'a str); 6] {
    [
        ("LATCHKEY_MAIL__TRANSPORT", "smtp"),
        ("LATCHKEY_MAIL__SMTP__HOST", "127.0.0.1"),
        ("LATCHKEY_MAIL__SMTP__PORT", port),
        ("LATCHKEY_MAIL__SMTP__TLS", "none"),
        ("LATCHKEY_MAIL__SMTP__TIMEOUT_SECONDS", "60"),
        ("LATCHKEY_MAIL__LEASE_SECONDS", lease_seconds),
    ]
}

/// An SMTP server that holds the first message unanswered (see `SmtpOptions::stall_first`).
pub fn stalling_smtp_server(maildir: &Path, port: u16) -> SmtpServer {
    SmtpServer::start(
        maildir,
        port,
        &SmtpOptions {
            stall_first: 1,
            ..SmtpOptions::default()
        },
    )
}

/// GetEmailStatus of `email_id`, asked of the server at `addr`.
pub async fn email_status(addr: std::net::SocketAddr, email_id: &str) -> super::pb::GetEmailStatusResponse {
    let mut emails = super::pb::emails_client::EmailsClient::new(super::connect(addr).await);
    let request = super::pb::GetEmailStatusRequest {
        email_id: email_id.into(),
    };
    emails.get_email_status(request).await.unwrap().into_inner()
}

/// Waits until `email_id` is SENT, asking the server at `addr`; its status then.
pub async fn sent(addr: std::net::SocketAddr, email_id: &str) -> super::pb::GetEmailStatusResponse {
    use super::pb::get_email_status_response::Status;
    eventually("the email to be sent", async || {
        let status = email_status(addr, email_id).await;
        (status.status() == Status::Sent).then_some(status)
    })
    .await
}

/// Enchanted links through the API and the development mail folder.
impl super::TestApp {
    pub async fn send_enchanted(
        &self,
        request: super::pb::SendEnchantedLinkRequest,
    ) -> Result<super::pb::SendEnchantedLinkResponse, tonic::Status> {
        self.passwordless()
            .send_enchanted_link(request)
            .await
            .map(|r| r.into_inner())
    }

    pub async fn poll(
        &self,
        pending_ref: &str,
        wait_seconds: u32,
    ) -> Result<super::pb::PollSessionResponse, tonic::Status> {
        let request = super::pb::PollSessionRequest {
            pending_ref: pending_ref.into(),
            wait_seconds,
            client: None,
        };
        self.passwordless().poll_session(request).await.map(|r| r.into_inner())
    }

    /// The email with this id (SendEnchantedLink's, or any other), once the worker has written it.
    pub async fn enchanted_email(&self, email_id: &str) -> String {
        let dir = self.dir.path().join("data/mail");
        eventually("the enchanted email", async || {
            eml_files(&dir)
                .into_iter()
                .find(|m| super::mime::header(m, "X-Latchkey-Email-Id").as_deref() == Some(email_id))
        })
        .await
    }

    /// Sends an enchanted link and returns the response with the (right, wrong ones) tokens.
    pub async fn enchanted(
        &self,
        request: super::pb::SendEnchantedLinkRequest,
    ) -> (super::pb::SendEnchantedLinkResponse, String, Vec<String>) {
        let sent = self.send_enchanted(request).await.unwrap();
        let message = self.enchanted_email(&sent.email_id).await;
        let links = numbered_links(&message);
        let right = links
            .iter()
            .find(|(n, _)| *n == sent.link_id)
            .expect("the right number is in the email")
            .1
            .clone();
        let wrong = links
            .into_iter()
            .filter(|(n, _)| *n != sent.link_id)
            .map(|(_, t)| t)
            .collect();
        (sent, right, wrong)
    }
}

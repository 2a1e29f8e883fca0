//! An SMTP sink for `mail_latency`: accepts every message on a loopback port and notes when each
//! arrived, by the email id header the mail worker sets. It does nothing else, so that the time
//! measured is latchkey's and the sink is never the bottleneck (a Python server would take a core
//! of the two at a few thousand messages a second).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const EMAIL_ID_HEADER: &str = "x-latchkey-email-id:";

/// Email id → when its message's DATA ended.
pub type Arrivals = Arc<Mutex<HashMap<String, SystemTime>>>;

pub struct SmtpSink {
    pub port: u16,
    pub arrivals: Arrivals,
    accept: tokio::task::JoinHandle<()>,
}

impl SmtpSink {
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let arrivals = Arrivals::default();
        let accept = {
            let arrivals = arrivals.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(conversation(stream, arrivals.clone()));
                }
            })
        };
        Ok(Self { port, arrivals, accept })
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// One client's conversation: every command is accepted; a message's end notes its arrival.
async fn conversation(stream: TcpStream, arrivals: Arrivals) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    if write.write_all(b"220 sink ESMTP\r\n").await.is_err() {
        return;
    }
    let mut line = String::new();
    loop {
        line.clear();
        match lines.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
        let answer: &[u8] = match verb.as_str() {
            "EHLO" => b"250-sink\r\n250 8BITMIME\r\n",
            "DATA" => {
                if write.write_all(b"354 go on\r\n").await.is_err() {
                    return;
                }
                let Some(email_id) = read_message(&mut lines).await else {
                    return;
                };
                if let Some(id) = email_id {
                    arrivals.lock().expect("arrivals lock").insert(id, SystemTime::now());
                }
                b"250 queued\r\n"
            }
            "QUIT" => {
                let _ = write.write_all(b"221 bye\r\n").await;
                return;
            }
            _ => b"250 ok\r\n",
        };
        if write.write_all(answer).await.is_err() {
            return;
        }
    }
}

/// Reads a message up to its lone "." line; `None` if the connection ended first, else the email
/// id header's value if it had one.
async fn read_message(lines: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Option<Option<String>> {
    let mut email_id = None;
    let mut in_headers = true;
    let mut line = String::new();
    loop {
        line.clear();
        match lines.read_line(&mut line).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        let text = line.trim_end_matches(['\r', '\n']);
        if text == "." {
            return Some(email_id);
        }
        if in_headers {
            if text.is_empty() {
                in_headers = false;
            } else if text.len() > EMAIL_ID_HEADER.len()
                && text[..EMAIL_ID_HEADER.len()].eq_ignore_ascii_case(EMAIL_ID_HEADER)
            {
                email_id = Some(text[EMAIL_ID_HEADER.len()..].trim().to_string());
            }
        }
    }
}

//! The client side: generated latchkey.v1 stubs, HTTP/2 connections to the server, and requests
//! carrying the API key.

use std::time::Duration;

use tonic::Request;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Channel, Endpoint};

#[allow(clippy::all)]
pub mod pb {
    tonic::include_proto!("latchkey.v1");
}

pub use pb::passwordless_client::PasswordlessClient;
pub use pb::sessions_client::SessionsClient;

/// Every call gives up after this long, so a stalled server shows up as DEADLINE_EXCEEDED instead
/// of a hung benchmark. Long polls wait at most 30 s.
const CALL_TIMEOUT: Duration = Duration::from_secs(45);

/// A set of HTTP/2 connections (one `Channel` each: `Endpoint::connect` opens its own TCP
/// connection), spread round-robin over the servers (replicas), and the API key.
#[derive(Clone)]
pub struct Api {
    /// Every replica's URL; connection `i` goes to `urls[i % urls.len()]`.
    pub urls: Vec<String>,
    channels: Vec<Channel>,
    authorization: AsciiMetadataValue,
}

impl Api {
    pub async fn connect(urls: &[String], api_key: &str, connections: usize) -> Result<Self, String> {
        if urls.is_empty() {
            return Err("no server to connect to".into());
        }
        let mut channels = Vec::with_capacity(connections);
        for i in 0..connections {
            channels.push(connect_one(&urls[i % urls.len()]).await?);
        }
        let authorization = MetadataValue::try_from(format!("Bearer {api_key}")).map_err(|e| e.to_string())?;
        Ok(Api {
            urls: urls.to_vec(),
            channels,
            authorization,
        })
    }

    pub fn connections(&self) -> usize {
        self.channels.len()
    }

    pub fn channel(&self, index: usize) -> Channel {
        self.channels[index % self.channels.len()].clone()
    }

    /// A request with the API key.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.authorization.clone());
        request
    }

    pub fn authorization_header(&self) -> String {
        format!("authorization: {}", self.authorization.to_str().unwrap_or_default())
    }
}

async fn connect_one(url: &str) -> Result<Channel, String> {
    Endpoint::from_shared(url.to_string())
        .map_err(|e| e.to_string())?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .timeout(CALL_TIMEOUT)
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))
}

/// The value of the first `name=` query parameter in `text` (tokens are base64url).
pub fn query_value(text: &str, name: &str) -> Option<String> {
    let marker = format!("{name}=");
    let mut from = 0;
    while let Some(found) = text[from..].find(&marker) {
        let at = from + found;
        let before = text[..at].chars().last();
        if matches!(before, Some('?') | Some('&')) {
            let value: String = text[at + marker.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            return Some(value);
        }
        from = at + marker.len();
    }
    None
}

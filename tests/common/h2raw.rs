//! A raw HTTP/2 client that does what well-behaved clients never do (ignore the server's
//! SETTINGS, never acknowledge anything, stop half-way through a preface), so tests can check what
//! the server refuses and closes.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const GOAWAY: u8 = 0x7;
/// RST_STREAM's error code for a stream over the peer's concurrency limit (RFC 9113 §5.1.2).
pub const REFUSED_STREAM: u32 = 0x7;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;

#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream_id: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM frame.
    pub fn error_code(&self) -> u32 {
        u32::from_be_bytes(self.payload[..4].try_into().unwrap())
    }

    /// SETTINGS_MAX_CONCURRENT_STREAMS, if this SETTINGS frame carries it.
    pub fn max_concurrent_streams(&self) -> Option<u32> {
        self.payload
            .chunks_exact(6)
            .find(|setting| u16::from_be_bytes([setting[0], setting[1]]) == SETTINGS_MAX_CONCURRENT_STREAMS)
            .map(|setting| u32::from_be_bytes(setting[2..6].try_into().unwrap()))
    }
}

pub struct RawH2 {
    pub stream: TcpStream,
}

impl RawH2 {
    /// A TCP connection that has sent nothing yet.
    pub async fn tcp(addr: SocketAddr) -> Self {
        Self {
            stream: TcpStream::connect(addr).await.expect("connects"),
        }
    }

    /// The client preface and an empty SETTINGS frame.
    pub async fn connect(addr: SocketAddr) -> Self {
        let mut raw = Self::tcp(addr).await;
        raw.send(PREFACE).await;
        raw.frame(SETTINGS, 0, 0, &[]).await;
        raw
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("the server reads");
    }

    pub async fn frame(&mut self, kind: u8, flags: u8, stream_id: u32, payload: &[u8]) {
        let mut frame = Vec::with_capacity(9 + payload.len());
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        frame.push(kind);
        frame.push(flags);
        frame.extend_from_slice(&stream_id.to_be_bytes());
        frame.extend_from_slice(payload);
        self.send(&frame).await;
    }

    /// Opens a gRPC call to `path` and leaves its body unfinished (no END_STREAM).
    pub async fn open_call(&mut self, stream_id: u32, path: &str) {
        let mut block = Vec::new();
        for (name, value) in [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "latchkey"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ] {
            // Literal header field without indexing, new name, no Huffman (RFC 7541 §6.2.2).
            block.push(0x00);
            block.push(name.len() as u8);
            block.extend_from_slice(name.as_bytes());
            block.push(value.len() as u8);
            block.extend_from_slice(value.as_bytes());
        }
        const END_HEADERS: u8 = 0x4;
        self.frame(HEADERS, END_HEADERS, stream_id, &block).await;
    }

    /// The next frame, or None once the server has closed the connection.
    pub async fn read_frame(&mut self) -> Option<Frame> {
        let mut header = [0u8; 9];
        self.stream.read_exact(&mut header).await.ok()?;
        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0u8; length];
        self.stream.read_exact(&mut payload).await.ok()?;
        Some(Frame {
            kind: header[3],
            flags: header[4],
            stream_id: u32::from_be_bytes(header[5..9].try_into().unwrap()) & 0x7fff_ffff,
            payload,
        })
    }

    /// Reads until the server closes the connection; returns what it sent meanwhile.
    pub async fn until_closed(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(frame) = self.read_frame().await {
            frames.push(frame);
        }
        frames
    }
}

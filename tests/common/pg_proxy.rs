//! A TCP proxy between latchkey and PostgreSQL that reads the wire protocol, to lose one answer
//! for real: armed with the start of a statement's text, it forwards the next execution of that
//! statement to the server, lets the server run and commit it, withholds everything the server
//! answers up to its `ReadyForQuery`, and then closes both sides of that connection. latchkey sees
//! exactly what a failover or a dead network path right after a commit shows it: the connection
//! gone with its statement sent, and no answer. Every other connection and message passes through
//! untouched. Plain text only (the servers scripts/postgres starts without TLS settings).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// The request codes a client may send before its startup message, each answered by one byte.
const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;

pub struct PgProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// The statement text (its start) whose next execution loses its answer.
    armed: Mutex<Option<String>>,
    /// The command tags of the answers withheld, e.g. `INSERT 0 1`.
    lost: Mutex<Vec<String>>,
}

impl PgProxy {
    /// Listens on a loopback port and forwards every connection to `url`'s host and port.
    pub async fn start(url: &str) -> Self {
        let upstream: SocketAddr = url
            .split('@')
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .expect("a URL postgres://user:password@host:port/database")
            .parse()
            .expect("the database's address is an IP address and a port");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let accepting = shared.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, upstream, accepting.clone()));
            }
        });
        Self { addr, upstream, shared }
    }

    /// `url` with the proxy in place of the database.
    pub fn url(&self, url: &str) -> String {
        url.replacen(&self.upstream.to_string(), &self.addr.to_string(), 1)
    }

    /// The next execution of a prepared statement whose text starts with `statement` loses its
    /// answer (once).
    pub fn lose_next_answer_to(&self, statement: &str) {
        *self.shared.armed.lock().unwrap() = Some(statement.to_string());
    }

    /// The command tags of the answers lost so far: what the server did and latchkey never heard.
    pub fn lost(&self) -> Vec<String> {
        self.shared.lost.lock().unwrap().clone()
    }
}

async fn relay(client: TcpStream, upstream: SocketAddr, shared: Arc<Shared>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut client_reader, mut client_writer) = client.into_split();
    let (mut server_reader, mut server_writer) = server.into_split();
    if startup(
        &mut client_reader,
        &mut client_writer,
        &mut server_reader,
        &mut server_writer,
    )
    .await
    .is_none()
    {
        return;
    }
    let (cut_tx, cut_rx) = tokio::sync::oneshot::channel();
    // Whichever direction ends first ends the connection: dropping the halves closes both sockets.
    tokio::select! {
        () = to_server(client_reader, server_writer, shared.clone(), cut_tx) => {}
        () = to_client(server_reader, client_writer, shared, cut_rx) => {}
    }
}

/// Passes the untyped messages that open a connection (TLS and GSS requests, answered with one
/// byte, then the startup message); `None` if the connection ended.
async fn startup(
    client_reader: &mut OwnedReadHalf,
    client_writer: &mut OwnedWriteHalf,
    server_reader: &mut OwnedReadHalf,
    server_writer: &mut OwnedWriteHalf,
) -> Option<()> {
    loop {
        let length = client_reader.read_i32().await.ok()?;
        let mut body = vec![0; usize::try_from(length).ok()?.checked_sub(4)?];
        client_reader.read_exact(&mut body).await.ok()?;
        server_writer.write_i32(length).await.ok()?;
        server_writer.write_all(&body).await.ok()?;
        let code = i32::from_be_bytes(body.get(..4)?.try_into().ok()?);
        if code != SSL_REQUEST && code != GSSENC_REQUEST {
            return Some(());
        }
        let answer = server_reader.read_u8().await.ok()?;
        assert_eq!(answer, b'N', "the proxy speaks plain text only");
        client_writer.write_u8(answer).await.ok()?;
    }
}

/// One typed message: its type byte, and the whole message as it travels.
async fn message(reader: &mut OwnedReadHalf) -> Option<(u8, Vec<u8>)> {
    let kind = reader.read_u8().await.ok()?;
    let length = reader.read_i32().await.ok()?;
    let mut raw = Vec::with_capacity(usize::try_from(length).ok()? + 1);
    raw.push(kind);
    raw.extend_from_slice(&length.to_be_bytes());
    raw.resize(usize::try_from(length).ok()? + 1, 0);
    reader.read_exact(&mut raw[5..]).await.ok()?;
    Some((kind, raw))
}

/// The null-terminated strings a message's body starts with.
fn strings(raw: &[u8], count: usize) -> Vec<String> {
    raw[5..]
        .split(|byte| *byte == 0)
        .take(count)
        .map(|text| String::from_utf8_lossy(text).into_owned())
        .collect()
}

/// Client to server: notes each prepared statement's text (`Parse`: name, text), and on an
/// execution of the armed one (`Bind`: portal, statement) tells the other direction to cut, before
/// the server can have answered it.
async fn to_server(
    mut client: OwnedReadHalf,
    mut server: OwnedWriteHalf,
    shared: Arc<Shared>,
    cut: tokio::sync::oneshot::Sender<()>,
) {
    let mut cut = Some(cut);
    let mut statements = std::collections::HashMap::new();
    while let Some((kind, raw)) = message(&mut client).await {
        match kind {
            b'P' => {
                let [name, text] = &strings(&raw, 2)[..] else { return };
                statements.insert(name.clone(), text.clone());
            }
            b'B' => {
                let [_, statement] = &strings(&raw, 2)[..] else { return };
                let text = statements.get(statement).map_or("", String::as_str);
                let mut armed = shared.armed.lock().unwrap();
                if armed.as_deref().is_some_and(|armed| text.starts_with(armed)) {
                    *armed = None;
                    if let Some(cut) = cut.take() {
                        let _ = cut.send(());
                    }
                }
            }
            _ => {}
        }
        if server.write_all(&raw).await.is_err() {
            return;
        }
    }
}

/// Server to client: everything, until told to cut; then nothing more, up to and including the
/// `ReadyForQuery` that says the statement's implicit transaction ended (committed, for a statement
/// that completed), and then the connection ends.
async fn to_client(
    mut server: OwnedReadHalf,
    mut client: OwnedWriteHalf,
    shared: Arc<Shared>,
    mut cut: tokio::sync::oneshot::Receiver<()>,
) {
    let mut cutting = false;
    while let Some((kind, raw)) = message(&mut server).await {
        // The cut is signalled before the statement reaches the server, so before its answer.
        cutting = cutting || cut.try_recv().is_ok();
        if !cutting {
            if client.write_all(&raw).await.is_err() {
                return;
            }
            continue;
        }
        match kind {
            b'C' => shared.lost.lock().unwrap().push(strings(&raw, 1).remove(0)),
            b'Z' => return,
            _ => {}
        }
    }
}

//! Accepting connections within bounds: at most `max_connections` open per port (past it the
//! port stops accepting, and the kernel's backlog pushes back), a back-off when accept fails (at
//! the file-descriptor limit accept fails at once, and retrying at once spins a core), and per
//! connection a handshake deadline, an idle timeout, and a hard close at the end of the shutdown
//! grace period.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::limits::Limits;

const FIRST_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// One connection's shared state: whether it has completed its handshake (see `Handshake`).
#[derive(Debug, Default)]
struct State {
    handshaken: AtomicBool,
}

/// What ends a new connection's handshake deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handshake {
    /// The HTTP/2 client preface and the header of its SETTINGS frame have arrived (33 bytes; with
    /// TLS, the TLS handshake timeout bounds what comes before), or a request. From then on
    /// keep-alive pings tell a live client from a dead one, so a client that connects eagerly and
    /// calls later keeps its connection.
    Http2Preface,
    /// A complete request head (HTTP/1).
    FirstRequest,
}

/// The client preface (24 bytes) and one frame header (9).
const HTTP2_HANDSHAKE_BYTES: u64 = 33;

/// What the services see of the connection a request came on (in the request's extensions).
#[derive(Clone, Debug)]
pub struct Peer {
    pub remote_addr: SocketAddr,
    state: Arc<State>,
}

impl Peer {
    /// Called for every request: the connection has passed its handshake deadline.
    pub fn mark_request(&self) {
        if !self.state.handshaken.load(Ordering::Relaxed) {
            self.state.handshaken.store(true, Ordering::Relaxed);
        }
    }
}

/// A port's listener with its limits, shared by every `Acceptor` made from it (a server restarted
/// with new TLS material accepts from the same socket and the same connection slots).
#[derive(Clone)]
pub struct Port {
    listener: Arc<TcpListener>,
    slots: Arc<Semaphore>,
    handshake_timeout: Duration,
    idle_timeout: Duration,
    close_all: CancellationToken,
    handshake: Handshake,
    nodelay: bool,
}

impl Port {
    /// `close_all`, once cancelled, makes every connection from this port fail its next read or
    /// write, which ends it whatever the protocol layer above is waiting for.
    pub fn new(
        listener: TcpListener,
        limits: &Limits,
        close_all: CancellationToken,
        handshake: Handshake,
        nodelay: bool,
    ) -> Self {
        Self {
            listener: Arc::new(listener),
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            handshake_timeout: limits.handshake_timeout(),
            idle_timeout: limits.idle_timeout(),
            close_all,
            handshake,
            nodelay,
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn acceptor(&self) -> Acceptor {
        Acceptor {
            port: self.clone(),
            pending: None,
            backoff: None,
            stop: None,
        }
    }

    /// An acceptor that accepts nothing more once `stop` is cancelled: its stream ends, so the
    /// server that owns it stops accepting at once, and the next one takes every new connection.
    pub fn acceptor_until(&self, stop: CancellationToken) -> Acceptor {
        Acceptor {
            stop: Some(Box::pin(stop.cancelled_owned())),
            ..self.acceptor()
        }
    }
}

type Accepting = Pin<Box<dyn Future<Output = (io::Result<(TcpStream, SocketAddr)>, OwnedSemaphorePermit)> + Send>>;

/// Accepts from a `Port`: first a free connection slot, then a connection.
pub struct Acceptor {
    port: Port,
    /// `TcpListener::accept`, not `poll_accept`: two acceptors of one port (a server generation
    /// stopping while the next starts) may wait at once, and `poll_accept` wakes only the last.
    pending: Option<Accepting>,
    backoff: Option<(Pin<Box<Sleep>>, Duration)>,
    stop: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

impl Acceptor {
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.port.local_addr()
    }

    /// The next connection, or None once stopped; accept errors are logged and retried with a
    /// back-off.
    pub fn poll_next_connection(&mut self, cx: &mut Context<'_>) -> Poll<Option<(GuardedIo, SocketAddr)>> {
        let stopped = self.stop.as_mut().is_some_and(|stop| stop.as_mut().poll(cx).is_ready());
        if stopped {
            // Dropping an accept that has not completed loses no connection.
            self.pending = None;
            return Poll::Ready(None);
        }
        self.poll_accept(cx).map(Some)
    }

    /// The next connection; accept errors are logged and retried with a back-off.
    pub fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<(GuardedIo, SocketAddr)> {
        loop {
            if let Some((sleep, _)) = &mut self.backoff {
                ready!(sleep.as_mut().poll(cx));
            }
            let accepting = self.pending.get_or_insert_with(|| {
                let port = self.port.clone();
                Box::pin(async move {
                    let slot = port
                        .slots
                        .clone()
                        .acquire_owned()
                        .await
                        .expect("the connection semaphore is never closed");
                    (port.listener.accept().await, slot)
                })
            });
            let (accepted, slot) = ready!(accepting.as_mut().poll(cx));
            self.pending = None;
            match accepted {
                Ok((stream, remote_addr)) => {
                    self.backoff = None;
                    if self.port.nodelay {
                        let _ = stream.set_nodelay(true);
                    }
                    let io = GuardedIo::new(stream, remote_addr, slot, &self.port);
                    return Poll::Ready((io, remote_addr));
                }
                Err(error) if is_connection_error(&error) => continue,
                Err(error) => {
                    let delay = match &self.backoff {
                        Some((_, last)) => (*last * 2).min(MAX_BACKOFF),
                        None => FIRST_BACKOFF,
                    };
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "accepting a connection failed");
                    self.backoff = Some((Box::pin(tokio::time::sleep(delay)), delay));
                }
            }
        }
    }
}

fn stopping() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "the server is stopping")
}

/// Errors of one connection that went away before it was accepted; the next accept may succeed.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// For tonic's `serve_with_incoming_shutdown`.
impl tokio_stream::Stream for Acceptor {
    type Item = io::Result<GuardedIo>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_next_connection(cx).map(|next| next.map(|(io, _)| Ok(io)))
    }
}

/// For `axum::serve`.
impl axum::serve::Listener for Acceptor {
    type Io = GuardedIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.port.local_addr()
    }
}

/// A TCP connection that holds one of its port's connection slots and fails once it outlives a
/// deadline: the handshake's (counted from accept) until the handshake is done, then the idle
/// timeout (counted from the last byte read).
pub struct GuardedIo {
    stream: TcpStream,
    peer: Peer,
    _slot: OwnedSemaphorePermit,
    accepted_at: Instant,
    last_read: Instant,
    /// Bytes read so far, counted until the handshake is done.
    handshake_bytes: Option<u64>,
    handshake_timeout: Duration,
    idle_timeout: Duration,
    deadline: Pin<Box<Sleep>>,
    /// Polled only while a read waits (it takes a lock); writes check the token's flag.
    closing: Pin<Box<WaitForCancellationFutureOwned>>,
    close_all: CancellationToken,
}

impl GuardedIo {
    fn new(stream: TcpStream, remote_addr: SocketAddr, slot: OwnedSemaphorePermit, port: &Port) -> Self {
        let now = Instant::now();
        Self {
            stream,
            peer: Peer {
                remote_addr,
                state: Arc::default(),
            },
            _slot: slot,
            accepted_at: now,
            last_read: now,
            handshake_bytes: (port.handshake == Handshake::Http2Preface).then_some(0),
            handshake_timeout: port.handshake_timeout,
            idle_timeout: port.idle_timeout,
            deadline: Box::pin(tokio::time::sleep_until(now + port.handshake_timeout)),
            closing: Box::pin(port.close_all.clone().cancelled_owned()),
            close_all: port.close_all.clone(),
        }
    }

    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    fn due(&self) -> (Instant, &'static str) {
        if self.peer.state.handshaken.load(Ordering::Relaxed) {
            (self.last_read + self.idle_timeout, "idle timeout")
        } else {
            (
                self.accepted_at + self.handshake_timeout,
                "no request before the handshake timeout",
            )
        }
    }

    /// Ready with an error once the server closes every connection.
    fn poll_closing(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        self.closing.as_mut().poll(cx).map(|()| stopping())
    }

    /// An error once the server closes every connection (a read that waits wakes the task).
    fn closed(&self) -> Option<io::Error> {
        self.close_all.is_cancelled().then(stopping)
    }

    /// Ready with an error once the connection must end.
    fn poll_limits(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if let Poll::Ready(error) = self.poll_closing(cx) {
            return Poll::Ready(error);
        }
        while self.deadline.as_mut().poll(cx).is_ready() {
            let (due, why) = self.due();
            if Instant::now() >= due {
                tracing::debug!(peer = %self.peer.remote_addr, why, "closing a connection");
                return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, why));
            }
            self.deadline.as_mut().reset(due);
        }
        Poll::Pending
    }
}

impl AsyncRead for GuardedIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                this.last_read = Instant::now();
                if let Some(count) = &mut this.handshake_bytes {
                    *count += (buf.filled().len() - before) as u64;
                    if *count >= HTTP2_HANDSHAKE_BYTES {
                        this.peer.mark_request();
                        this.handshake_bytes = None;
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => match this.poll_limits(cx) {
                Poll::Ready(error) => Poll::Ready(Err(error)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Some(error) = self.closed() {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(error) = self.closed() {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for GuardedIo {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer.clone()
    }
}

/// For axum's `into_make_service_with_connect_info`.
impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Acceptor>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Acceptor>) -> Self {
        stream.io().peer().clone()
    }
}

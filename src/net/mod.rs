//! The network edge shared by both ports: the limits one peer may hold, bounded accepting, and
//! the per-connection deadlines (see `connection`).

pub mod connection;
pub mod limits;

use std::task::{Context, Poll};

pub use connection::{Acceptor, GuardedIo, Handshake, Peer, Port};
pub use limits::Limits;

/// Tells each request's connection that it has sent a request, which ends its handshake deadline.
#[derive(Clone, Copy, Debug, Default)]
pub struct MarkRequestsLayer;

impl<S> tower::Layer<S> for MarkRequestsLayer {
    type Service = MarkRequests<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MarkRequests { inner }
    }
}

#[derive(Clone, Debug)]
pub struct MarkRequests<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for MarkRequests<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let extensions = request.extensions();
        if let Some(peer) = extensions.get::<Peer>() {
            peer.mark_request();
        } else if let Some(axum::extract::ConnectInfo(peer)) = extensions.get::<axum::extract::ConnectInfo<Peer>>() {
            peer.mark_request();
        }
        self.inner.call(request)
    }
}

//! The gRPC port: latchkey's services served with the port's limits and TLS. It runs in
//! generations: new TLS material (a reload) starts a new server on the same socket and connection
//! slots for new connections while the previous one finishes the connections it has, so a renewed
//! certificate takes effect without a restart.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::config::TlsMaterial;
use crate::metrics::{GrpcMetricsLayer, Metrics};
use crate::net::{Limits, MarkRequestsLayer, Port};

type Served = Result<(), tonic::transport::Error>;

/// New TLS material for the port, and where to say whether it now serves new connections.
pub type TlsUpdate = (Option<TlsMaterial>, oneshot::Sender<Result<(), String>>);

pub struct GrpcPort {
    pub port: Port,
    pub routes: Routes,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
}

fn server_tls(tls: &TlsMaterial, handshake_timeout: Duration) -> ServerTlsConfig {
    let identity = Identity::from_pem(&tls.cert_pem, tls.key_pem.expose());
    let config = ServerTlsConfig::new().identity(identity).timeout(handshake_timeout);
    match &tls.client_ca_pem {
        Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
        None => config,
    }
}

impl GrpcPort {
    /// One generation, serving until `stop` and then until its connections have closed.
    fn generation(&self, tls: Option<&TlsMaterial>, stop: CancellationToken) -> Result<JoinHandle<Served>, String> {
        let limits = &self.limits;
        let mut builder = Server::builder()
            .max_concurrent_streams(limits.max_concurrent_streams)
            .http2_max_header_list_size(limits.max_header_list_bytes)
            .http2_keepalive_interval(Some(limits.keepalive_interval()))
            .http2_keepalive_timeout(Some(limits.keepalive_timeout()))
            .timeout(limits.request_timeout());
        if let Some(tls) = tls {
            builder = builder
                .tls_config(server_tls(tls, limits.handshake_timeout()))
                .map_err(|error| error.to_string())?;
        }
        let router = builder
            .layer(MarkRequestsLayer)
            .layer(GrpcMetricsLayer::new(self.metrics.clone()))
            .trace_fn(|request| tracing::debug_span!("grpc", path = %request.uri().path()))
            .add_routes(self.routes.clone());
        Ok(tokio::spawn(router.serve_with_incoming_shutdown(
            self.port.acceptor_until(stop.clone()),
            stop.cancelled_owned(),
        )))
    }

    /// Serves until `shutdown`, then until every generation's connections have closed. Each TLS
    /// material received on `tls_updates` starts a new generation; material the TLS library
    /// refuses leaves the current one serving.
    pub fn serve(
        self,
        tls: Option<&TlsMaterial>,
        mut tls_updates: mpsc::Receiver<TlsUpdate>,
        shutdown: CancellationToken,
    ) -> Result<JoinHandle<Served>, String> {
        let mut stop = CancellationToken::new();
        let mut current = self.generation(tls, stop.clone())?;
        Ok(tokio::spawn(async move {
            let mut draining: Vec<JoinHandle<Served>> = Vec::new();
            let mut updates_open = true;
            let served = loop {
                tokio::select! {
                    () = shutdown.cancelled() => break None,
                    update = tls_updates.recv(), if updates_open => {
                        let Some((tls, reply)) = update else {
                            updates_open = false;
                            continue;
                        };
                        // The old generation's acceptor ends when `stop` is cancelled, so every
                        // connection from here on goes to the new one.
                        let next_stop = CancellationToken::new();
                        match self.generation(tls.as_ref(), next_stop.clone()) {
                            Ok(next) => {
                                stop.cancel();
                                draining.retain(|old| !old.is_finished());
                                draining.push(std::mem::replace(&mut current, next));
                                stop = next_stop;
                                tracing::info!("new TLS material: new connections use it; calls in flight finish on their connections");
                                let _ = reply.send(Ok(()));
                            }
                            Err(error) => {
                                tracing::warn!(%error, "the new TLS material was refused; the current one stays");
                                let _ = reply.send(Err(format!("the TLS library refused the new material: {error}")));
                            }
                        }
                    }
                    joined = &mut current => break Some(joined),
                }
            };
            stop.cancel();
            // The last handle on the listening socket: new clients are refused at once instead of
            // waiting in the backlog while the calls in flight drain.
            drop(self);
            let served = match served {
                Some(joined) => joined,
                None => current.await,
            };
            for old in draining {
                let _ = old.await;
            }
            served.unwrap_or_else(|error| {
                tracing::error!(%error, "the gRPC server task failed");
                Ok(())
            })
        }))
    }
}

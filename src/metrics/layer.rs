//! A tower layer around the gRPC server that counts every call by service, method and final
//! status code, and times it. The code comes from the `grpc-status` header of a trailers-only
//! answer (errors, including the API-key interceptor's), or from the trailers at the end of the
//! body; a call whose body is dropped before its trailers counts as `CANCELLED`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use prost::Message;
use tower::{Layer, Service};

use super::Metrics;

#[derive(Clone)]
pub struct GrpcMetricsLayer {
    metrics: Arc<Metrics>,
}

impl GrpcMetricsLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for GrpcMetrics<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body + Unpin + Send + 'static,
{
    type Response = http::Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let (service, method) = labels_for(request.uri().path());
        let mut observer = Observer {
            metrics: self.metrics.clone(),
            service,
            method,
            started: Instant::now(),
            code: None,
        };
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            if let Some(code) = status_code(response.headers()) {
                observer.code = Some(code);
                drop(observer);
                return Ok(response.map(|inner| ObservedBody { inner, observer: None }));
            }
            Ok(response.map(|inner| ObservedBody {
                inner,
                observer: Some(observer),
            }))
        })
    }
}

/// Records its call when dropped: with the code seen, or as `CANCELLED` if none was.
struct Observer {
    metrics: Arc<Metrics>,
    service: &'static str,
    method: &'static str,
    started: Instant,
    code: Option<&'static str>,
}

impl Drop for Observer {
    fn drop(&mut self) {
        let code = self.code.unwrap_or("CANCELLED");
        let seconds = self.started.elapsed().as_secs_f64();
        self.metrics.record(self.service, self.method, code, seconds);
    }
}

pub struct ObservedBody<B> {
    inner: B,
    observer: Option<Observer>,
}

impl<B: Body + Unpin> Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(frame) = &polled {
            let code = match frame {
                Some(Ok(frame)) => frame
                    .trailers_ref()
                    .map(|trailers| status_code(trailers).unwrap_or("UNKNOWN")),
                Some(Err(_)) => Some("INTERNAL"),
                None => Some("UNKNOWN"),
            };
            if let Some(code) = code
                && let Some(mut observer) = this.observer.take()
            {
                observer.code = Some(code);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

fn status_code(headers: &HeaderMap) -> Option<&'static str> {
    let value = headers.get("grpc-status")?;
    let number: usize = value.to_str().ok()?.parse().ok()?;
    Some(CODES.get(number).copied().unwrap_or("UNKNOWN"))
}

/// (service, method) labels for a request path. Only methods the server really has get their own
/// labels, so a client cannot grow the metrics without bound with made-up paths.
fn labels_for(path: &str) -> (&'static str, &'static str) {
    static KNOWN: OnceLock<HashMap<String, (&'static str, &'static str)>> = OnceLock::new();
    let known = KNOWN.get_or_init(|| {
        let mut paths = vec![
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo".to_string(),
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo".to_string(),
        ];
        for set in [
            crate::api::pb::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ] {
            let set = prost_types::FileDescriptorSet::decode(set).expect("the build's descriptor set decodes");
            for file in set.file {
                for service in &file.service {
                    for method in &service.method {
                        paths.push(format!("/{}.{}/{}", file.package(), service.name(), method.name()));
                    }
                }
            }
        }
        // Leaked once per process: a fixed, small set of names that labels borrow for ever.
        paths
            .into_iter()
            .map(|path| {
                let (service, method) = path[1..].split_once('/').expect("a method path");
                let service: &'static str = Box::leak(service.to_string().into_boxed_str());
                let method: &'static str = Box::leak(method.to_string().into_boxed_str());
                (path, (service, method))
            })
            .collect()
    });
    known.get(path).copied().unwrap_or(("unknown", "unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_served_methods_get_labels() {
        assert_eq!(
            labels_for("/latchkey.v1.Passwordless/IssueLoginLink"),
            ("latchkey.v1.Passwordless", "IssueLoginLink")
        );
        assert_eq!(
            labels_for("/grpc.health.v1.Health/Check"),
            ("grpc.health.v1.Health", "Check")
        );
        assert_eq!(labels_for("/latchkey.v1.Passwordless/Made-Up"), ("unknown", "unknown"));
        assert_eq!(labels_for("/nope"), ("unknown", "unknown"));
    }

    #[test]
    fn status_codes_by_number() {
        let mut headers = HeaderMap::new();
        assert_eq!(status_code(&headers), None);
        headers.insert("grpc-status", "9".parse().unwrap());
        assert_eq!(status_code(&headers), Some("FAILED_PRECONDITION"));
        headers.insert("grpc-status", "99".parse().unwrap());
        assert_eq!(status_code(&headers), Some("UNKNOWN"));
    }
}

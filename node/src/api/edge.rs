//! The API's edge to the open internet: whoever reaches the gateway spends its wallet, so
//! every request is bounded before a handler sees it — connections, header time, body size,
//! requests in flight, time to respond — and, when a key is set, authenticated.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceBuilder;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};

use super::ApiError;
use super::conn::{PerAddress, StallTimeout};

/// What the API admits at once and how long it waits.
#[derive(Debug, Clone)]
pub struct ApiLimits {
    /// Generations running at once; one more is answered `429` with `Retry-After`.
    pub max_sessions: usize,
    /// HTTP connections open at once; more are closed as they are accepted.
    pub max_connections: usize,
    /// Requests being handled at once (a stream counts until its headers are sent); more are
    /// answered `503` at once instead of queueing.
    pub max_requests: usize,
    /// Largest request body; a larger one is answered `413` without being read.
    pub max_body_bytes: usize,
    /// Time a client has to send its request headers (a slowloris client is cut off).
    pub header_timeout: Duration,
    /// Longest pause between two parts of a request body (the whole request is bounded by
    /// `response_timeout`).
    pub body_timeout: Duration,
    /// Longest wait for a response to start: a whole non-streamed generation.
    pub response_timeout: Duration,
    /// Connections open at once from one client address.
    pub max_connections_per_address: usize,
    /// Longest a client may leave its response unread before its connection is cut.
    pub stall_timeout: Duration,
    /// The bearer key every `/v1` request must present, when set.
    pub api_key: Option<String>,
    /// Web origins whose pages may call the API (`*`: any); none when empty.
    pub cors_origins: Vec<String>,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            max_sessions: 64,
            max_connections: 1024,
            max_requests: 512,
            max_body_bytes: 4 << 20,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            response_timeout: Duration::from_secs(600),
            max_connections_per_address: 256,
            stall_timeout: Duration::from_secs(60),
            api_key: None,
            cors_origins: Vec::new(),
        }
    }
}

impl ApiLimits {
    /// `routes`, and `v1` behind the API key when one is set.
    pub fn guard<S: Clone + Send + Sync + 'static>(
        &self,
        routes: Router<S>,
        v1: Router<S>,
    ) -> Router<S> {
        match &self.api_key {
            Some(key) => routes.merge(v1.layer(axum::middleware::from_fn_with_state(
                Arc::<str>::from(key.as_str()),
                require_key,
            ))),
            None => routes.merge(v1),
        }
    }

    /// The CORS layer for `cors_origins`: preflights answered with the origin and the
    /// request headers it asks for (the SDKs send their own `x-stainless-*` headers).
    fn cors(&self) -> Option<CorsLayer> {
        if self.cors_origins.is_empty() {
            return None;
        }
        let origins = if self.cors_origins.iter().any(|o| o == "*") {
            AllowOrigin::any()
        } else {
            AllowOrigin::list(
                self.cors_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()),
            )
        };
        Some(
            CorsLayer::new()
                .allow_origin(origins)
                .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
                .allow_headers(AllowHeaders::mirror_request())
                .max_age(Duration::from_secs(600)),
        )
    }

    /// Serves `app` on `listener` until `shutdown` resolves, then lets open requests finish
    /// for up to [`SHUTDOWN_GRACE`]: HTTP/1.1, at most `max_connections` connections
    /// (`max_connections_per_address` from one address), each given `header_timeout` to send
    /// its headers and cut off when it leaves its response unread for `stall_timeout`; every
    /// request is shed when `max_requests` are in flight, bounded in body size and time, and
    /// given `response_timeout` to start its response. Errors are OpenAI-shaped.
    pub async fn serve(
        &self,
        listener: TcpListener,
        app: Router,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        // CORS is outermost, so that the edge's own answers (413, 503, 504) carry it too and
        // a browser page can read them.
        let service = ServiceBuilder::new()
            .option_layer(self.cors())
            .map_response(openai_shaped)
            .layer(HandleErrorLayer::new(overloaded))
            .load_shed()
            .concurrency_limit(self.max_requests)
            .layer(RequestBodyLimitLayer::new(self.max_body_bytes))
            .layer(TimeoutLayer::with_status_code(
                StatusCode::GATEWAY_TIMEOUT,
                self.response_timeout,
            ))
            .layer(RequestBodyTimeoutLayer::new(self.body_timeout))
            .service(app);
        let connections = Arc::new(Semaphore::new(self.max_connections));
        let per_address = PerAddress::new(self.max_connections_per_address);
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(self.header_timeout);
        let http = Arc::new(http);
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let refusals = RefusalLog::default();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let (stream, from) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    // Out of file descriptors and the like: the next accept may work.
                    Err(e) => {
                        tracing::warn!("accepting a connection failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let Some(address_slot) = per_address.admit(from.ip()) else {
                refusals.note(from, "connections from this address");
                continue;
            };
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                refusals.note(from, "connections in all");
                continue;
            };
            // Streamed tokens are small writes: Nagle's algorithm would hold each one back
            // until the client acknowledged the last (up to its delayed-ACK timer).
            let _ = stream.set_nodelay(true);
            // Keepalive probes find clients that vanished without closing.
            let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(
                &socket2::TcpKeepalive::new().with_time(Duration::from_secs(60)),
            );
            let io = TokioIo::new(StallTimeout::new(stream, self.stall_timeout));
            let service = TowerToHyperService::new(service.clone());
            let connection = graceful.watch(http.serve_connection(io, service));
            tokio::spawn(async move {
                // A client that breaks off, or is too slow, ends only its own connection.
                let _ = connection.await;
                drop((permit, address_slot));
            });
        }
        tracing::info!("shutting down; open requests get {} s to finish", SHUTDOWN_GRACE.as_secs());
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
        Ok(())
    }
}

/// How long open requests may run on after shutdown is asked.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Logs refused connections at most once a second: a flood must not flood the log too.
#[derive(Default)]
struct RefusalLog {
    last: std::sync::Mutex<Option<std::time::Instant>>,
    skipped: std::sync::atomic::AtomicUsize,
}

impl RefusalLog {
    fn note(&self, from: std::net::SocketAddr, limit: &str) {
        use std::sync::atomic::Ordering;
        let mut last = self.last.lock().expect("refusal log");
        let now = std::time::Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < Duration::from_secs(1)) {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(now);
        let skipped = self.skipped.swap(0, Ordering::Relaxed);
        tracing::warn!(
            %from,
            "refused a connection: too many {limit} ({skipped} more refused since the last such line)"
        );
    }
}

/// Gives the bare error answers of the layers (a body over the limit, a response timeout)
/// OpenAI's JSON error shape, as every other error has. JSON errors and the dashboard's HTML
/// error pages (which reload themselves) are answers already, and pass as they are.
fn openai_shaped(response: Response) -> Response {
    let shaped = response.headers().get(header::CONTENT_TYPE).is_some_and(|t| {
        t.as_bytes().starts_with(b"application/json") || t.as_bytes().starts_with(b"text/html")
    });
    let status = response.status();
    if shaped || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (kind, message) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ("invalid_request_error", "the request body is too large"),
        StatusCode::REQUEST_TIMEOUT => {
            ("invalid_request_error", "the request body arrived too slowly")
        }
        StatusCode::GATEWAY_TIMEOUT => {
            ("server_error", "the response did not start in time; the generation was cancelled")
        }
        _ => ("server_error", "the request failed"),
    };
    ApiError::new(status, kind, message).into_response()
}

/// The answer to a request shed by the in-flight limit (the limit's only error).
async fn overloaded(_: tower::BoxError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded_error",
        "the gateway is handling as many requests as it allows; retry shortly",
    )
    .with_retry_after(1)
}

/// Lets a request through only with `Authorization: Bearer <key>`.
async fn require_key(State(key): State<Arc<str>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim());
    match presented {
        Some(presented) if constant_time_eq(presented.as_bytes(), key.as_bytes()) => {
            next.run(request).await
        }
        _ => {
            let mut response = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "a valid API key is required: Authorization: Bearer <key>",
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

/// Compares without an early exit, so response time says nothing about how much of a
/// guessed key was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn keys_compare_whole() {
        assert!(constant_time_eq(b"sk-abc", b"sk-abc"));
        assert!(!constant_time_eq(b"sk-abc", b"sk-abd"));
        assert!(!constant_time_eq(b"sk-ab", b"sk-abc"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}

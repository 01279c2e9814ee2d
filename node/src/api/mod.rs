//! The gateway's OpenAI-compatible HTTP API (axum): completions and chat completions, with
//! SSE streaming, log-probabilities and usage; models; health. Errors use OpenAI's JSON shape.

mod conn;
mod edge;
mod types;

use std::convert::Infallible;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Json, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::{Stream, StreamExt};
use tokenizers::Tokenizer;
use tokio::sync::{Semaphore, mpsc};

use crate::generate::{
    ChatFormat, FinishReason, GeneratedToken, Generation, GenerationError, Prompt, TextModel,
    generate,
};
pub use edge::ApiLimits;
pub use types::{ApiError, ChatRequest, CompletionRequest, EmbeddingRequest, Job};

/// Opens a text model of its own for each request (the routed remote model on a gateway), so
/// requests generate concurrently.
pub type Backend = Arc<dyn Fn() -> Box<dyn TextModel + Send> + Send + Sync>;

/// Something that embeds texts for the API; returns the embeddings and the tokens used.
pub type Embedder = Arc<
    dyn Fn(&[String]) -> Result<(Vec<Vec<f32>>, usize), crate::engine::EngineError> + Send + Sync,
>;

/// Shared state of the API.
pub struct ApiState {
    pub model_name: String,
    pub tokenizer: Arc<Tokenizer>,
    /// How chat messages become a prompt: the model's template, or the plain transcript.
    pub chat: ChatFormat,
    pub backend: Option<Backend>,
    pub embedder: Option<Embedder>,
    /// Routing facts for `/healthz`, when the backend routes over the swarm.
    pub routing: Option<Arc<std::sync::Mutex<crate::gateway::RouteReport>>>,
    next_session: AtomicU64,
    /// One permit per generation allowed to run at once.
    sessions: Arc<Semaphore>,
    max_sessions: usize,
}

impl ApiState {
    pub fn new(
        model_name: String,
        tokenizer: Tokenizer,
        chat: ChatFormat,
        backend: Option<Backend>,
        embedder: Option<Embedder>,
        routing: Option<Arc<std::sync::Mutex<crate::gateway::RouteReport>>>,
        max_sessions: usize,
    ) -> Arc<Self> {
        let seed =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
        Arc::new(Self {
            model_name,
            tokenizer: Arc::new(tokenizer),
            chat,
            backend,
            embedder,
            routing,
            next_session: AtomicU64::new(seed),
            sessions: Arc::new(Semaphore::new(max_sessions)),
            max_sessions,
        })
    }

    /// A session slot for one request (a generation, or an embedding), held until the
    /// permit drops; `429` with `Retry-After` when every slot is taken (no queue: a client
    /// that waits can retry).
    #[allow(clippy::result_large_err)]
    fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        self.sessions.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                format!(
                    "the gateway is running its limit of {} sessions; retry shortly",
                    self.max_sessions
                ),
            )
            .with_retry_after(1)
        })
    }

    /// Generations running now.
    fn active_sessions(&self) -> usize {
        self.max_sessions - self.sessions.available_permits()
    }
}

/// The API's routes behind `limits`: `/healthz` open, `/v1` behind the API key if one is set.
pub fn router(state: Arc<ApiState>, limits: &ApiLimits) -> Router {
    let open = Router::new().route("/healthz", get(health));
    let v1 = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/embeddings", post(embeddings))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found_error", "no such endpoint")
                .into_response()
        });
    // The body limit is the edge's (`ApiLimits::max_body_bytes`), not axum's own 2 MiB.
    limits.guard(open, v1).layer(axum::extract::DefaultBodyLimit::disable()).with_state(state)
}

/// Liveness, plus the current route, every failover with its stall, and what the gateway
/// owes each node it paid.
async fn health(State(state): State<Arc<ApiState>>) -> Json<serde_json::Value> {
    let routing = state.routing.as_ref().map(|r| {
        let report = r.lock().expect("route report");
        serde_json::json!({
            "route": report.route.iter().map(|h| serde_json::json!({
                "peer": h.peer.to_string(), "first_block": h.first_block, "last_block": h.last_block,
            })).collect::<Vec<_>>(),
            "failovers": report.failovers.iter().map(|f| serde_json::json!({
                "failed_peer": f.failed_peer.to_string(), "reason": f.reason, "stall_ms": f.stall.as_secs_f64() * 1e3,
            })).collect::<Vec<_>>(),
            // Amounts in wei as decimal strings: exact, unlike JSON numbers.
            "payments": report.payments.iter().map(|t| serde_json::json!({
                "operator": t.operator.to_string(), "channel": t.channel.to_string(),
                "deposit": t.deposit.to_string(), "metered_block_tokens": t.metered,
                "owed": t.owed.to_string(), "signed": t.signed.to_string(),
            })).collect::<Vec<_>>(),
        })
    });
    let sessions =
        serde_json::json!({"active": state.active_sessions(), "limit": state.max_sessions});
    Json(serde_json::json!({"status": "ok", "sessions": sessions, "routing": routing}))
}

async fn models(State(state): State<Arc<ApiState>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "object": "list",
        "data": [{"id": state.model_name, "object": "model", "created": 0, "owned_by": "infergrid"}],
    }))
}

async fn embeddings(
    State(state): State<Arc<ApiState>>,
    body: Result<Json<types::EmbeddingRequest>, JsonRejection>,
) -> Response {
    let request =
        match body.map_err(ApiError::from).and_then(|Json(r)| r.validate(&state.model_name)) {
            Ok(r) => r,
            Err(e) => return e.into_response(),
        };
    let Some(embedder) = state.embedder.clone() else {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!("model {} is a text generation model; it has no embeddings", state.model_name),
        )
        .into_response();
    };
    let texts = request.texts();
    let permit = match state.admit() {
        Ok(permit) => permit,
        Err(e) => return e.into_response(),
    };
    let embedded = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        embedder(&texts)
    });
    match embedded.await {
        Ok(Ok((embeddings, tokens))) => Json(types::embedding_response(
            &state.model_name,
            &embeddings,
            tokens,
            request.base64(),
        ))
        .into_response(),
        Ok(Err(e)) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", e.to_string())
            .into_response(),
        Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e.to_string())
            .into_response(),
    }
}

fn no_generation(state: &ApiState) -> Response {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        format!("model {} is an embedding model; use /v1/embeddings", state.model_name),
    )
    .into_response()
}

/// Set when whoever waits for a generation is gone (the client disconnected), so the
/// generation stops at its next token and pays for no more steps.
#[derive(Debug, Clone, Default)]
struct Cancel(Arc<AtomicBool>);

impl Cancel {
    fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Cancels the generation when dropped: held by whatever the client's connection keeps
/// alive (the handler's future, the SSE stream).
struct CancelOnDrop(Cancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.0.store(true, Ordering::Relaxed);
    }
}

/// Starts a generation on a model of its own, if a session is free: otherwise `429` with
/// `Retry-After` (no queue: a client that waits can retry). `on_token` sees every token and
/// may break to stop; the returned guard cancels the generation when dropped.
#[allow(clippy::result_large_err)]
fn run_job(
    state: &Arc<ApiState>,
    session: u64,
    job: Job,
    mut on_token: impl FnMut(&GeneratedToken) -> ControlFlow<()> + Send + 'static,
) -> Result<(tokio::task::JoinHandle<Result<Generation, GenerationError>>, CancelOnDrop), ApiError>
{
    let permit = state.admit()?;
    let backend = state.backend.as_ref().expect("handlers check for a backend");
    let mut model = backend();
    let (state, cancel) = (state.clone(), Cancel::default());
    let cancelled = cancel.clone();
    let handle = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let prompt =
            if job.templated { Prompt::Chat(&job.prompt) } else { Prompt::Text(&job.prompt) };
        generate(
            &mut *model,
            &state.tokenizer,
            session,
            prompt,
            job.max_tokens,
            &job.stop,
            job.params,
            |token| if cancelled.is_set() { ControlFlow::Break(()) } else { on_token(token) },
        )
    });
    Ok((handle, CancelOnDrop(cancel)))
}

fn generation_error(e: GenerationError) -> ApiError {
    match e {
        GenerationError::Engine(_) | GenerationError::NoLogits | GenerationError::Cancelled => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", e.to_string())
        }
        other => ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", other.to_string()),
    }
}

async fn completions(
    State(state): State<Arc<ApiState>>,
    body: Result<Json<CompletionRequest>, JsonRejection>,
) -> Response {
    let (request, job) =
        match prepare(&state, body, CompletionRequest::validate, |r, _| Ok(r.job())) {
            Ok(prepared) => prepared,
            Err(response) => return response,
        };
    let session = state.next_session.fetch_add(1, Ordering::Relaxed);
    let (id, model, created) = (format!("cmpl-{session}"), state.model_name.clone(), now());
    let (tokenizer, logprobs) = (state.tokenizer.clone(), request.logprobs);
    let shape = Shape {
        opening: None,
        chunk: Arc::new({
            let (id, model) = (id.clone(), model.clone());
            move |text, ids, finish| {
                types::completion_chunk(&id, &model, created, text, ids, finish)
            }
        }),
        full: Box::new(move |g| {
            types::completion_response(&id, &model, created, g, logprobs, &tokenizer)
        }),
    };
    respond(&state, session, job, request.stream.unwrap_or(false), shape).await
}

async fn chat_completions(
    State(state): State<Arc<ApiState>>,
    body: Result<Json<ChatRequest>, JsonRejection>,
) -> Response {
    let (request, job) = match prepare(&state, body, ChatRequest::validate, ChatRequest::job) {
        Ok(prepared) => prepared,
        Err(response) => return response,
    };
    let session = state.next_session.fetch_add(1, Ordering::Relaxed);
    let (id, model, created) = (format!("chatcmpl-{session}"), state.model_name.clone(), now());
    let (tokenizer, top_logprobs) = (state.tokenizer.clone(), request.top_logprobs());
    let shape = Shape {
        opening: Some(types::chat_chunk(&id, &model, created, Some("assistant"), "", None)),
        chunk: Arc::new({
            let (id, model) = (id.clone(), model.clone());
            move |text, _, finish| types::chat_chunk(&id, &model, created, None, text, finish)
        }),
        full: Box::new(move |g| {
            types::chat_response(&id, &model, created, g, top_logprobs, &tokenizer)
        }),
    };
    respond(&state, session, job, request.stream.unwrap_or(false), shape).await
}

/// Builds one streamed chunk from a text delta and its token ids and, on the last one, the
/// finish reason.
type ChunkFn = Arc<dyn Fn(&str, &[u32], Option<FinishReason>) -> serde_json::Value + Send + Sync>;

/// Validates a generation request body and turns it into a job, or answers the error.
#[allow(clippy::result_large_err)]
fn prepare<R>(
    state: &ApiState,
    body: Result<Json<R>, JsonRejection>,
    validate: impl FnOnce(R, &str) -> Result<R, ApiError>,
    job: impl FnOnce(&R, &ChatFormat) -> Result<Job, ApiError>,
) -> Result<(R, Job), Response> {
    let request = body
        .map_err(ApiError::from)
        .and_then(|Json(r)| validate(r, &state.model_name))
        .map_err(IntoResponse::into_response)?;
    if state.backend.is_none() {
        return Err(no_generation(state));
    }
    let job = job(&request, &state.chat).map_err(IntoResponse::into_response)?;
    Ok((request, job))
}

/// How an endpoint shapes its answer.
struct Shape {
    /// Sent before the first token of a stream (chat's role chunk).
    opening: Option<serde_json::Value>,
    /// One streamed chunk: a text delta and its token ids, and the finish reason on the last
    /// one.
    chunk: ChunkFn,
    /// The whole non-streamed answer.
    full: Box<dyn FnOnce(&Generation) -> serde_json::Value + Send>,
}

/// Runs a generation and answers with one JSON object, or with SSE chunks as tokens arrive.
async fn respond(
    state: &Arc<ApiState>,
    session: u64,
    job: Job,
    stream: bool,
    shape: Shape,
) -> Response {
    let internal = |e: tokio::task::JoinError| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e.to_string())
    };
    if !stream {
        let (handle, _cancel_on_disconnect) =
            match run_job(state, session, job, |_| ControlFlow::Continue(())) {
                Ok(started) => started,
                Err(e) => return e.into_response(),
            };
        return match handle.await {
            Ok(Ok(generation)) => Json((shape.full)(&generation)).into_response(),
            Ok(Err(e)) => generation_error(e).into_response(),
            Err(e) => internal(e).into_response(),
        };
    }
    let (tx, rx) = mpsc::unbounded_channel();
    if let Some(opening) = shape.opening {
        let _ = tx.send(opening);
    }
    let (token_tx, chunk) = (tx.clone(), shape.chunk.clone());
    // A send fails once the stream is dropped: the client is gone.
    let started = run_job(state, session, job, move |token| {
        match token_tx.send(chunk(&token.text_delta, &[token.choice.id], None)) {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        }
    });
    let (handle, cancel_on_disconnect) = match started {
        Ok(started) => started,
        Err(e) => return e.into_response(),
    };
    tokio::spawn(async move {
        let last = match handle.await {
            Ok(Ok(generation)) => (shape.chunk)("", &[], Some(generation.finish_reason)),
            Ok(Err(e)) => generation_error(e).body(),
            Err(e) => internal(e).body(),
        };
        let _ = tx.send(last);
    });
    sse(rx, cancel_on_disconnect).into_response()
}

/// Server-sent events: each JSON value as a `data:` event, then `data: [DONE]`. Dropping the
/// stream (the client went away) cancels the generation through `cancel`.
fn sse(
    rx: mpsc::UnboundedReceiver<serde_json::Value>,
    cancel: CancelOnDrop,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let events = futures::stream::unfold((rx, cancel), |(mut rx, cancel)| async move {
        let value = rx.recv().await?;
        Some((Ok(Event::default().data(value.to_string())), (rx, cancel)))
    });
    Sse::new(events.chain(futures::stream::once(async { Ok(Event::default().data("[DONE]")) })))
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

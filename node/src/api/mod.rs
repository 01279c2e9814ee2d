//! The gateway's OpenAI-compatible HTTP API (axum): completions and chat completions, with
//! SSE streaming, log-probabilities and usage; models; health. Errors use OpenAI's JSON shape.

mod types;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
use tokio::sync::mpsc;

use crate::generate::{
    ChatFormat, FinishReason, GeneratedToken, Generation, GenerationError, Prompt, TextModel,
    generate,
};
pub use types::{ApiError, ChatRequest, CompletionRequest, EmbeddingRequest, Job};

/// Something that generates for the API: the routed remote model on a gateway.
pub type Backend = Arc<std::sync::Mutex<Box<dyn TextModel + Send>>>;

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
}

impl ApiState {
    pub fn new(
        model_name: String,
        tokenizer: Tokenizer,
        chat: ChatFormat,
        backend: Option<Backend>,
        embedder: Option<Embedder>,
        routing: Option<Arc<std::sync::Mutex<crate::gateway::RouteReport>>>,
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
        })
    }
}

/// The API's routes.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/healthz", get(health))
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/embeddings", post(embeddings))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found_error", "no such endpoint")
                .into_response()
        })
        .with_state(state)
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
    Json(serde_json::json!({"status": "ok", "routing": routing}))
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
    match tokio::task::spawn_blocking(move || embedder(&texts)).await {
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

fn run_job(
    state: &Arc<ApiState>,
    job: Job,
    on_token: impl FnMut(&GeneratedToken) + Send + 'static,
) -> tokio::task::JoinHandle<Result<Generation, GenerationError>> {
    let state = state.clone();
    let session = state.next_session.fetch_add(1, Ordering::Relaxed);
    tokio::task::spawn_blocking(move || {
        let backend = state.backend.as_ref().expect("handlers check for a backend");
        // A generation that panicked must not take the API down with it: sessions are
        // independent, so a half-finished one leaves at most its own session behind.
        let mut backend = backend.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let prompt =
            if job.templated { Prompt::Chat(&job.prompt) } else { Prompt::Text(&job.prompt) };
        generate(
            &mut **backend,
            &state.tokenizer,
            session,
            prompt,
            job.max_tokens,
            &job.stop,
            job.params,
            on_token,
        )
    })
}

fn generation_error(e: GenerationError) -> ApiError {
    match e {
        GenerationError::Engine(_) | GenerationError::NoLogits => {
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
    let (id, model, created) = (
        format!("cmpl-{}", state.next_session.load(Ordering::Relaxed)),
        state.model_name.clone(),
        now(),
    );
    let (tokenizer, logprobs) = (state.tokenizer.clone(), request.logprobs);
    let shape = Shape {
        opening: None,
        chunk: Arc::new({
            let (id, model) = (id.clone(), model.clone());
            move |text, finish| types::completion_chunk(&id, &model, created, text, finish)
        }),
        full: Box::new(move |g| {
            types::completion_response(&id, &model, created, g, logprobs, &tokenizer)
        }),
    };
    respond(&state, job, request.stream.unwrap_or(false), shape).await
}

async fn chat_completions(
    State(state): State<Arc<ApiState>>,
    body: Result<Json<ChatRequest>, JsonRejection>,
) -> Response {
    let (request, job) = match prepare(&state, body, ChatRequest::validate, ChatRequest::job) {
        Ok(prepared) => prepared,
        Err(response) => return response,
    };
    let (id, model, created) = (
        format!("chatcmpl-{}", state.next_session.load(Ordering::Relaxed)),
        state.model_name.clone(),
        now(),
    );
    let (tokenizer, top_logprobs) = (state.tokenizer.clone(), request.top_logprobs());
    let shape = Shape {
        opening: Some(types::chat_chunk(&id, &model, created, Some("assistant"), "", None)),
        chunk: Arc::new({
            let (id, model) = (id.clone(), model.clone());
            move |text, finish| types::chat_chunk(&id, &model, created, None, text, finish)
        }),
        full: Box::new(move |g| {
            types::chat_response(&id, &model, created, g, top_logprobs, &tokenizer)
        }),
    };
    respond(&state, job, request.stream.unwrap_or(false), shape).await
}

/// Builds one streamed chunk from a text delta and, on the last one, the finish reason.
type ChunkFn = Arc<dyn Fn(&str, Option<FinishReason>) -> serde_json::Value + Send + Sync>;

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
    /// One streamed chunk: a text delta, and the finish reason on the last one.
    chunk: ChunkFn,
    /// The whole non-streamed answer.
    full: Box<dyn FnOnce(&Generation) -> serde_json::Value + Send>,
}

/// Runs a generation and answers with one JSON object, or with SSE chunks as tokens arrive.
async fn respond(state: &Arc<ApiState>, job: Job, stream: bool, shape: Shape) -> Response {
    let internal = |e: tokio::task::JoinError| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e.to_string())
    };
    if !stream {
        return match run_job(state, job, |_| {}).await {
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
    let handle = run_job(state, job, move |token| {
        let _ = token_tx.send(chunk(&token.text_delta, None));
    });
    tokio::spawn(async move {
        let last = match handle.await {
            Ok(Ok(generation)) => (shape.chunk)("", Some(generation.finish_reason)),
            Ok(Err(e)) => generation_error(e).body(),
            Err(e) => internal(e).body(),
        };
        let _ = tx.send(last);
    });
    sse(rx).into_response()
}

/// Server-sent events: each JSON value as a `data:` event, then `data: [DONE]`.
fn sse(
    rx: mpsc::UnboundedReceiver<serde_json::Value>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let events = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|value| (Ok(Event::default().data(value.to_string())), rx))
    });
    Sse::new(events.chain(futures::stream::once(async { Ok(Event::default().data("[DONE]")) })))
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

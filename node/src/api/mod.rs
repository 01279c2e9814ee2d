//! The gateway's OpenAI-compatible HTTP API (axum): completions and chat completions, with
//! SSE streaming, log-probabilities and usage; models; health. Errors use OpenAI's JSON shape.
//! `protocol-spec/openai-api.md` lists every field: implemented, or refused by name.

mod conn;
mod edge;
mod error;
mod request;
mod response;

use std::convert::Infallible;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Json, Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::{Stream, StreamExt};
use tokenizers::Tokenizer;
use tokio::sync::{Semaphore, mpsc};

use crate::gateway::{DraftNodes, RoutingStatus};
use crate::generate::{
    ChatFormat, Drafter, Generation, GenerationError, ModelDrafter, Prompt, PromptLookup, Request,
    Speculation, TextModel, generate_speculating,
};
use crate::telemetry::{GatewayMetrics, GatewayNow, NodeTab};
pub use edge::ApiLimits;
pub use error::ApiError;
pub use request::{ChatRequest, CompletionRequest, EmbeddingRequest, Job, ModelLimits};
use response::{Answer, Delta, TokenNames};

/// Opens a text model of its own for each request (the routed remote model on a gateway), so
/// requests generate concurrently.
pub type Backend = Arc<dyn Fn() -> Box<dyn TextModel + Send> + Send + Sync>;

/// Something that embeds texts for the API; returns the embeddings and the tokens used.
pub type Embedder = Arc<
    dyn Fn(&[String]) -> Result<(Vec<Vec<f32>>, usize), crate::engine::EngineError> + Send + Sync,
>;

/// A gateway routing over the swarm: what it tells `/healthz`, and the metrics its routing
/// and its API record into (`/metrics`).
pub struct Routing {
    pub status: Arc<dyn RoutingStatus>,
    pub metrics: GatewayMetrics,
    /// Drafts a decode step verifies at most, one round trip through the route for all of
    /// them (`generate::speculate`); 0 decodes a token a step.
    pub drafts: usize,
    /// Where drafts come from.
    pub drafts_from: DraftSource,
}

/// Where a speculating gateway's drafts come from.
#[derive(Clone)]
pub enum DraftSource {
    /// Prompt lookup (`generate::PromptLookup`): free, in this process.
    PromptLookup,
    /// A draft model run in this process (`generate::ModelDrafter`).
    Model(Arc<crate::engine::Pipeline>),
    /// Draft nodes of the swarm, paid per token (`gateway::RemoteDrafter`).
    Nodes(Arc<DraftNodes>),
}

impl DraftSource {
    /// The drafter of the generation `session`.
    pub fn drafter(&self, session: u64) -> Box<dyn Drafter> {
        match self {
            DraftSource::PromptLookup => Box::new(PromptLookup::default()),
            DraftSource::Model(model) => Box::new(ModelDrafter::new(model.clone(), session)),
            DraftSource::Nodes(nodes) => Box::new(nodes.drafter(session)),
        }
    }

    /// Its name in `/healthz`.
    fn name(&self) -> &'static str {
        match self {
            DraftSource::PromptLookup => "prompt_lookup",
            DraftSource::Model(_) => "draft_model",
            DraftSource::Nodes(_) => "draft_nodes",
        }
    }
}

/// Shared state of the API.
pub struct ApiState {
    /// The served model's name, context length and vocabulary size.
    pub model: ModelLimits,
    /// When the gateway started serving it (`created` in `/v1/models`).
    created: u64,
    pub tokenizer: Arc<Tokenizer>,
    /// How chat messages become a prompt: the model's template, or the plain transcript.
    pub chat: ChatFormat,
    pub backend: Option<Backend>,
    pub embedder: Option<Embedder>,
    /// Routing facts for `/healthz`, when the backend routes over the swarm.
    pub routing: Option<Routing>,
    metrics: GatewayMetrics,
    next_session: AtomicU64,
    /// One permit per generation allowed to run at once.
    sessions: Arc<Semaphore>,
    max_sessions: usize,
}

impl ApiState {
    pub fn new(
        model: ModelLimits,
        tokenizer: Tokenizer,
        chat: ChatFormat,
        backend: Option<Backend>,
        embedder: Option<Embedder>,
        routing: Option<Routing>,
        max_sessions: usize,
    ) -> Arc<Self> {
        let seed =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
        Arc::new(Self {
            model,
            created: now(),
            tokenizer: Arc::new(tokenizer),
            chat,
            backend,
            embedder,
            metrics: routing
                .as_ref()
                .map(|r| r.metrics.clone())
                .unwrap_or_else(|| GatewayMetrics::new(None)),
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
    fn admit(&self, sessions: usize) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        self.sessions.clone().try_acquire_many_owned(sessions as u32).map_err(|_| {
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
    let open = Router::new().route("/healthz", get(health)).route("/metrics", get(metrics));
    let v1 = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/embeddings", post(embeddings))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found_error", "no such endpoint")
                .into_response()
        })
        // axum keeps the `Allow` header; the body becomes an OpenAI error instead of nothing.
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                "this endpoint does not take that method",
            )
            .into_response()
        });
    // The body limit is the edge's (`ApiLimits::max_body_bytes`), not axum's own 2 MiB.
    limits
        .guard(open, v1)
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(state.clone(), count_requests))
        .with_state(state)
}

/// Counts every answer by endpoint and status (a streamed answer when its stream starts).
/// The endpoint is the route that matched (`/v1/models/{id}`), `other` for no route: a
/// bounded set of labels, whatever paths clients ask for.
async fn count_requests(
    State(state): State<Arc<ApiState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let endpoint = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "other".to_owned(), |route| route.as_str().to_owned());
    let response = next.run(request).await;
    state.metrics.request(&endpoint, response.status().as_u16());
    response
}

/// Prometheus metrics (`telemetry`), outside the API key like `/healthz`.
async fn metrics(State(state): State<Arc<ApiState>>) -> Response {
    let (peers_banned, peers_connected, tabs) = match &state.routing {
        Some(routing) => {
            let report = routing.status.route_report();
            let tabs: Vec<NodeTab> = report
                .lock()
                .expect("route report")
                .payments
                .iter()
                .map(|t| NodeTab {
                    operator: t.operator,
                    metered: t.metered,
                    owed: t.owed,
                    signed: t.signed,
                })
                .collect();
            (routing.status.banned_peers(), routing.status.connected_peers(), tabs)
        }
        None => (0, 0, Vec::new()),
    };
    let now = GatewayNow {
        sessions_active: state.active_sessions(),
        peers_banned,
        peers_connected,
        tabs,
    };
    let text = state.metrics.encode(&now);
    ([(axum::http::header::CONTENT_TYPE, crate::telemetry::CONTENT_TYPE)], text).into_response()
}

/// Liveness, plus the current route, the latest failovers (with their stall, and whether a
/// peer took over), and what the gateway owes each node it paid. `503` with
/// `status: unservable` and the `unserved_blocks` while some block has no usable peer: every
/// request would fail.
async fn health(State(state): State<Arc<ApiState>>) -> Response {
    let unserved = state.routing.as_ref().map(|r| r.status.unserved_blocks()).unwrap_or_default();
    let routing = state.routing.as_ref().map(|r| {
        let report = r.status.route_report();
        let report = report.lock().expect("route report");
        serde_json::json!({
            "route": report.route.iter().map(|h| serde_json::json!({
                "peer": h.peer.to_string(), "first_block": h.first_block, "last_block": h.last_block,
            })).collect::<Vec<_>>(),
            "failovers": report.failovers.iter().map(|f| serde_json::json!({
                "failed_peer": f.failed_peer.to_string(), "reason": f.reason,
                "recovered": !f.replacement.is_empty(),
                "replacement": f.replacement.iter().map(|h| h.peer.to_string()).collect::<Vec<_>>(),
                "stall_ms": f.stall.as_secs_f64() * 1e3,
            })).collect::<Vec<_>>(),
            "failovers_total": report.failovers_total,
            // Per connected peer: "direct", or "relayed" while reached only through a relay.
            "paths": r.status.peer_paths().into_iter().map(|(peer, path)| {
                (peer.to_string(), serde_json::json!(path))
            }).collect::<serde_json::Map<_, _>>(),
            "relayed_connections": r.status.relayed_connections(),
            "peer": r.status.local_peer().to_string(),
            "cross_check": {
                "enabled": report.cross_check,
                "disputes_total": report.disputes_total,
                "caught_total": report.caught_total,
            },
            "speculation": {
                "max_drafts": r.drafts,
                "drafts_from": r.drafts_from.name(),
                "drafted_tokens": r.metrics.drafted_tokens(),
                "accepted_tokens": r.metrics.accepted_tokens(),
            },
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
    let (status, code) = if unserved.is_empty() {
        ("ok", StatusCode::OK)
    } else {
        ("unservable", StatusCode::SERVICE_UNAVAILABLE)
    };
    let body = serde_json::json!({
        "status": status, "unserved_blocks": unserved, "sessions": sessions, "routing": routing,
    });
    (code, Json(body)).into_response()
}

fn model_object(state: &ApiState) -> serde_json::Value {
    serde_json::json!({
        "id": state.model.name, "object": "model", "created": state.created, "owned_by": "infergrid",
    })
}

async fn models(State(state): State<Arc<ApiState>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({"object": "list", "data": [model_object(&state)]}))
}

async fn model(State(state): State<Arc<ApiState>>, Path(id): Path<String>) -> Response {
    if id == state.model.name {
        Json(model_object(&state)).into_response()
    } else {
        ApiError::model_not_found(&id, &state.model.name).into_response()
    }
}

async fn embeddings(
    State(state): State<Arc<ApiState>>,
    body: Result<Json<EmbeddingRequest>, JsonRejection>,
) -> Response {
    let request =
        match body.map_err(ApiError::from).and_then(|Json(r)| r.validate(&state.model.name)) {
            Ok(r) => r,
            Err(e) => return e.into_response(),
        };
    let Some(embedder) = state.embedder.clone() else {
        return ApiError::invalid(
            "model",
            format!("model {} is a text generation model; it has no embeddings", state.model.name),
        )
        .into_response();
    };
    let texts = request.texts();
    let permit = match state.admit(1) {
        Ok(permit) => permit,
        Err(e) => return e.into_response(),
    };
    let embedded = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        embedder(&texts)
    });
    match embedded.await {
        Ok(Ok((embeddings, tokens))) => Json(response::embedding_response(
            &state.model.name,
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

fn no_generation(state: &ApiState) -> ApiError {
    ApiError::invalid(
        "model",
        format!("model {} is an embedding model; use /v1/embeddings", state.model.name),
    )
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

/// A request's model that refuses every step once its request is cancelled: the generation
/// stops before its next swarm step (a prefill chunk, a scored prompt token, a decode step)
/// and pays for nothing more.
struct Cancellable {
    model: Box<dyn TextModel + Send>,
    cancel: Cancel,
}

impl TextModel for Cancellable {
    fn logits(
        &mut self,
        session: u64,
        position: usize,
        tokens: &[i64],
    ) -> Result<crate::engine::Activation, crate::engine::EngineError> {
        if self.cancel.is_set() {
            return Err(crate::engine::EngineError::Cancelled);
        }
        self.model.logits(session, position, tokens)
    }
    fn close(&mut self, session: u64) {
        self.model.close(session)
    }
    fn context_length(&self) -> usize {
        self.model.context_length()
    }
    fn eos_ids(&self) -> &[u32] {
        self.model.eos_ids()
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

/// One choice's generation, running.
type Running = tokio::task::JoinHandle<Result<Generation, GenerationError>>;

/// Starts the job's choices, each a session on a model of its own, if that many sessions are
/// free: otherwise `429` with `Retry-After` (no queue: a client that waits can retry).
/// `on_token(i)` sees every token of choice `i` and may break to stop it; the returned guard
/// cancels every choice when dropped.
#[allow(clippy::result_large_err)]
fn run_job<F>(
    state: &Arc<ApiState>,
    first_session: u64,
    job: Job,
    mut on_token: impl FnMut(usize) -> F,
) -> Result<(Vec<Running>, CancelOnDrop), ApiError>
where
    F: FnMut(&crate::generate::GeneratedToken) -> ControlFlow<()> + Send + 'static,
{
    let permits = Arc::new(state.admit(job.choices())?);
    let backend = state.backend.as_ref().expect("handlers check for a backend");
    let (cancel, job) = (Cancel::default(), Arc::new(job));
    let running = (0..job.choices())
        .map(|index| {
            let mut model = Cancellable { model: backend(), cancel: cancel.clone() };
            let session = first_session + index as u64;
            let (state, job, permits) = (state.clone(), job.clone(), permits.clone());
            let (cancelled, mut on_token) = (cancel.clone(), on_token(index));
            // The session id is the one on the wire: every node's log names it too.
            let span = tracing::info_span!("generation", request = first_session, session);
            tokio::task::spawn_blocking(move || {
                let _in_span = span.enter();
                let _permits = permits;
                let per_prompt = job.output.choices_per_prompt;
                let prompt = &job.prompts[index / per_prompt];
                let mut params = job.params.clone();
                params.seed = params.seed.wrapping_add((index % per_prompt) as u64);
                let metrics = &state.metrics;
                tracing::info!(
                    prompt_tokens = prompt.ids.len(),
                    max_tokens = prompt.max_tokens,
                    "generating"
                );
                let (started, mut last_token) = (Instant::now(), None::<Instant>);
                let mut speculation = state
                    .routing
                    .as_ref()
                    .filter(|r| r.drafts > 0)
                    .map(|r| Speculation::new(r.drafts_from.drafter(session), r.drafts));
                let request = Request {
                    session,
                    prompt: Prompt::Ids(&prompt.ids),
                    max_tokens: prompt.max_tokens,
                    stop: &job.stop,
                    params,
                };
                let generation = generate_speculating(
                    &mut model,
                    &state.tokenizer,
                    request,
                    speculation.as_mut(),
                    |token| {
                        match last_token.replace(Instant::now()) {
                            None => metrics.first_token(started.elapsed()),
                            Some(previous) => metrics.next_token(previous.elapsed()),
                        }
                        if cancelled.is_set() { ControlFlow::Break(()) } else { on_token(token) }
                    },
                );
                match &generation {
                    Ok(generation) => {
                        tracing::info!(
                            tokens = generation.tokens.len(),
                            finish = ?generation.finish_reason,
                            ms = started.elapsed().as_millis() as u64,
                            drafted = generation.drafted,
                            accepted = generation.accepted,
                            "finished"
                        );
                        metrics.speculation(generation.drafted, generation.accepted);
                        // Counted as `usage` counts them: each prompt once, over its choices.
                        let prompt_tokens =
                            if index % per_prompt == 0 { generation.prompt_ids.len() } else { 0 };
                        metrics.generation(prompt_tokens, generation.tokens.len());
                    }
                    Err(e) => tracing::warn!("failed: {e}"),
                }
                generation
            })
        })
        .collect();
    Ok((running, CancelOnDrop(cancel)))
}

fn generation_error(e: GenerationError) -> ApiError {
    match e {
        GenerationError::Engine(_) | GenerationError::NoLogits | GenerationError::Cancelled => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", e.to_string())
        }
        other => ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", other.to_string()),
    }
}

/// The request body as a JSON object (fields are then checked one by one: see `request`).
type Body = Result<Json<serde_json::Map<String, serde_json::Value>>, JsonRejection>;

async fn completions(State(state): State<Arc<ApiState>>, body: Body) -> Response {
    let job = prepare(&state, body, |state, body| {
        CompletionRequest::read(body)?.job(&state.model, &state.tokenizer)
    });
    let job = match job.await {
        Ok(job) => job,
        Err(e) => return e.into_response(),
    };
    let first = state.next_session.fetch_add(job.choices() as u64, Ordering::Relaxed);
    let shape = Shape::new(&state, format!("cmpl-{first}"), &job, Endpoint::Completions);
    respond(&state, first, job, shape).await
}

async fn chat_completions(State(state): State<Arc<ApiState>>, body: Body) -> Response {
    let job = prepare(&state, body, |state, body| {
        ChatRequest::read(body)?.job(&state.model, &state.tokenizer, &state.chat)
    });
    let job = match job.await {
        Ok(job) => job,
        Err(e) => return e.into_response(),
    };
    let first = state.next_session.fetch_add(job.choices() as u64, Ordering::Relaxed);
    let shape = Shape::new(&state, format!("chatcmpl-{first}"), &job, Endpoint::Chat);
    respond(&state, first, job, shape).await
}

/// Turns a generation request body into a job, or the error to answer: reading and checking
/// the fields, rendering and tokenizing the prompt, measuring it against the context — all
/// before a session is taken or a step paid for. Tokenizing a long prompt takes a while, so
/// it runs off the async workers.
async fn prepare(
    state: &Arc<ApiState>,
    body: Body,
    job: impl FnOnce(&ApiState, serde_json::Map<String, serde_json::Value>) -> Result<Job, ApiError>
    + Send
    + 'static,
) -> Result<Job, ApiError> {
    let Json(body) = body?;
    if state.backend.is_none() {
        return Err(no_generation(state));
    }
    let (state, limit) = (state.clone(), state.max_sessions);
    let job = tokio::task::spawn_blocking(move || job(&state, body)).await.map_err(|e| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e.to_string())
    })??;
    // Each choice is a session: more than the gateway ever runs at once would be a 429 forever.
    if job.choices() > limit {
        return Err(ApiError::invalid(
            "n",
            format!("{} choices are more than this gateway's {limit} sessions", job.choices()),
        ));
    }
    Ok(job)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Completions,
    Chat,
}

/// How an endpoint shapes its answer, whole or streamed.
struct Shape {
    id: String,
    model: String,
    created: u64,
    endpoint: Endpoint,
    output: request::Output,
    tokenizer: Arc<Tokenizer>,
}

impl Shape {
    fn new(state: &ApiState, id: String, job: &Job, endpoint: Endpoint) -> Self {
        Self {
            id,
            model: state.model.name.clone(),
            created: now(),
            endpoint,
            output: job.output.clone(),
            tokenizer: state.tokenizer.clone(),
        }
    }

    fn answer(&self) -> Answer<'_> {
        Answer { id: &self.id, model: &self.model, created: self.created }
    }

    fn names(&self) -> TokenNames<'_> {
        TokenNames { tokenizer: &self.tokenizer, as_ids: self.output.token_ids_as_names }
    }

    /// The whole answer: a choice per generation.
    fn full(&self, generations: &[Generation]) -> serde_json::Value {
        let (answer, names) = (self.answer(), self.names());
        match self.endpoint {
            Endpoint::Completions => {
                response::completion_response(&answer, generations, &self.output, &names)
            }
            Endpoint::Chat => response::chat_response(&answer, generations, &self.output, &names),
        }
    }

    /// One streamed chunk; `first` is its choice's first (chat's carries the role).
    fn chunk(&self, delta: &Delta, first: bool) -> serde_json::Value {
        let (answer, names) = (self.answer(), self.names());
        match self.endpoint {
            Endpoint::Completions => {
                response::completion_chunk(&answer, delta, &self.output, &names)
            }
            Endpoint::Chat => response::chat_chunk(&answer, delta, &self.output, &names, first),
        }
    }

    /// The chunk that ends choice `index`: its held-back tail with the finish reason.
    fn finish_chunk(&self, index: usize, generation: &Generation) -> serde_json::Value {
        let offset = generation.text.chars().count() - generation.tail.chars().count();
        let finish = Delta {
            index,
            text: &generation.tail,
            token: None,
            offset,
            finish: Some(generation.finish_reason),
        };
        self.chunk(&finish, false)
    }

    /// The chunk that ends a stream with `stream_options.include_usage`.
    fn usage_chunk(&self, generations: &[Generation]) -> serde_json::Value {
        let object = match self.endpoint {
            Endpoint::Completions => "text_completion",
            Endpoint::Chat => "chat.completion.chunk",
        };
        response::usage_chunk(&self.answer(), object, generations, &self.output)
    }
}

/// Runs a generation and answers with one JSON object, or with SSE chunks as tokens arrive.
/// The answer's id names its first choice's session (`cmpl-<session>`), as nodes and logs
/// see it; choice `i` runs as session `first_session + i`.
async fn respond(state: &Arc<ApiState>, first_session: u64, job: Job, shape: Shape) -> Response {
    let internal = |e: tokio::task::JoinError| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e.to_string())
    };
    if !job.output.stream {
        let (running, _cancel_on_disconnect) =
            match run_job(state, first_session, job, |_| |_: &_| ControlFlow::Continue(())) {
                Ok(started) => started,
                Err(e) => return e.into_response(),
            };
        let mut generations = Vec::with_capacity(running.len());
        for choice in running {
            match choice.await {
                Ok(Ok(generation)) => generations.push(generation),
                Ok(Err(e)) => return generation_error(e).into_response(),
                Err(e) => return internal(e).into_response(),
            }
        }
        return Json(shape.full(&generations)).into_response();
    }
    let (shape, choices) = (Arc::new(shape), job.choices());
    let (tx, rx) = mpsc::unbounded_channel();
    if shape.endpoint == Endpoint::Chat {
        for index in 0..choices {
            let opening = Delta { index, text: "", token: None, offset: 0, finish: None };
            let _ = tx.send(shape.chunk(&opening, true));
        }
    }
    // A send fails once the stream is dropped: the client is gone.
    let started = run_job(state, first_session, job, |index| {
        let (tx, shape, mut offset) = (tx.clone(), shape.clone(), 0);
        move |token: &crate::generate::GeneratedToken| {
            let text = &token.text_delta;
            let delta = Delta { index, text, token: Some(token), offset, finish: None };
            offset += text.chars().count();
            match tx.send(shape.chunk(&delta, false)) {
                Ok(()) => ControlFlow::Continue(()),
                Err(_) => ControlFlow::Break(()),
            }
        }
    });
    let (running, cancel_on_disconnect) = match started {
        Ok(started) => started,
        Err(e) => return e.into_response(),
    };
    let stop_all = cancel_on_disconnect.0.clone();
    tokio::spawn(async move {
        // Each choice's finish is sent as it ends; an error ends the stream and stops the
        // other choices.
        let finishing = running.into_iter().enumerate().map(|(index, choice)| {
            let (tx, shape) = (tx.clone(), shape.clone());
            async move {
                let generation = choice.await.map_err(internal)?.map_err(generation_error)?;
                let _ = tx.send(shape.finish_chunk(index, &generation));
                Ok::<_, ApiError>(generation)
            }
        });
        match futures::future::try_join_all(finishing).await {
            Ok(generations) if shape.output.include_usage => {
                let _ = tx.send(shape.usage_chunk(&generations));
            }
            Ok(_) => {}
            Err(e) => {
                stop_all.0.store(true, Ordering::Relaxed);
                let _ = tx.send(e.body());
            }
        }
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

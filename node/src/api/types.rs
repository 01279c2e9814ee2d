//! OpenAI request and response bodies, and the OpenAI error shape.

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tokenizers::Tokenizer;

use crate::generate::{ChatFormat, ChatMessage, FinishReason, Generation, Prompt, SamplingParams};

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    /// Seconds after which the client may retry (`Retry-After`), when it is only too early.
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self { status, kind, message: message.into(), retry_after: None }
    }

    /// Tells the client to retry after `seconds`.
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": null, "code": null}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    /// A body that does not parse is the client's error (400); one over the size limit (413)
    /// or arriving too slowly (408) keeps its own status.
    fn from(rejection: JsonRejection) -> Self {
        let status = match rejection.status() {
            status @ (StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT) => status,
            _ => StatusCode::BAD_REQUEST,
        };
        let message = format!("malformed request body: {}", rejection.body_text());
        ApiError::new(status, "invalid_request_error", message)
    }
}

/// A string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// Sampling fields shared by both endpoints.
#[derive(Debug, Clone, Deserialize)]
pub struct Sampling {
    pub max_tokens: Option<usize>,
    pub max_completion_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Option<OneOrMany>,
}

impl Sampling {
    fn check(&self) -> Result<(), ApiError> {
        if let Some(t) = self.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(ApiError::invalid(format!("temperature {t} is outside [0, 2]")));
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(ApiError::invalid(format!("top_p {p} is outside (0, 1]")));
        }
        if self.max_tokens.or(self.max_completion_tokens) == Some(0) {
            return Err(ApiError::invalid("max_tokens must be at least 1"));
        }
        Ok(())
    }

    /// The generation of `prompt` these fields ask for, up to `max_tokens`.
    fn job(&self, prompt: String, max_tokens: usize, top_logprobs: usize) -> Job {
        Job {
            prompt,
            templated: false,
            max_tokens,
            stop: self.stop.clone().map(OneOrMany::into_vec).unwrap_or_default(),
            params: SamplingParams {
                temperature: self.temperature.unwrap_or(1.0),
                top_k: 0,
                top_p: self.top_p.unwrap_or(1.0),
                seed: self.seed.unwrap_or(0),
                top_logprobs,
            },
        }
    }
}

/// What a generation request asks the generator for.
#[derive(Debug, Clone)]
pub struct Job {
    pub prompt: String,
    /// The prompt is a rendered chat template, which holds its own special tokens.
    pub templated: bool,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub params: SamplingParams,
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: OneOrMany,
    #[serde(flatten)]
    pub sampling: Sampling,
    /// Number of most likely alternatives to report per token.
    pub logprobs: Option<usize>,
    pub stream: Option<bool>,
}

impl CompletionRequest {
    pub fn job(&self) -> Job {
        let prompt = self.prompt.clone().into_vec().concat();
        self.sampling.job(
            prompt,
            self.sampling.max_tokens.unwrap_or(16),
            self.logprobs.unwrap_or(0),
        )
    }
    pub fn validate(self, model: &str) -> Result<Self, ApiError> {
        check_model(&self.model, model)?;
        self.sampling.check()?;
        if let OneOrMany::Many(prompts) = &self.prompt
            && prompts.len() != 1
        {
            return Err(ApiError::invalid("exactly one prompt per request is supported"));
        }
        if self.logprobs.is_some_and(|n| n > 20) {
            return Err(ApiError::invalid("logprobs must be at most 20"));
        }
        Ok(self)
    }
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(flatten)]
    pub sampling: Sampling,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<usize>,
    pub stream: Option<bool>,
}

impl ChatRequest {
    /// The job, its prompt rendered from the messages in the model's chat format.
    pub fn job(&self, format: &ChatFormat) -> Result<Job, ApiError> {
        let max_tokens =
            self.sampling.max_completion_tokens.or(self.sampling.max_tokens).unwrap_or(64);
        let rendered =
            format.render(&self.messages).map_err(|e| ApiError::invalid(e.to_string()))?;
        let templated = matches!(format.prompt(&rendered), Prompt::Chat(_));
        let job = self.sampling.job(rendered, max_tokens, self.top_logprobs().unwrap_or(0));
        Ok(Job { templated, ..job })
    }
    pub fn validate(self, model: &str) -> Result<Self, ApiError> {
        check_model(&self.model, model)?;
        self.sampling.check()?;
        if self.messages.is_empty() {
            return Err(ApiError::invalid("messages must not be empty"));
        }
        if let Some(bad) = self
            .messages
            .iter()
            .find(|m| !["system", "user", "assistant", "developer"].contains(&m.role.as_str()))
        {
            return Err(ApiError::invalid(format!("unknown message role {:?}", bad.role)));
        }
        if self.top_logprobs.is_some_and(|n| n > 20) {
            return Err(ApiError::invalid("top_logprobs must be at most 20"));
        }
        Ok(self)
    }
    pub fn top_logprobs(&self) -> Option<usize> {
        self.logprobs.unwrap_or(false).then(|| self.top_logprobs.unwrap_or(0))
    }
}

fn check_model(asked: &str, served: &str) -> Result<(), ApiError> {
    if asked == served {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("model {asked:?} does not exist; this gateway serves {served:?}"),
        ))
    }
}

fn finish(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

fn token_text(tokenizer: &Tokenizer, id: u32) -> String {
    tokenizer.decode(&[id], false).unwrap_or_default()
}

fn usage(generation: &Generation) -> Value {
    let (prompt, completion) = (generation.prompt_ids.len(), generation.tokens.len());
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

pub fn completion_response(
    id: &str,
    model: &str,
    created: u64,
    g: &Generation,
    logprobs: Option<usize>,
    tokenizer: &Tokenizer,
) -> Value {
    let logprobs = logprobs.map(|_| {
        let mut offset = 0;
        let offsets: Vec<usize> = g.tokens.iter().map(|t| { let at = offset; offset += t.text_delta.len(); at }).collect();
        json!({
            "tokens": g.tokens.iter().map(|t| token_text(tokenizer, t.choice.id)).collect::<Vec<_>>(),
            "token_logprobs": g.tokens.iter().map(|t| t.choice.logprob).collect::<Vec<_>>(),
            "top_logprobs": g.tokens.iter().map(|t| t.choice.top.iter().map(|(id, lp)| (token_text(tokenizer, *id), json!(lp))).collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>(),
            "text_offset": offsets,
        })
    });
    json!({
        "id": id, "object": "text_completion", "created": created, "model": model,
        "choices": [{
            "index": 0, "text": g.text, "logprobs": logprobs, "finish_reason": finish(g.finish_reason),
            // Extension: the generated token ids, for clients comparing outputs exactly.
            "token_ids": g.tokens.iter().map(|t| t.choice.id).collect::<Vec<_>>(),
        }],
        "usage": usage(g),
    })
}

pub fn completion_chunk(
    id: &str,
    model: &str,
    created: u64,
    text: &str,
    token_ids: &[u32],
    finish_reason: Option<FinishReason>,
) -> Value {
    json!({
        "id": id, "object": "text_completion", "created": created, "model": model,
        "choices": [{
            "index": 0, "text": text, "logprobs": null, "finish_reason": finish_reason.map(finish),
            // Extension, as in the whole answer: the chunk's token ids.
            "token_ids": token_ids,
        }],
    })
}

pub fn chat_response(
    id: &str,
    model: &str,
    created: u64,
    g: &Generation,
    top_logprobs: Option<usize>,
    tokenizer: &Tokenizer,
) -> Value {
    let logprobs = top_logprobs.map(|_| {
        json!({"content": g.tokens.iter().map(|t| {
            let token = token_text(tokenizer, t.choice.id);
            json!({
                "token": token, "logprob": t.choice.logprob, "bytes": token.as_bytes(),
                "top_logprobs": t.choice.top.iter().map(|(id, lp)| {
                    let alt = token_text(tokenizer, *id);
                    json!({"token": alt, "logprob": lp, "bytes": alt.as_bytes()})
                }).collect::<Vec<_>>(),
            })
        }).collect::<Vec<_>>()})
    });
    json!({
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": g.text},
            "logprobs": logprobs,
            "finish_reason": finish(g.finish_reason),
        }],
        "usage": usage(g),
    })
}

pub fn chat_chunk(
    id: &str,
    model: &str,
    created: u64,
    role: Option<&str>,
    content: &str,
    finish_reason: Option<FinishReason>,
) -> Value {
    let mut delta = serde_json::Map::new();
    if let Some(role) = role {
        delta.insert("role".into(), json!(role));
    }
    if finish_reason.is_none() {
        delta.insert("content".into(), json!(content));
    }
    json!({
        "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason.map(finish)}],
    })
}

/// `POST /v1/embeddings`.
#[derive(Debug, Clone, Deserialize)]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: OneOrMany,
    /// `float` (default) or `base64` (little-endian f32), as the openai SDK asks by default.
    pub encoding_format: Option<String>,
}

impl EmbeddingRequest {
    pub fn validate(self, model: &str) -> Result<Self, ApiError> {
        check_model(&self.model, model)?;
        if let Some(format) = &self.encoding_format
            && format != "float"
            && format != "base64"
        {
            return Err(ApiError::invalid(format!(
                "encoding_format {format:?} is not float or base64"
            )));
        }
        if self.texts().is_empty() {
            return Err(ApiError::invalid("input must not be empty"));
        }
        Ok(self)
    }
    pub fn texts(&self) -> Vec<String> {
        self.input.clone().into_vec()
    }
    pub fn base64(&self) -> bool {
        self.encoding_format.as_deref() == Some("base64")
    }
}

pub fn embedding_response(
    model: &str,
    embeddings: &[Vec<f32>],
    tokens: usize,
    base64: bool,
) -> Value {
    use base64::Engine;
    let data: Vec<Value> = embeddings
        .iter()
        .enumerate()
        .map(|(index, e)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = e.iter().flat_map(|v| v.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(e)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
}

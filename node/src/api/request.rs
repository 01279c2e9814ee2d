//! Reading generation requests strictly, as vLLM's OpenAI server does: every field is either
//! implemented, refused with a `400` naming it, or unknown (also a `400` naming it) — never
//! silently ignored, because an ignored `n` or `logit_bias` costs a dApp money and correctness.
//!
//! A request becomes a [`Job`] only after everything that can be refused was checked: the
//! prompt is tokenized and measured against the context before a single step is paid for, and
//! before a stream is opened (an error inside a `200` stream is what SDKs handle worst).

use std::collections::HashMap;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokenizers::Tokenizer;

use super::ApiError;
use crate::generate::{ChatFormat, ChatMessage, Prompt, SamplingParams};

/// What a request needs to know about the served model.
#[derive(Debug, Clone)]
pub struct ModelLimits {
    pub name: String,
    /// Longest prompt + completion, in tokens.
    pub context_length: usize,
    /// Token ids are below this.
    pub vocab_size: usize,
}

/// Fields every generation endpoint accepts.
const SAMPLING_FIELDS: &[&str] = &[
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
    "n",
    "user",
    "return_tokens_as_token_ids",
];
const COMPLETION_FIELDS: &[&str] = &["prompt", "logprobs", "echo", "suffix", "best_of"];
const CHAT_FIELDS: &[&str] = &[
    "messages",
    "max_completion_tokens",
    "logprobs",
    "top_logprobs",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "functions",
    "function_call",
    "response_format",
];

/// Reads a request of `fields` from `body`: each field must be one of them, and a value of the
/// wrong type is a `400` naming its field. The sampling fields are read on their own (a
/// flattened struct would lose the name of a mistyped field).
fn read<T: DeserializeOwned + WithSampling>(
    body: Map<String, Value>,
    fields: &[&str],
) -> Result<T, ApiError> {
    if let Some(unknown) = body
        .keys()
        .find(|k| !SAMPLING_FIELDS.contains(&k.as_str()) && !fields.contains(&k.as_str()))
    {
        return Err(ApiError::invalid(unknown, format!("unknown parameter {unknown:?}")));
    }
    let sampling = deserialize(Value::Object(body.clone()))?;
    Ok(deserialize::<T>(Value::Object(body))?.with_sampling(sampling))
}

fn deserialize<T: DeserializeOwned>(body: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let error = ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!("{}: {}", e.path(), e.inner()),
        );
        match e.path().iter().next() {
            Some(field) => error.with_param(field.to_string()),
            None => error,
        }
    })
}

/// A request whose sampling fields are read separately (see [`read`]).
trait WithSampling {
    fn with_sampling(self, sampling: Sampling) -> Self;
}

/// A string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling fields shared by both endpoints.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Sampling {
    pub model: String,
    /// Any JSON number, so that 0, negatives, fractions and 2^64−1 get a clear `400`.
    max_tokens: Option<serde_json::Number>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    /// vLLM's extension: keep the k most likely tokens (0 or −1: all).
    top_k: Option<i64>,
    /// Any 64-bit integer, as OpenAI and vLLM take it (a negative one too).
    seed: Option<i64>,
    stop: Option<OneOrMany>,
    pub stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    logit_bias: Option<HashMap<String, f64>>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    n: Option<u64>,
    /// An end-user id: OpenAI uses it for abuse monitoring; the gateway has nothing to do
    /// with it but accepts it, as vLLM does.
    #[allow(dead_code)]
    user: Option<String>,
    /// vLLM's extension: name tokens `token_id:N` in log-probabilities.
    #[serde(default)]
    pub return_tokens_as_token_ids: bool,
}

/// How a response is shaped, beyond its tokens.
#[derive(Debug, Clone, Default)]
pub struct Output {
    pub stream: bool,
    /// Streams end with a chunk holding only the usage.
    pub include_usage: bool,
    /// Alternatives to report per token, when log-probabilities were asked for.
    pub logprobs: Option<usize>,
    /// Tokens are named `token_id:N` instead of by their text.
    pub token_ids_as_names: bool,
    /// Choices per prompt (`n`): choice `i` answers prompt `i / n`.
    pub choices_per_prompt: usize,
    /// Each prompt, to put before its choices' text (`echo`); empty without `echo`.
    pub echo: Vec<String>,
}

/// One prompt of a job, checked against the context.
#[derive(Debug, Clone)]
pub struct PromptJob {
    pub ids: Vec<u32>,
    pub max_tokens: usize,
}

/// What a request asks the generator for, checked and tokenized.
#[derive(Debug, Clone)]
pub struct Job {
    pub prompts: Vec<PromptJob>,
    pub stop: Vec<String>,
    pub params: SamplingParams,
    pub output: Output,
}

impl Job {
    /// Choices to generate: `n` per prompt, choice `p·n + j` sampling prompt `p` with seed
    /// `params.seed + j`.
    pub fn choices(&self) -> usize {
        self.prompts.len() * self.output.choices_per_prompt
    }
}

/// Prompt tokens `echo` with `logprobs` may score, over all choices: each is a swarm step.
const MAX_ECHO_SCORED_TOKENS: usize = 1024;
/// Choices per request (`n`): each runs as a session of its own, so a request with many
/// takes as many of the gateway's session slots.
const MAX_CHOICES: usize = 8;
/// At most this many alternatives per token, as OpenAI allows.
const MAX_LOGPROBS: usize = 20;
/// Stop strings per request, and bytes per stop string: the output's end is searched for
/// each after every token.
const MAX_STOPS: usize = 4;
const MAX_STOP_BYTES: usize = 256;

impl Sampling {
    fn check(&self, limits: &ModelLimits) -> Result<(), ApiError> {
        if self.model != limits.name {
            return Err(ApiError::model_not_found(&self.model, &limits.name));
        }
        if let Some(t) = self.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(ApiError::invalid(
                "temperature",
                format!("temperature {t} is outside [0, 2]"),
            ));
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(ApiError::invalid("top_p", format!("top_p {p} is outside (0, 1]")));
        }
        if self.top_k.is_some_and(|k| k < -1) {
            return Err(ApiError::invalid("top_k", "top_k must be -1 (all), 0 (all) or positive"));
        }
        for (param, penalty) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if let Some(p) = penalty
                && !(-2.0..=2.0).contains(&p)
            {
                return Err(ApiError::invalid(param, format!("{param} {p} is outside [-2, 2]")));
            }
        }
        if self.n.is_some_and(|n| !(1..=MAX_CHOICES as u64).contains(&n)) {
            return Err(ApiError::invalid("n", format!("n must be between 1 and {MAX_CHOICES}")));
        }
        if self.stream_options.is_some() && self.stream != Some(true) {
            return Err(ApiError::invalid("stream_options", "stream_options needs stream: true"));
        }
        let stops = self.stop.clone().map(OneOrMany::into_vec).unwrap_or_default();
        if stops.len() > MAX_STOPS || stops.iter().any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
        {
            return Err(ApiError::invalid(
                "stop",
                format!(
                    "stop takes up to {MAX_STOPS} non-empty strings of at most {MAX_STOP_BYTES} bytes"
                ),
            ));
        }
        Ok(())
    }

    /// One prompt checked against the context: `max_tokens` (or `default_max_tokens`,
    /// clipped to what the context leaves, when `None`).
    fn prompt(
        limits: &ModelLimits,
        ids: Vec<u32>,
        prompt_param: &'static str,
        max_tokens: (&'static str, Option<u64>),
        default_max_tokens: Option<usize>,
    ) -> Result<PromptJob, ApiError> {
        let context = limits.context_length;
        if ids.is_empty() {
            return Err(ApiError::invalid(prompt_param, "the prompt is empty"));
        }
        if ids.len() >= context {
            return Err(ApiError::invalid(
                prompt_param,
                format!(
                    "the prompt has {} tokens; the model's context length is {context}",
                    ids.len()
                ),
            )
            .with_code("context_length_exceeded"));
        }
        let room = context - ids.len();
        let max_tokens = match max_tokens.1 {
            Some(asked) if asked > room as u64 => {
                return Err(ApiError::invalid(
                    max_tokens.0,
                    format!(
                        "{} is {asked}, but the prompt has {} tokens and the context length is \
                         {context}: at most {room} can be generated",
                        max_tokens.0,
                        ids.len()
                    ),
                )
                .with_code("context_length_exceeded"));
            }
            Some(asked) => asked as usize,
            None => default_max_tokens.map_or(room, |d| d.min(room)),
        };
        Ok(PromptJob { ids, max_tokens })
    }

    /// The job for `prompts`, each already checked against the context.
    fn job(
        &self,
        limits: &ModelLimits,
        prompts: Vec<PromptJob>,
        logprobs: Option<usize>,
    ) -> Result<Job, ApiError> {
        let choices_per_prompt = self.n.unwrap_or(1) as usize;
        if prompts.len() * choices_per_prompt > MAX_CHOICES {
            return Err(ApiError::invalid(
                "n",
                format!(
                    "{} prompts with n = {choices_per_prompt} make more than {MAX_CHOICES} choices",
                    prompts.len()
                ),
            ));
        }
        let logit_bias = self.logit_bias(limits)?;
        Ok(Job {
            prompts,
            stop: self.stop.clone().map(OneOrMany::into_vec).unwrap_or_default(),
            params: SamplingParams {
                temperature: self.temperature.unwrap_or(1.0),
                top_k: self.top_k.map_or(0, |k| k.max(0) as usize),
                top_p: self.top_p.unwrap_or(1.0),
                // Sampling is random unless seeded, as OpenAI's is.
                seed: self.seed.map_or_else(rand::random, |seed| seed as u64),
                top_logprobs: logprobs.unwrap_or(0),
                logit_bias,
                presence_penalty: self.presence_penalty.unwrap_or(0.0),
                frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
                prompt_logprobs: None,
            },
            output: Output {
                stream: self.stream.unwrap_or(false),
                include_usage: self.stream_options.as_ref().is_some_and(|o| o.include_usage),
                logprobs,
                token_ids_as_names: self.return_tokens_as_token_ids,
                choices_per_prompt,
                echo: Vec::new(),
            },
        })
    }

    /// `logit_bias`: canonical decimal token ids below the vocabulary size, biases in
    /// [−100, 100].
    fn logit_bias(&self, limits: &ModelLimits) -> Result<Vec<(u32, f32)>, ApiError> {
        let mut biases = Vec::new();
        for (key, &bias) in self.logit_bias.iter().flatten() {
            let id = key
                .parse::<u32>()
                .ok()
                .filter(|id| id.to_string() == *key && (*id as usize) < limits.vocab_size)
                .ok_or_else(|| {
                    ApiError::invalid(
                        "logit_bias",
                        format!(
                            "logit_bias key {key:?} is not a token id below the vocabulary size {}",
                            limits.vocab_size
                        ),
                    )
                })?;
            if !(-100.0..=100.0).contains(&bias) {
                return Err(ApiError::invalid(
                    "logit_bias",
                    format!("logit_bias of token {id} is {bias}, outside [-100, 100]"),
                ));
            }
            biases.push((id, bias as f32));
        }
        biases.sort_unstable_by_key(|b| b.0);
        Ok(biases)
    }
}

/// A completion prompt: text, or token ids.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum CompletionPrompt {
    Text(String),
    Ids(Vec<u32>),
    Texts(Vec<String>),
    IdLists(Vec<Vec<u32>>),
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    prompt: CompletionPrompt,
    #[serde(skip)]
    sampling: Sampling,
    /// Number of most likely alternatives to report per token.
    logprobs: Option<usize>,
    echo: Option<bool>,
    suffix: Option<String>,
    best_of: Option<u64>,
}

impl CompletionRequest {
    pub fn read(body: Map<String, Value>) -> Result<Self, ApiError> {
        read(body, COMPLETION_FIELDS)
    }

    /// Checks every field and tokenizes the prompt (blocking: call off the async workers).
    pub fn job(&self, limits: &ModelLimits, tokenizer: &Tokenizer) -> Result<Job, ApiError> {
        self.sampling.check(limits)?;
        if self.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::invalid("suffix", "suffix (insertion) is not supported"));
        }
        let echo = self.echo == Some(true);
        if echo && self.sampling.stream == Some(true) {
            return Err(ApiError::invalid("echo", "echo is not supported with stream"));
        }
        if self.best_of.is_some_and(|b| b != self.sampling.n.unwrap_or(1)) {
            return Err(ApiError::invalid(
                "best_of",
                "best_of must equal n: picking the best of more samples is not supported (vLLM dropped it too)",
            ));
        }
        if self.logprobs.is_some_and(|n| n > MAX_LOGPROBS) {
            return Err(ApiError::invalid(
                "logprobs",
                format!("logprobs must be at most {MAX_LOGPROBS}"),
            ));
        }
        // Counted before anything is tokenized: a body of many tiny prompts costs nothing.
        let count = match &self.prompt {
            CompletionPrompt::Text(_) | CompletionPrompt::Ids(_) => 1,
            CompletionPrompt::Texts(texts) => texts.len(),
            CompletionPrompt::IdLists(lists) => lists.len(),
        };
        let n = self.sampling.n.unwrap_or(1) as usize;
        if count.saturating_mul(n) > MAX_CHOICES {
            return Err(ApiError::invalid(
                "prompt",
                format!("{count} prompts with n = {n} make more than {MAX_CHOICES} choices"),
            ));
        }
        // Each prompt as given (for `echo`) and as token ids.
        let prompts: Vec<(Option<&str>, Vec<u32>)> = match &self.prompt {
            CompletionPrompt::Text(text) => {
                vec![(Some(text), encode(tokenizer, Prompt::Text(text))?)]
            }
            CompletionPrompt::Texts(texts) => texts
                .iter()
                .map(|text| Ok((Some(text.as_str()), encode(tokenizer, Prompt::Text(text))?)))
                .collect::<Result<_, ApiError>>()?,
            CompletionPrompt::Ids(ids) => vec![(None, checked_ids(ids, limits)?)],
            CompletionPrompt::IdLists(lists) => lists
                .iter()
                .map(|ids| Ok((None, checked_ids(ids, limits)?)))
                .collect::<Result<_, ApiError>>()?,
        };
        if prompts.is_empty() {
            return Err(ApiError::invalid("prompt", "the prompt list is empty"));
        }
        // With `echo`, 0 asks only for the prompt's log-probabilities (how evaluation
        // harnesses score text).
        let max_tokens = token_limit("max_tokens", self.sampling.max_tokens.as_ref(), echo)?;
        if echo && self.logprobs.is_some() {
            // The prompt is scored one swarm step per token, for every choice.
            let scored: usize = prompts.iter().map(|(_, ids)| ids.len()).sum::<usize>() * n;
            if scored > MAX_ECHO_SCORED_TOKENS {
                return Err(ApiError::invalid(
                    "echo",
                    format!(
                        "echo with logprobs scores the prompt a token per step: at most \
                         {MAX_ECHO_SCORED_TOKENS} prompt tokens over all choices, not {scored}"
                    ),
                ));
            }
        }
        let mut echoed = Vec::new();
        let mut checked = Vec::new();
        for (text, ids) in prompts {
            if echo {
                echoed.push(match text {
                    Some(text) => text.to_owned(),
                    // Decoded as the echoed log-probabilities' offsets are (special tokens
                    // left out).
                    None => tokenizer
                        .decode(&ids, true)
                        .map_err(|e| ApiError::invalid("prompt", e.to_string()))?,
                });
            }
            // 16 is OpenAI's default for completions.
            checked.push(Sampling::prompt(limits, ids, "prompt", max_tokens, Some(16))?);
        }
        let mut job = self.sampling.job(limits, checked, self.logprobs)?;
        if echo {
            job.output.echo = echoed;
            // Echoed log-probabilities cover the prompt too.
            job.params.prompt_logprobs = self.logprobs;
        }
        Ok(job)
    }
}

/// A token limit (`max_tokens`, `max_completion_tokens`) as a positive integer (or 0 when
/// `zero_allowed`), if given.
fn token_limit(
    param: &'static str,
    value: Option<&serde_json::Number>,
    zero_allowed: bool,
) -> Result<(&'static str, Option<u64>), ApiError> {
    match value.map(|n| (n, n.as_u64())) {
        None => Ok((param, None)),
        Some((_, Some(n))) if n >= 1 || zero_allowed => Ok((param, Some(n))),
        Some((n, _)) => {
            Err(ApiError::invalid(param, format!("{param} must be a positive integer, not {n}")))
        }
    }
}

impl WithSampling for CompletionRequest {
    fn with_sampling(self, sampling: Sampling) -> Self {
        Self { sampling, ..self }
    }
}

impl WithSampling for ChatRequest {
    fn with_sampling(self, sampling: Sampling) -> Self {
        Self { sampling, ..self }
    }
}

/// Token ids given as the prompt, each checked against the vocabulary.
fn checked_ids(ids: &[u32], limits: &ModelLimits) -> Result<Vec<u32>, ApiError> {
    match ids.iter().find(|&&id| id as usize >= limits.vocab_size) {
        Some(id) => Err(ApiError::invalid(
            "prompt",
            format!("token id {id} is not below the vocabulary size {}", limits.vocab_size),
        )),
        None => Ok(ids.to_vec()),
    }
}

fn encode(tokenizer: &Tokenizer, prompt: Prompt<'_>) -> Result<Vec<u32>, ApiError> {
    prompt.encode(tokenizer).map_err(|e| ApiError::invalid("prompt", e.to_string()))
}

/// One part of a message's content.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ContentPart {
    Text { text: String },
    ImageUrl {},
    InputAudio {},
    File {},
}

/// A message's content: text, parts, or none (an assistant turn that only calls tools).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// A chat message as OpenAI's API takes it.
#[derive(Debug, Clone, Deserialize)]
struct Message {
    role: String,
    #[serde(default)]
    content: Option<Content>,
    /// Accepted on assistant turns (and the `tool` turns answering them) so that a
    /// conversation that used tools elsewhere can continue here; the model sees the content.
    #[allow(dead_code)]
    #[serde(default)]
    tool_calls: Option<Value>,
    #[allow(dead_code)]
    #[serde(default)]
    tool_call_id: Option<String>,
    #[allow(dead_code)]
    #[serde(default)]
    name: Option<String>,
}

const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool", "function"];

impl Message {
    fn plain(&self) -> Result<ChatMessage, ApiError> {
        if !ROLES.contains(&self.role.as_str()) {
            return Err(ApiError::invalid(
                "messages",
                format!("unknown message role {:?}", self.role),
            ));
        }
        let content = match &self.content {
            None => String::new(),
            Some(Content::Text(text)) => text.clone(),
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for part in parts {
                    match part {
                        // Parts are joined by newlines, as vLLM joins them.
                        ContentPart::Text { text: t } if text.is_empty() => text.push_str(t),
                        ContentPart::Text { text: t } => {
                            text.push('\n');
                            text.push_str(t);
                        }
                        _ => {
                            return Err(ApiError::invalid(
                                "messages",
                                "only text content parts are supported: this model reads text",
                            ));
                        }
                    }
                }
                text
            }
        };
        Ok(ChatMessage { role: self.role.clone(), content })
    }
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    messages: Vec<Message>,
    #[serde(skip)]
    sampling: Sampling,
    max_completion_tokens: Option<serde_json::Number>,
    logprobs: Option<bool>,
    top_logprobs: Option<usize>,
    tools: Option<Vec<Value>>,
    tool_choice: Option<Value>,
    #[allow(dead_code)]
    parallel_tool_calls: Option<bool>,
    functions: Option<Vec<Value>>,
    function_call: Option<Value>,
    response_format: Option<Value>,
}

impl ChatRequest {
    pub fn read(body: Map<String, Value>) -> Result<Self, ApiError> {
        read(body, CHAT_FIELDS)
    }

    /// Checks every field, renders the messages in the model's chat format and tokenizes them
    /// (blocking: call off the async workers).
    pub fn job(
        &self,
        limits: &ModelLimits,
        tokenizer: &Tokenizer,
        format: &ChatFormat,
    ) -> Result<Job, ApiError> {
        self.sampling.check(limits)?;
        if self.tools.as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(ApiError::invalid(
                "tools",
                "tool calling is not supported by this gateway",
            ));
        }
        if self.functions.as_ref().is_some_and(|f| !f.is_empty()) {
            return Err(ApiError::invalid(
                "functions",
                "function calling is not supported by this gateway",
            ));
        }
        if self.function_call.as_ref().is_some_and(|c| c != "none") {
            return Err(ApiError::invalid(
                "function_call",
                "function calling is not supported by this gateway",
            ));
        }
        if self.tool_choice.as_ref().is_some_and(|c| c != "none" && c != "auto") {
            return Err(ApiError::invalid(
                "tool_choice",
                "tool calling is not supported: tool_choice may only be none or auto",
            ));
        }
        if let Some(format) = &self.response_format
            && format.get("type") != Some(&Value::from("text"))
        {
            return Err(ApiError::invalid(
                "response_format",
                format!("response_format {format} is not supported: only {{\"type\": \"text\"}}"),
            ));
        }
        if self.top_logprobs.is_some() && self.logprobs != Some(true) {
            return Err(ApiError::invalid("top_logprobs", "top_logprobs needs logprobs: true"));
        }
        if self.top_logprobs.is_some_and(|n| n > MAX_LOGPROBS) {
            return Err(ApiError::invalid(
                "top_logprobs",
                format!("top_logprobs must be at most {MAX_LOGPROBS}"),
            ));
        }
        if self.messages.is_empty() {
            return Err(ApiError::invalid("messages", "messages must not be empty"));
        }
        let messages = self.messages.iter().map(Message::plain).collect::<Result<Vec<_>, _>>()?;
        let rendered =
            format.render(&messages).map_err(|e| ApiError::invalid("messages", e.to_string()))?;
        let prompt_ids = format
            .prompt(&rendered)
            .encode(tokenizer)
            .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
        // `max_completion_tokens` replaces the deprecated `max_tokens`; either is honoured.
        let deprecated = token_limit("max_tokens", self.sampling.max_tokens.as_ref(), false)?;
        let max_tokens = match &self.max_completion_tokens {
            Some(n) => token_limit("max_completion_tokens", Some(n), false)?,
            None => deprecated,
        };
        let logprobs = (self.logprobs == Some(true)).then(|| self.top_logprobs.unwrap_or(0));
        // Without a limit a chat runs to the end of the context, as OpenAI's does.
        let prompt = Sampling::prompt(limits, prompt_ids, "messages", max_tokens, None)?;
        self.sampling.job(limits, vec![prompt], logprobs)
    }
}

/// `POST /v1/embeddings`. Any other field is refused, as for generation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: OneOrMany,
    /// `float` (default) or `base64` (little-endian f32), as the openai SDK asks by default.
    pub encoding_format: Option<String>,
    /// Accepted, unused (see [`Sampling`]'s).
    #[allow(dead_code)]
    user: Option<String>,
    /// Truncated embeddings are not implemented: refused unless it is the full width.
    dimensions: Option<u64>,
}

impl EmbeddingRequest {
    pub fn validate(self, model: &str) -> Result<Self, ApiError> {
        if self.model != model {
            return Err(ApiError::model_not_found(&self.model, model));
        }
        if let Some(format) = &self.encoding_format
            && format != "float"
            && format != "base64"
        {
            return Err(ApiError::invalid(
                "encoding_format",
                format!("encoding_format {format:?} is not float or base64"),
            ));
        }
        if self.texts().is_empty() {
            return Err(ApiError::invalid("input", "input must not be empty"));
        }
        if self.dimensions.is_some() {
            return Err(ApiError::invalid(
                "dimensions",
                "dimensions is not supported: embeddings have the model's full width",
            ));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn body(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn unknown_and_mistyped_fields_are_named() {
        let e = CompletionRequest::read(body(
            serde_json::json!({"model": "m", "prompt": "p", "frobnicate": 1}),
        ))
        .unwrap_err();
        assert_eq!(e.body()["error"]["param"], "frobnicate");
        let e = CompletionRequest::read(body(
            serde_json::json!({"model": "m", "prompt": "p", "temperature": "hot"}),
        ))
        .unwrap_err();
        assert_eq!(e.body()["error"]["param"], "temperature");
    }

    #[test]
    fn logit_bias_keys_must_be_canonical_ids_in_the_vocabulary() {
        let limits = ModelLimits { name: "m".into(), context_length: 64, vocab_size: 10 };
        let read = |bias: Value| {
            let r = CompletionRequest::read(body(
                serde_json::json!({"model": "m", "prompt": [1, 2], "logit_bias": bias}),
            ))
            .unwrap();
            r.sampling.logit_bias(&limits)
        };
        assert_eq!(
            read(serde_json::json!({"3": -100, "1": 5})).unwrap(),
            vec![(1, 5.0), (3, -100.0)]
        );
        for bad in [
            serde_json::json!({"10": 1}),
            serde_json::json!({"01": 1}),
            serde_json::json!({"-1": 1}),
            serde_json::json!({"2": 101}),
        ] {
            assert_eq!(read(bad).unwrap_err().body()["error"]["param"], "logit_bias");
        }
    }
}

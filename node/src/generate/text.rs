use std::ops::ControlFlow;

use tokenizers::Tokenizer;

use super::{Sampler, SamplingParams, TokenChoice};
use crate::engine::{EngineError, Pipeline};

/// Anything that turns the tokens of a session into next-token logits.
pub trait TextModel {
    /// Runs `tokens` at positions `position..` of `session`; returns the logits of the
    /// last position.
    fn next_logits(
        &mut self,
        session: u64,
        position: usize,
        tokens: &[i64],
    ) -> Result<Vec<f32>, EngineError>;
    /// Frees the session's state.
    fn close(&mut self, session: u64);
    /// Longest sequence (prompt + generated) the model supports.
    fn context_length(&self) -> usize;
    /// Tokens that end generation.
    fn eos_ids(&self) -> &[u32];
}

impl TextModel for &Pipeline {
    fn next_logits(
        &mut self,
        session: u64,
        position: usize,
        tokens: &[i64],
    ) -> Result<Vec<f32>, EngineError> {
        Ok(self.step(session, position, tokens)?.last_row().to_vec())
    }
    fn close(&mut self, session: u64) {
        Pipeline::close(self, session)
    }
    fn context_length(&self) -> usize {
        self.manifest().config.max_positions
    }
    fn eos_ids(&self) -> &[u32] {
        &self.manifest().tokenizer.eos_token_ids
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// An end-of-sequence token or a stop sequence.
    Stop,
    /// `max_tokens` reached.
    Length,
}

/// One generated token as streamed to the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedToken {
    pub choice: TokenChoice,
    /// Text this token adds to the output (may be empty while a character is incomplete).
    pub text_delta: String,
}

/// A finished generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub prompt_ids: Vec<u32>,
    pub tokens: Vec<GeneratedToken>,
    pub text: String,
    pub finish_reason: FinishReason,
}

/// A generation request that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error(
        "the prompt has {prompt} tokens; with max_tokens {max_tokens} that exceeds the context length {limit}"
    )]
    TooLong { prompt: usize, max_tokens: usize, limit: usize },
    #[error("the model returned no logits")]
    NoLogits,
    #[error("the generation was cancelled")]
    Cancelled,
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// What generation continues.
#[derive(Debug, Clone, Copy)]
pub enum Prompt<'a> {
    /// Raw text: the tokenizer adds its own special tokens (e.g. BOS), as for `/v1/completions`.
    Text(&'a str),
    /// A rendered chat template, which already holds every special token it needs.
    Chat(&'a str),
}

impl Prompt<'_> {
    /// The prompt's token ids.
    pub fn encode(self, tokenizer: &Tokenizer) -> Result<Vec<u32>, GenerationError> {
        let (text, add_special_tokens) = match self {
            Prompt::Text(text) => (text, true),
            Prompt::Chat(text) => (text, false),
        };
        let encoding = tokenizer
            .encode(text, add_special_tokens)
            .map_err(|e| GenerationError::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }
}

/// Generates up to `max_tokens` tokens after `prompt`, calling `on_token` as each arrives.
/// Stops at an EOS token or when the text contains one of `stop` (which is cut off); ends
/// with [`GenerationError::Cancelled`] as soon as `on_token` breaks (its reader is gone).
#[allow(clippy::too_many_arguments)]
pub fn generate(
    model: &mut (impl TextModel + ?Sized),
    tokenizer: &Tokenizer,
    session: u64,
    prompt: Prompt<'_>,
    max_tokens: usize,
    stop: &[String],
    params: SamplingParams,
    mut on_token: impl FnMut(&GeneratedToken) -> ControlFlow<()>,
) -> Result<Generation, GenerationError> {
    let prompt_ids = prompt.encode(tokenizer)?;
    if prompt_ids.is_empty() {
        return Err(GenerationError::EmptyPrompt);
    }
    let limit = model.context_length();
    if prompt_ids.len() + max_tokens > limit {
        return Err(GenerationError::TooLong { prompt: prompt_ids.len(), max_tokens, limit });
    }

    let mut sampler = Sampler::new(params);
    let mut tokens: Vec<GeneratedToken> = Vec::new();
    let mut ids: Vec<u32> = Vec::new();
    let mut text = String::new();
    let mut finish_reason = FinishReason::Length;
    let mut input: Vec<i64> = prompt_ids.iter().map(|&i| i as i64).collect();
    let mut position = 0;
    let result = (|| {
        while tokens.len() < max_tokens {
            let logits = model.next_logits(session, position, &input)?;
            if logits.is_empty() {
                return Err(GenerationError::NoLogits);
            }
            position += input.len();
            let choice = sampler.choose(&logits);
            if model.eos_ids().contains(&choice.id) {
                finish_reason = FinishReason::Stop;
                break;
            }
            ids.push(choice.id);
            let full = tokenizer
                .decode(&ids, true)
                .map_err(|e| GenerationError::Tokenizer(e.to_string()))?;
            let (kept, stopped) = match stop.iter().filter_map(|s| full.find(s.as_str())).min() {
                Some(cut) => (full[..cut].to_owned(), true),
                None => (full, false),
            };
            // A partial UTF-8 character decodes as U+FFFD; hold it back until complete.
            let settled = if stopped { kept.as_str() } else { kept.trim_end_matches('\u{FFFD}') };
            let text_delta = settled.get(text.len()..).unwrap_or_default().to_owned();
            text.push_str(&text_delta);
            input = vec![choice.id as i64];
            let token = GeneratedToken { choice, text_delta };
            if on_token(&token).is_break() {
                return Err(GenerationError::Cancelled);
            }
            tokens.push(token);
            if stopped {
                finish_reason = FinishReason::Stop;
                break;
            }
        }
        Ok::<_, GenerationError>(())
    })();
    model.close(session);
    result?;
    Ok(Generation { prompt_ids, tokens, text, finish_reason })
}

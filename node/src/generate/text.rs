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
    /// Each prompt token after the first, scored by the model given the tokens before it,
    /// when `SamplingParams::prompt_logprobs` asked for it; empty otherwise.
    pub prompt_logprobs: Vec<TokenChoice>,
    pub tokens: Vec<GeneratedToken>,
    pub text: String,
    /// The end of `text` that no token's `text_delta` carried: output held back because it
    /// could have been the start of a stop string that never completed. A stream sends it
    /// with the finish.
    pub tail: String,
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
    /// Token ids, used as they are.
    Ids(&'a [u32]),
}

impl Prompt<'_> {
    /// The prompt's token ids.
    pub fn encode(self, tokenizer: &Tokenizer) -> Result<Vec<u32>, GenerationError> {
        let (text, add_special_tokens) = match self {
            Prompt::Text(text) => (text, true),
            Prompt::Chat(text) => (text, false),
            Prompt::Ids(ids) => return Ok(ids.to_vec()),
        };
        let encoding = tokenizer
            .encode(text, add_special_tokens)
            .map_err(|e| GenerationError::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }
}

/// Generates up to `max_tokens` tokens after `prompt`, calling `on_token` as each arrives.
/// Stops at an EOS token or when the text contains one of `stop` (which is cut off, and never
/// streamed: output that could be the start of a stop string is held back until it cannot);
/// ends with [`GenerationError::Cancelled`] as soon as `on_token` breaks (its reader is gone).
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

    let score_prompt = params.prompt_logprobs;
    let mut prompt_logprobs = Vec::new();
    let mut sampler = Sampler::new(params);
    let mut tokens: Vec<GeneratedToken> = Vec::new();
    let mut ids: Vec<u32> = Vec::new();
    // `text` is what the tokens' deltas carried; `settled` is the output so far.
    let mut text = String::new();
    let mut settled = String::new();
    let mut finish_reason = FinishReason::Length;
    let mut input: Vec<i64> = prompt_ids.iter().map(|&i| i as i64).collect();
    let mut position = 0;
    let result = (|| {
        if let Some(top) = score_prompt {
            // A prompt token's log-probability needs the logits of the position before it,
            // and a step answers only for its last position: the prompt runs a token a step.
            for pair in prompt_ids.windows(2) {
                let logits = model.next_logits(session, position, &[pair[0] as i64])?;
                position += 1;
                prompt_logprobs.push(Sampler::score(&logits, pair[1], top));
            }
            input.drain(..position);
        }
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
            settled = if stopped { kept } else { kept.trim_end_matches('\u{FFFD}').to_owned() };
            let shown =
                if stopped { settled.len() } else { settled.len() - held_back(&settled, stop) };
            let text_delta = settled.get(text.len()..shown).unwrap_or_default().to_owned();
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
    let tail = settled.get(text.len()..).unwrap_or_default().to_owned();
    text.push_str(&tail);
    Ok(Generation { prompt_ids, prompt_logprobs, tokens, text, tail, finish_reason })
}

/// Bytes at the end of `output` that are the start of some stop string, which the next tokens
/// may complete: the longest such suffix (starting on a character boundary).
fn held_back(output: &str, stops: &[String]) -> usize {
    stops
        .iter()
        .flat_map(|stop| {
            (1..stop.len().min(output.len() + 1)).rev().find(|&n| {
                output.is_char_boundary(output.len() - n)
                    && output.as_bytes().ends_with(&stop.as_bytes()[..n])
            })
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::held_back;

    #[test]
    fn holds_back_the_longest_start_of_a_stop_string() {
        let stops = ["wasl".to_owned(), "é!".to_owned()];
        assert_eq!(held_back("it was", &stops), 3);
        assert_eq!(held_back("it wa", &stops), 2);
        assert_eq!(held_back("it w", &stops), 1);
        assert_eq!(held_back("it", &stops), 0);
        assert_eq!(held_back("café", &stops), 2, "a whole character");
        assert_eq!(held_back("", &stops), 0);
    }
}

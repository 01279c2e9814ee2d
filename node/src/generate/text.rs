use std::ops::ControlFlow;
use std::time::Duration;

use tokenizers::Tokenizer;

use super::speculate::{Speculation, verify};
use super::{Sampler, SamplingParams, TokenChoice};
use crate::engine::{Activation, EngineError, Pipeline};

/// Anything that turns the tokens of a session into next-token logits.
pub trait TextModel {
    /// Runs `tokens` at positions `position..` of `session` (a position the session already
    /// holds rolls it back there first); returns the logits `[1, n, vocab]` of its last `n`
    /// positions: all of them, or, where a long input ran in chunks, at least the last chunk's.
    fn logits(
        &mut self,
        session: u64,
        position: usize,
        tokens: &[i64],
    ) -> Result<Activation, EngineError>;
    /// The logits of the last position only.
    fn next_logits(
        &mut self,
        session: u64,
        position: usize,
        tokens: &[i64],
    ) -> Result<Vec<f32>, EngineError> {
        Ok(self.logits(session, position, tokens)?.last_row().to_vec())
    }
    /// Frees the session's state.
    fn close(&mut self, session: u64);
    /// Longest sequence (prompt + generated) the model supports.
    fn context_length(&self) -> usize;
    /// Tokens that end generation.
    fn eos_ids(&self) -> &[u32];
}

impl TextModel for &Pipeline {
    fn logits(
        &mut self,
        session: u64,
        position: usize,
        tokens: &[i64],
    ) -> Result<Activation, EngineError> {
        self.step(session, position, tokens)
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
    /// Drafts proposed by speculation, how many of them the model accepted, and the steps
    /// that verified them.
    pub drafted: usize,
    pub accepted: usize,
    pub verify_steps: usize,
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
    on_token: impl FnMut(&GeneratedToken) -> ControlFlow<()>,
) -> Result<Generation, GenerationError> {
    let request = Request { session, prompt, max_tokens, stop, params };
    generate_speculating(model, tokenizer, request, None, on_token)
}

/// One generation's request.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub session: u64,
    pub prompt: Prompt<'a>,
    pub max_tokens: usize,
    pub stop: &'a [String],
    pub params: SamplingParams,
}

/// [`generate`], verifying the drafts of `speculation` (when given) a step at a time: the
/// tokens, and with a seed their very sequence, are those of plain decoding
/// ([`super::speculate`]); only the number of steps through the model differs.
pub fn generate_speculating(
    model: &mut (impl TextModel + ?Sized),
    tokenizer: &Tokenizer,
    request: Request<'_>,
    mut speculation: Option<&mut Speculation>,
    mut on_token: impl FnMut(&GeneratedToken) -> ControlFlow<()>,
) -> Result<Generation, GenerationError> {
    let Request { session, prompt, max_tokens, stop, params } = request;
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
    let mut output = Output::new(tokenizer, stop, prompt_ids.clone());
    let mut input: Vec<i64> = prompt_ids.iter().map(|&i| i as i64).collect();
    let mut position = 0;
    let (mut drafted, mut accepted_total, mut verify_steps) = (0, 0, 0);
    if let Some(speculation) = speculation.as_deref_mut() {
        speculation.prepare(&prompt_ids);
    }
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
        while output.tokens.len() < max_tokens {
            // Drafts ride on decode steps (a prompt may run in chunks, answering for the last
            // chunk only), and only as many as could all be emitted: the step after them
            // stays in the context.
            let room = max_tokens - output.tokens.len() - 1;
            // A step's cost includes its drafting: a draft model's guesses take time too.
            let started = std::time::Instant::now();
            let draft = match speculation.as_deref_mut() {
                Some(speculation) if room > 0 && input.len() == 1 => {
                    speculation.draft(&output.context, room)
                }
                _ => Vec::new(),
            };
            // A step without drafts costs its model step: time spent waiting for drafts that
            // never came (a draft node past its deadline) would make plain steps look dear.
            let waited_in_vain = if draft.is_empty() { started.elapsed() } else { Duration::ZERO };
            let step: Vec<i64> =
                input.iter().copied().chain(draft.iter().map(|&t| t as i64)).collect();
            let logits = model.logits(session, position, &step)?;
            let took = started.elapsed() - waited_in_vain;
            let Some(first) = logits.rows().checked_sub(draft.len() + 1) else {
                return Err(GenerationError::NoLogits);
            };
            let rows: Vec<&[f32]> = (first..logits.rows()).map(|j| logits.row(j)).collect();
            if rows.iter().any(|row| row.is_empty()) {
                return Err(GenerationError::NoLogits);
            }
            let draws = verify(&mut sampler, &rows, &draft);
            // The accepted drafts' positions hold the right cache: they stay.
            let accepted = draws.len() - 1;
            position += input.len() + accepted;
            let last = draws.last().expect("a step draws at least one token").id;
            let mut emitted = 0;
            for choice in draws {
                emitted += 1;
                if output.push(model.eos_ids(), choice, &mut on_token)?.is_break() {
                    break;
                }
            }
            // Drafts drawn past an end of sequence or a stop string were not used.
            let accepted = accepted.min(emitted);
            if let Some(speculation) = speculation.as_deref_mut()
                && input.len() == 1
            {
                speculation.verified(draft.len(), accepted, took);
            }
            drafted += draft.len();
            accepted_total += accepted;
            verify_steps += usize::from(!draft.is_empty());
            if output.finish_reason.is_some() {
                break;
            }
            input = vec![i64::from(last)];
        }
        Ok::<_, GenerationError>(())
    })();
    model.close(session);
    result?;
    let Output { tokens, mut text, settled, finish_reason, .. } = output;
    let tail = settled.get(text.len()..).unwrap_or_default().to_owned();
    text.push_str(&tail);
    let finish_reason = finish_reason.unwrap_or(FinishReason::Length);
    Ok(Generation {
        prompt_ids,
        prompt_logprobs,
        tokens,
        text,
        tail,
        finish_reason,
        drafted,
        accepted: accepted_total,
        verify_steps,
    })
}

/// The output so far: tokens, their text, what may be shown, and why it ended.
struct Output<'a> {
    tokenizer: &'a Tokenizer,
    stop: &'a [String],
    /// The prompt and the output's ids: what a drafter continues.
    context: Vec<u32>,
    ids: Vec<u32>,
    tokens: Vec<GeneratedToken>,
    /// What the tokens' deltas carried.
    text: String,
    /// The output so far, a stop string cut off.
    settled: String,
    finish_reason: Option<FinishReason>,
}

impl<'a> Output<'a> {
    fn new(tokenizer: &'a Tokenizer, stop: &'a [String], prompt: Vec<u32>) -> Self {
        Self {
            tokenizer,
            stop,
            context: prompt,
            ids: Vec::new(),
            tokens: Vec::new(),
            text: String::new(),
            settled: String::new(),
            finish_reason: None,
        }
    }

    /// Adds a drawn token: an end-of-sequence or a completed stop string ends the output
    /// (`Break`), as does a reader that is gone (`Cancelled`).
    fn push(
        &mut self,
        eos: &[u32],
        choice: TokenChoice,
        on_token: &mut impl FnMut(&GeneratedToken) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, GenerationError> {
        if eos.contains(&choice.id) {
            self.finish_reason = Some(FinishReason::Stop);
            return Ok(ControlFlow::Break(()));
        }
        self.ids.push(choice.id);
        self.context.push(choice.id);
        let full = self
            .tokenizer
            .decode(&self.ids, true)
            .map_err(|e| GenerationError::Tokenizer(e.to_string()))?;
        let stop = self.stop;
        let (kept, stopped) = match stop.iter().filter_map(|s| full.find(s.as_str())).min() {
            Some(cut) => (full[..cut].to_owned(), true),
            None => (full, false),
        };
        // A partial UTF-8 character decodes as U+FFFD; hold it back until complete.
        self.settled = if stopped { kept } else { kept.trim_end_matches('\u{FFFD}').to_owned() };
        let shown = if stopped {
            self.settled.len()
        } else {
            self.settled.len() - held_back(&self.settled, stop)
        };
        let text_delta = self.settled.get(self.text.len()..shown).unwrap_or_default().to_owned();
        self.text.push_str(&text_delta);
        let token = GeneratedToken { choice, text_delta };
        if on_token(&token).is_break() {
            return Err(GenerationError::Cancelled);
        }
        self.tokens.push(token);
        if stopped {
            self.finish_reason = Some(FinishReason::Stop);
            return Ok(ControlFlow::Break(()));
        }
        Ok(ControlFlow::Continue(()))
    }
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

//! A draft model as a [`Drafter`]: a small copy of the served model (e.g. `model import
//! --quantize int8`) run in this process, greedy, guessing the next tokens for one
//! generation. Its guesses are only proposals: the verify step keeps what the served model
//! itself would have produced (`speculate`), so a poor or failing draft costs time, never
//! correctness.

use std::sync::Arc;

use super::sampler::argmax;
use super::speculate::Drafter;
use crate::engine::{EngineError, Pipeline};
use crate::model::ModelManifest;

/// Why a model cannot draft for another.
#[derive(Debug, thiserror::Error)]
pub enum DraftError {
    #[error(
        "the draft model's tokenizer differs from the served model's: drafts would be other tokens"
    )]
    Tokenizer,
    #[error("the draft model is an encoder: it cannot guess next tokens")]
    NotDecoder,
    #[error("the draft model has {draft} tokens in its vocabulary, the served model {served}")]
    Vocabulary { draft: usize, served: usize },
}

/// Whether `draft` can propose tokens for `served`: a decoder with the same tokenizer file
/// (by hash) and vocabulary.
pub fn check_draft(draft: &ModelManifest, served: &ModelManifest) -> Result<(), DraftError> {
    if !draft.architecture.is_decoder() {
        return Err(DraftError::NotDecoder);
    }
    let tokenizer = |m: &ModelManifest| m.files.get(&m.tokenizer.file).cloned();
    if tokenizer(draft).is_none() || tokenizer(draft) != tokenizer(served) {
        return Err(DraftError::Tokenizer);
    }
    let (draft, served) = (draft.config.vocab_size, served.config.vocab_size);
    if draft != served {
        return Err(DraftError::Vocabulary { draft, served });
    }
    Ok(())
}

/// Where a draft session holding `cached` resumes for `context` (not empty): after what it
/// already holds of it, but always feeding at least the last token again, for the guess
/// after it.
pub fn resume_at(cached: &[u32], context: &[u32]) -> usize {
    let kept = cached.iter().zip(context).take_while(|(a, b)| a == b).count();
    kept.min(context.len() - 1)
}

/// One generation's drafter over a shared draft model: its own KV-cache session, which
/// follows the generation's context (a step at an earlier position rolls it back, so
/// rejected guesses cost nothing to undo).
pub struct ModelDrafter {
    model: Arc<Pipeline>,
    session: u64,
    /// The tokens whose keys and values the draft session holds, in order.
    cached: Vec<u32>,
}

impl ModelDrafter {
    /// A drafter for the generation `session` (its KV-cache key in the draft model).
    pub fn new(model: Arc<Pipeline>, session: u64) -> Self {
        Self { model, session, cached: Vec::new() }
    }

    /// Feeds `tokens` at `position` and returns the most likely next token.
    fn next(&mut self, position: usize, tokens: &[u32]) -> Result<u32, EngineError> {
        let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
        let logits = self.model.step(self.session, position, &ids)?;
        self.cached.truncate(position);
        self.cached.extend_from_slice(tokens);
        Ok(argmax(logits.last_row()))
    }

    fn guess(&mut self, context: &[u32], max: usize) -> Result<Vec<u32>, EngineError> {
        let from = resume_at(&self.cached, context);
        let mut guesses = vec![self.next(from, &context[from..])?];
        while guesses.len() < max {
            let (position, last) = (context.len() + guesses.len() - 1, guesses[guesses.len() - 1]);
            guesses.push(self.next(position, &[last])?);
        }
        Ok(guesses)
    }

    /// Forgets the session after an engine error (e.g. its cache was evicted).
    fn restart(&mut self, error: &EngineError) {
        tracing::debug!("the draft model failed, decoding without drafts: {error}");
        self.model.close(self.session);
        self.cached.clear();
    }
}

impl Drafter for ModelDrafter {
    fn draft(&mut self, context: &[u32], max: usize) -> Vec<u32> {
        let room = self.model.manifest().config.max_positions.saturating_sub(context.len());
        let max = max.min(room);
        if max == 0 || context.is_empty() {
            return Vec::new();
        }
        match self.guess(context, max) {
            Ok(guesses) => guesses,
            Err(e) => {
                // No guess this step (the step decodes plainly); the session starts over.
                self.restart(&e);
                Vec::new()
            }
        }
    }

    fn prepare(&mut self, prompt: &[u32]) {
        if prompt.len() < self.model.manifest().config.max_positions
            && let Err(e) = self.next(0, prompt)
        {
            self.restart(&e);
        }
    }
}

impl Drop for ModelDrafter {
    fn drop(&mut self) {
        self.model.close(self.session);
    }
}

#[cfg(test)]
mod tests {
    use super::resume_at;

    #[test]
    fn a_draft_session_resumes_after_what_it_holds_of_the_context() {
        // Holds the context and two guesses, of which the first was accepted.
        assert_eq!(resume_at(&[1, 2, 3, 7, 8], &[1, 2, 3, 7, 9]), 4);
        // Holds exactly the context: the last token is sent again, for the guess after it.
        assert_eq!(resume_at(&[1, 2, 3], &[1, 2, 3]), 2);
        // Holds more than the context (guesses the verify step did not keep at all).
        assert_eq!(resume_at(&[1, 2, 3, 4, 5], &[1, 2, 3]), 2);
        // Holds nothing, or something else from the start: everything is sent.
        assert_eq!(resume_at(&[], &[1, 2]), 0);
        assert_eq!(resume_at(&[5, 2], &[1, 2]), 0);
    }
}

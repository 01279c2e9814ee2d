//! Speculative decoding: a drafter guesses the next tokens, and one step through the model
//! verifies all of them (`k` drafts and the token before them: `k + 1` positions, one round
//! trip per hop instead of `k + 1`).
//!
//! Verification samples each position exactly as plain decoding would — the same sampler,
//! the same logits, one draw per emitted token — and keeps a draft only while it equals the
//! token drawn. For a drafter that proposes one token with certainty, that is the acceptance
//! rule of speculative sampling (Leviathan et al. 2023; Chen et al. 2023) specialised to a
//! one-hot draft distribution `q`: accept `d` with probability `min(1, p(d) / q(d)) = p(d)`,
//! otherwise draw from `p` without `d` renormalised; drawing `x ~ p` and accepting iff
//! `x = d` gives both at once. So the output has exactly the target's distribution, and with
//! a seeded sampler it is the very token sequence plain decoding gives. Rejected drafts are
//! rolled back by the next step, which starts at the kept length (`wire.md`, "KV cache").

use super::{Sampler, TokenChoice};

/// The tokens one verify step decides. `rows[j]` are the logits of the position after draft
/// `j - 1` (`rows[0]`: after the token before the drafts), one more row than drafts. Each row
/// is drawn from as plain decoding would draw from it; drafts are kept while they equal the
/// draw. Returns the draws: the accepted drafts, then the first draw that differs from its
/// draft, or follows them all.
pub fn verify(sampler: &mut Sampler, rows: &[&[f32]], draft: &[u32]) -> Vec<TokenChoice> {
    let mut draws = Vec::with_capacity(rows.len());
    for (j, row) in rows.iter().enumerate() {
        let choice = sampler.choose(row);
        let accepted = draft.get(j) == Some(&choice.id);
        draws.push(choice);
        if !accepted {
            break;
        }
    }
    draws
}

/// Proposes tokens that may follow a context.
pub trait Drafter: Send {
    /// At most `max` tokens that may follow `context` (the prompt and the output so far);
    /// none when it has no guess.
    fn draft(&mut self, context: &[u32], max: usize) -> Vec<u32>;
}

/// Prompt lookup decoding (Saxena 2023): the continuation of the latest earlier occurrence
/// of the context's last n-gram, longest n first. Free to run, and right whenever the output
/// quotes its input: code edits, summaries, extraction, repetitive text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptLookup {
    /// Longest suffix matched.
    pub max_ngram: usize,
    /// Shortest suffix matched: 1 proposes after any repeated token, which is often wrong.
    pub min_ngram: usize,
}

impl Default for PromptLookup {
    fn default() -> Self {
        Self { max_ngram: 3, min_ngram: 2 }
    }
}

impl Drafter for PromptLookup {
    fn draft(&mut self, context: &[u32], max: usize) -> Vec<u32> {
        if max == 0 {
            return Vec::new();
        }
        for n in (self.min_ngram.max(1)..=self.max_ngram).rev() {
            if context.len() <= n {
                continue;
            }
            let suffix = &context[context.len() - n..];
            // The latest earlier occurrence, not overlapping the suffix itself.
            let found = (0..context.len() - n).rev().find(|&at| &context[at..at + n] == suffix);
            if let Some(at) = found {
                let next = at + n;
                return context[next..(next + max).min(context.len())].to_vec();
            }
        }
        Vec::new()
    }
}

/// A drafter with an adaptive draft length, and what it drafted and had accepted.
pub struct Speculation {
    drafter: Box<dyn Drafter>,
    /// The most drafts one step verifies.
    max_draft: usize,
    /// Drafts asked for next: grows by 2 when every draft was accepted, shrinks by 1 when
    /// one was rejected (Hugging Face's assisted generation heuristic), within 1..=max.
    next_draft: usize,
    pub drafted: usize,
    pub accepted: usize,
}

impl Speculation {
    pub fn new(drafter: Box<dyn Drafter>, max_draft: usize) -> Self {
        let max_draft = max_draft.max(1);
        Self { drafter, max_draft, next_draft: max_draft, drafted: 0, accepted: 0 }
    }

    /// Drafts for `context`, at most `room`.
    pub(super) fn draft(&mut self, context: &[u32], room: usize) -> Vec<u32> {
        let mut draft = self.drafter.draft(context, self.next_draft.min(room));
        draft.truncate(self.next_draft.min(room));
        draft
    }

    /// Counts one verified step: `drafted` proposed, the first `accepted` kept.
    pub(super) fn verified(&mut self, drafted: usize, accepted: usize) {
        if drafted == 0 {
            return;
        }
        self.drafted += drafted;
        self.accepted += accepted;
        self.next_draft = if accepted == drafted {
            (self.next_draft + 2).min(self.max_draft)
        } else {
            self.next_draft.saturating_sub(1).max(1)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_lookup_continues_the_latest_match_of_the_longest_suffix() {
        let mut lookup = PromptLookup::default();
        // "1 2 3 4 5 … 1 2 3" → the trigram 1 2 3 occurred first at 0: propose 4 5 9.
        assert_eq!(lookup.draft(&[1, 2, 3, 4, 5, 9, 7, 1, 2, 3], 3), [4, 5, 9]);
        // The latest of two occurrences wins.
        assert_eq!(lookup.draft(&[1, 2, 8, 6, 1, 2, 7, 1, 2], 1), [7]);
        // A bigram when no trigram matches; nothing when neither does.
        assert_eq!(lookup.draft(&[5, 6, 1, 2, 9, 3, 1, 2], 2), [9, 3]);
        assert!(lookup.draft(&[1, 2, 3, 4], 4).is_empty());
        // Never more than asked, nor past the context's end.
        assert_eq!(lookup.draft(&[4, 4, 4, 4], 8), [4]);
        assert!(lookup.draft(&[1, 2, 1, 2], 0).is_empty());
    }

    #[test]
    fn the_draft_length_adapts_to_what_was_accepted() {
        let mut speculation = Speculation::new(Box::new(PromptLookup::default()), 4);
        speculation.verified(4, 1);
        speculation.verified(3, 0);
        assert_eq!(speculation.next_draft, 2);
        speculation.verified(2, 2);
        assert_eq!(speculation.next_draft, 4);
        speculation.verified(0, 0);
        assert_eq!((speculation.drafted, speculation.accepted), (9, 3));
    }
}

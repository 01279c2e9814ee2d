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
//! a seeded sampler it is the token sequence plain decoding gives — up to the float noise
//! between a `k + 1`-position step and `k + 1` one-position steps, which can flip a near-tie. Rejected drafts are
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

    /// Reads the prompt before decoding starts, so that the first draft does not pay for it
    /// (and the first decode step's measured cost is a decode step's).
    fn prepare(&mut self, _prompt: &[u32]) {}

    /// What the verify step kept of the latest draft: its first `accepted` of `drafted`.
    fn judged(&mut self, _drafted: usize, _accepted: usize) {}
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
            // The latest occurrence other than the suffix itself (it may overlap it).
            let found = (0..context.len() - n).rev().find(|&at| &context[at..at + n] == suffix);
            if let Some(at) = found {
                let next = at + n;
                return context[next..(next + max).min(context.len())].to_vec();
            }
        }
        Vec::new()
    }
}

/// Every this many decode steps, one goes the other way (plain while speculating, drafted
/// while not), so that the cost of both stays measured.
const PROBE_EVERY: usize = 8;

/// A drafter with an adaptive draft length (what it drafted and had accepted is counted on
/// each `Generation`).
///
/// The draft length follows acceptance; whether to draft at all follows cost: a verify step
/// costs more than a plain one (more positions through every block, more logits back), and
/// on a fast route that can outweigh what its accepted drafts save. Seconds per emitted token
/// are kept for both kinds of decode step, and drafting stops while plain steps are cheaper.
pub struct Speculation {
    drafter: Box<dyn Drafter>,
    /// The most drafts one step verifies.
    max_draft: usize,
    /// Drafts asked for next: grows by 2 when every draft was accepted, shrinks by 1 when
    /// one was rejected (Hugging Face's assisted generation heuristic), within 1..=max.
    next_draft: usize,
    /// Moving averages of seconds per emitted token: decode steps without drafts, and verify
    /// steps.
    plain_cost: Option<f64>,
    verify_cost: Option<f64>,
    decode_steps: usize,
}

impl Speculation {
    pub fn new(drafter: Box<dyn Drafter>, max_draft: usize) -> Self {
        let max_draft = max_draft.max(1);
        Self {
            drafter,
            max_draft,
            next_draft: max_draft,
            plain_cost: None,
            verify_cost: None,
            decode_steps: 0,
        }
    }

    /// Lets the drafter read the prompt (not counted in any step's cost).
    pub(super) fn prepare(&mut self, prompt: &[u32]) {
        self.drafter.prepare(prompt);
    }

    /// Drafts for `context` for the next decode step, at most `room`: none while verify
    /// steps cost more per token than plain ones (but for a probe now and then).
    pub(super) fn draft(&mut self, context: &[u32], room: usize) -> Vec<u32> {
        self.decode_steps += 1;
        let losing = matches!((self.plain_cost, self.verify_cost), (Some(p), Some(v)) if v > p);
        let probe = self.decode_steps.is_multiple_of(PROBE_EVERY);
        if losing != probe {
            return Vec::new();
        }
        let mut draft = self.drafter.draft(context, self.next_draft.min(room));
        draft.truncate(self.next_draft.min(room));
        draft
    }

    /// Counts one decode step that took `took`: `drafted` proposed, the first `accepted` kept.
    pub(super) fn verified(&mut self, drafted: usize, accepted: usize, took: std::time::Duration) {
        let per_token = took.as_secs_f64() / (accepted + 1) as f64;
        let cost = if drafted == 0 { &mut self.plain_cost } else { &mut self.verify_cost };
        *cost = Some(cost.map_or(per_token, |old| 0.8 * old + 0.2 * per_token));
        if drafted == 0 {
            return;
        }
        self.drafter.judged(drafted, accepted);
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
        let ms = std::time::Duration::from_millis;
        speculation.verified(4, 1, ms(10));
        speculation.verified(3, 0, ms(10));
        assert_eq!(speculation.next_draft, 2);
        speculation.verified(2, 2, ms(10));
        assert_eq!(speculation.next_draft, 4);
        // A plain step leaves the draft length alone.
        speculation.verified(0, 0, ms(10));
        assert_eq!(speculation.next_draft, 4);
    }

    /// Records the verdicts it is told of.
    struct Judged(std::sync::Arc<std::sync::Mutex<Vec<(usize, usize)>>>);

    impl Drafter for Judged {
        fn draft(&mut self, _context: &[u32], max: usize) -> Vec<u32> {
            vec![0; max]
        }
        fn judged(&mut self, drafted: usize, accepted: usize) {
            self.0.lock().unwrap().push((drafted, accepted));
        }
    }

    #[test]
    fn the_drafter_hears_what_each_verify_step_kept_of_its_draft() {
        let verdicts: std::sync::Arc<std::sync::Mutex<Vec<(usize, usize)>>> = Default::default();
        let mut speculation = Speculation::new(Box::new(Judged(verdicts.clone())), 4);
        let ms = std::time::Duration::from_millis;
        speculation.verified(4, 1, ms(10));
        speculation.verified(0, 0, ms(10));
        speculation.verified(3, 3, ms(10));
        assert_eq!(*verdicts.lock().unwrap(), [(4, 1), (3, 3)], "plain steps judge nothing");
    }

    /// A context prompt lookup always drafts for.
    const LOOPING: [u32; 6] = [1, 2, 3, 1, 2, 3];

    #[test]
    fn drafting_stops_while_plain_steps_are_cheaper_but_for_probes() {
        let mut speculation = Speculation::new(Box::new(PromptLookup::default()), 4);
        let ms = std::time::Duration::from_millis;
        // Verify steps of 30 ms keeping one draft (15 ms a token) against plain 10 ms steps.
        speculation.verified(0, 0, ms(10));
        speculation.verified(4, 1, ms(30));
        let drafted: Vec<bool> =
            (0..16).map(|_| !speculation.draft(&LOOPING, 4).is_empty()).collect();
        assert_eq!(drafted.iter().filter(|&&d| d).count(), 2, "only the probes draft: {drafted:?}");
        // Verify steps now keeping every draft (6 ms a token): drafting resumes at once.
        for _ in 0..8 {
            speculation.verified(4, 4, ms(30));
        }
        let drafted = (0..16).filter(|_| !speculation.draft(&LOOPING, 4).is_empty()).count();
        assert_eq!(drafted, 14, "all but the plain probes draft");
    }
}

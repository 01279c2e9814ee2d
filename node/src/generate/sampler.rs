use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1.0: all).
    pub top_p: f32,
    /// Seed of the sampling RNG; the same seed gives the same tokens.
    pub seed: u64,
    /// How many alternatives with log-probabilities to report per token.
    pub top_logprobs: usize,
    /// Added to the logits of these token ids before choosing (OpenAI's `logit_bias`).
    pub logit_bias: Vec<(u32, f32)>,
    /// Subtracted from the logit of every token already generated (OpenAI's
    /// `presence_penalty`).
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time it was generated (OpenAI's
    /// `frequency_penalty`).
    pub frequency_penalty: f32,
    /// Score the prompt too, reporting this many alternatives per prompt token (vLLM's
    /// `prompt_logprobs`; what OpenAI's `echo` with `logprobs` shows).
    pub prompt_logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            top_logprobs: 5,
            logit_bias: Vec::new(),
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            prompt_logprobs: None,
        }
    }
}

/// The chosen token with its log-probability and the most likely alternatives, all from
/// the model's unscaled distribution, before biases and penalties (as the OpenAI `logprobs`
/// field reports them).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenChoice {
    pub id: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// Picks tokens from logits.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// How often each token was chosen so far, for the penalties.
    counts: HashMap<u32, u32>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = StdRng::seed_from_u64(params.seed);
        Self { params, rng, counts: HashMap::new() }
    }

    /// `id` as the next token after the position of `logits`, with its log-probability and
    /// the `top` most likely alternatives (how a prompt token is scored).
    pub fn score(logits: &[f32], id: u32, top: usize) -> TokenChoice {
        let logprobs = log_softmax(logits, 1.0);
        let logprob = logprobs.get(id as usize).map_or(f32::NEG_INFINITY, |&lp| lp as f32);
        TokenChoice { id, logprob, top: most_likely(&logprobs, top) }
    }

    /// Chooses the next token from the logits of the newest position.
    pub fn choose(&mut self, logits: &[f32]) -> TokenChoice {
        let logprobs = log_softmax(logits, 1.0);
        let top = most_likely(&logprobs, self.params.top_logprobs);
        let adjusted = self.adjusted(logits);
        let logits = adjusted.as_deref().unwrap_or(logits);
        let adjusted_logprobs = adjusted.as_deref().map(|adjusted| log_softmax(adjusted, 1.0));
        let ranked = adjusted_logprobs.as_deref().unwrap_or(&logprobs);
        // Greedy needs only the best token; sampling, the candidates top_k keeps, in order.
        let id = if self.params.temperature <= 0.0 {
            highest(ranked, 1)[0]
        } else {
            let keep = if self.params.top_k == 0 { ranked.len() } else { self.params.top_k };
            self.sample(logits, &highest(ranked, keep))
        };
        *self.counts.entry(id as u32).or_default() += 1;
        TokenChoice { id: id as u32, logprob: logprobs[id] as f32, top }
    }

    /// The logits with `logit_bias` and the penalties applied, as OpenAI defines them:
    /// `logit[j] + bias[j] − count[j]·frequency_penalty − (count[j] > 0)·presence_penalty`;
    /// `None` when nothing changes them.
    fn adjusted(&self, logits: &[f32]) -> Option<Vec<f32>> {
        let SamplingParams { logit_bias, presence_penalty, frequency_penalty, .. } = &self.params;
        let penalized = *presence_penalty != 0.0 || *frequency_penalty != 0.0;
        if logit_bias.is_empty() && (!penalized || self.counts.is_empty()) {
            return None;
        }
        let mut adjusted = logits.to_vec();
        for &(id, bias) in logit_bias {
            if let Some(logit) = adjusted.get_mut(id as usize) {
                *logit += bias;
            }
        }
        if penalized {
            for (&id, &count) in &self.counts {
                if let Some(logit) = adjusted.get_mut(id as usize) {
                    *logit -= count as f32 * frequency_penalty + presence_penalty;
                }
            }
        }
        Some(adjusted)
    }

    fn sample(&mut self, logits: &[f32], order: &[usize]) -> usize {
        let scaled = log_softmax(logits, self.params.temperature as f64);
        let keep_k =
            if self.params.top_k == 0 { order.len() } else { self.params.top_k.min(order.len()) };
        let mut kept = Vec::with_capacity(keep_k);
        let mut mass = 0.0;
        for &i in &order[..keep_k] {
            let p = scaled[i].exp();
            kept.push((i, p));
            mass += p;
            if mass >= self.params.top_p as f64 {
                break;
            }
        }
        let mut target = self.rng.random::<f64>() * mass;
        for &(i, p) in &kept {
            if target < p {
                return i;
            }
            target -= p;
        }
        kept.last().map(|&(i, _)| i).unwrap_or(order[0])
    }
}

/// The `count` most likely tokens with their log-probabilities.
fn most_likely(logprobs: &[f64], count: usize) -> Vec<(u32, f32)> {
    highest(logprobs, count).into_iter().map(|i| (i as u32, logprobs[i] as f32)).collect()
}

/// The indices of the `count` highest log-probabilities, highest first; ties resolve to the
/// lower id, like argmax. It selects them before sorting them, since this runs for every
/// token over the whole vocabulary (tens of thousands of entries) and usually wants a few.
fn highest(logprobs: &[f64], count: usize) -> Vec<usize> {
    let by_rank = |a: &usize, b: &usize| logprobs[*b].total_cmp(&logprobs[*a]).then(a.cmp(b));
    let mut order: Vec<usize> = (0..logprobs.len()).collect();
    let count = count.min(order.len());
    if count == 0 {
        return Vec::new();
    }
    if count < order.len() {
        order.select_nth_unstable_by(count - 1, by_rank);
        order.truncate(count);
    }
    // `by_rank` is a total order (ids break ties), so an unstable sort gives one answer.
    order.sort_unstable_by(by_rank);
    order
}

/// The most likely token; ties go to the lowest id, as in greedy sampling.
pub fn argmax(logits: &[f32]) -> u32 {
    logits
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &x)| if x > best.1 { (i, x) } else { best })
        .0 as u32
}

fn log_softmax(logits: &[f32], temperature: f64) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64 / temperature;
    let sum: f64 = logits.iter().map(|&l| (l as f64 / temperature - max).exp()).sum();
    let log_sum = sum.ln() + max;
    logits.iter().map(|&l| l as f64 / temperature - log_sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_argmax_and_reports_normalized_logprobs() {
        let mut s = Sampler::new(SamplingParams { top_logprobs: 2, ..Default::default() });
        let c = s.choose(&[1.0, 3.0, 2.0]);
        assert_eq!(c.id, 1);
        assert_eq!(c.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
        let total: f64 = [1.0f64, 3.0, 2.0].iter().map(|l| l - 3.0).map(f64::exp).sum();
        assert!((c.logprob as f64 + total.ln()).abs() < 1e-6);
    }

    #[test]
    fn the_highest_are_those_a_full_sort_ranks_first_ties_to_the_lower_id() {
        let logprobs: Vec<f64> =
            (0..1000u64).map(|i| ((i * 7919) % 97) as f64 - 50.0).chain([f64::NAN, 46.0]).collect();
        let mut sorted: Vec<usize> = (0..logprobs.len()).collect();
        sorted.sort_by(|&a, &b| logprobs[b].total_cmp(&logprobs[a]).then(a.cmp(&b)));
        for count in [0, 1, 2, 5, 20, 999, 1002, 5000] {
            assert_eq!(highest(&logprobs, count), sorted[..count.min(sorted.len())], "{count}");
        }
    }

    #[test]
    fn sampling_is_seeded_and_respects_top_k() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32).collect();
        let params = SamplingParams { temperature: 1.0, top_k: 3, seed: 7, ..Default::default() };
        let run = |p: SamplingParams| {
            let mut s = Sampler::new(p);
            (0..100).map(|_| s.choose(&logits).id).collect::<Vec<_>>()
        };
        let a = run(params.clone());
        assert_eq!(a, run(params.clone()));
        assert_ne!(a, run(SamplingParams { seed: 8, ..params.clone() }));
        // The three highest logits (6.0) are at ids 6, 13, 20.
        assert!(a.iter().all(|id| [6, 13, 20].contains(id)));
        let p = SamplingParams { temperature: 1.0, top_p: 0.01, seed: 1, ..Default::default() };
        assert!(run(p).iter().all(|&id| id == 6), "top_p this small keeps only the top token");
    }

    #[test]
    fn bias_and_penalties_change_the_choice_but_not_the_reported_logprobs() {
        let logits = [2.0, 1.5, 0.0];
        let raw = log_softmax(&logits, 1.0);
        let mut barred = Sampler::new(SamplingParams {
            logit_bias: vec![(0, -100.0)],
            top_logprobs: 3,
            ..Default::default()
        });
        let c = barred.choose(&logits);
        assert_eq!(c.id, 1, "-100 on the greedy token picks the runner-up");
        assert_eq!(c.logprob, raw[1] as f32, "reported from the unbiased distribution");
        assert_eq!(c.top[0].0, 0, "alternatives are unbiased too");

        // frequency 0.3: after one 0, 0 scores 1.7 and still wins; after two, 1.4 < 1.5;
        // then 1 has one too (1.2) and 0 wins again.
        let mut s = Sampler::new(SamplingParams { frequency_penalty: 0.3, ..Default::default() });
        assert_eq!([0, 0, 0, 0].map(|_| s.choose(&logits).id), [0, 0, 1, 0]);
        // presence 0.6: once 0 and 1 were chosen they score 1.4 and 0.9: back to 0.
        let mut s = Sampler::new(SamplingParams { presence_penalty: 0.6, ..Default::default() });
        assert_eq!([0, 0, 0].map(|_| s.choose(&logits).id), [0, 1, 0]);
    }
}

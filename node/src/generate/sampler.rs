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
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0, top_logprobs: 5 }
    }
}

/// The chosen token with its log-probability and the most likely alternatives, all from
/// the model's unscaled distribution (as the OpenAI `logprobs` field reports them).
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
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = StdRng::seed_from_u64(params.seed);
        Self { params, rng }
    }

    /// Chooses the next token from the logits of the newest position.
    pub fn choose(&mut self, logits: &[f32]) -> TokenChoice {
        let logprobs = log_softmax(logits, 1.0);
        let mut order: Vec<usize> = (0..logits.len()).collect();
        // Highest first; ties resolve to the lower id, like argmax.
        order.sort_by(|&a, &b| logprobs[b].total_cmp(&logprobs[a]).then(a.cmp(&b)));
        let top = order
            .iter()
            .take(self.params.top_logprobs)
            .map(|&i| (i as u32, logprobs[i] as f32))
            .collect();

        let id =
            if self.params.temperature <= 0.0 { order[0] } else { self.sample(logits, &order) };
        TokenChoice { id: id as u32, logprob: logprobs[id] as f32, top }
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
}

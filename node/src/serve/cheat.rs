//! Deliberately wrong answers, to show that validators catch them. For tests and benchmarks
//! only: a node that runs one is reported, convicted and slashed. Two kinds: perturbing a
//! fraction of answers after computing them, and "lazy" — skipping work on every answer.

use std::sync::Mutex;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::engine::Activation;
use crate::net::codec::Payload;

/// How a testing node cheats.
#[derive(Debug)]
pub enum Cheat {
    /// Perturbs a fraction of its answers.
    Perturb { fraction: f64, rng: Box<Mutex<StdRng>> },
    /// Skips the last block of its span on every answer where the skipped block's output
    /// would be hidden states (not logits) and its input is at hand: the block's input is
    /// passed on as its output, the residual stream unchanged — most of the value, none of
    /// the block's compute.
    Lazy,
}

impl Cheat {
    /// How much each value of a perturbed answer moves, relative to itself: well above the
    /// judge's tolerance, small enough to look like a plausible answer.
    pub const RELATIVE_NOISE: f32 = 0.01;

    /// Perturbs each answer with probability `fraction` (seeded, so a test is repeatable).
    pub fn perturbing(fraction: f64, seed: u64) -> Self {
        Self::Perturb {
            fraction: fraction.clamp(0.0, 1.0),
            rng: Box::new(Mutex::new(StdRng::seed_from_u64(seed))),
        }
    }

    /// Whether this cheat skips blocks.
    pub fn is_lazy(&self) -> bool {
        matches!(self, Self::Lazy)
    }

    /// Maybe perturbs `output`: every value times `1 + RELATIVE_NOISE · u`, `u` uniform in
    /// [−1, 1]. Returns whether it did.
    pub fn apply(&self, output: &mut Payload) -> bool {
        let (Self::Perturb { fraction, rng }, Payload::Tensor(tensor)) = (self, output) else {
            return false;
        };
        let mut rng = rng.lock().expect("cheat rng");
        if !rng.random_bool(*fraction) {
            return false;
        }
        let data = tensor
            .data()
            .iter()
            .map(|v| v * (1.0 + Self::RELATIVE_NOISE * rng.random_range(-1.0f32..=1.0)))
            .collect();
        *tensor = Activation::new(tensor.shape().to_vec(), data).expect("same shape");
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perturbs_the_asked_fraction_and_only_tensors() {
        let cheat = Cheat::perturbing(0.25, 7);
        let clean = Activation::new(vec![1, 1, 64], vec![1.0; 64]).unwrap();
        let mut perturbed = 0;
        for _ in 0..4000 {
            let mut output = Payload::Tensor(clean.clone());
            if cheat.apply(&mut output) {
                perturbed += 1;
                let Payload::Tensor(t) = output else { unreachable!() };
                assert!(t.data().iter().any(|&v| v != 1.0));
                assert!(t.data().iter().all(|&v| (v - 1.0).abs() <= Cheat::RELATIVE_NOISE));
            }
        }
        assert!((900..1100).contains(&perturbed), "{perturbed} of 4000");
        assert!(!Cheat::perturbing(1.0, 1).apply(&mut Payload::Empty));
        let mut untouched = Payload::Tensor(clean.clone());
        assert!(!Cheat::Lazy.apply(&mut untouched), "lazy skips work, it does not perturb");
    }
}

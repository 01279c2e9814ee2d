//! The judge: whether a node's output is the expected output up to honest floating-point
//! noise. Exact hashes cannot be the test — thread counts, kernels, optimization levels and
//! CPU vs CUDA all move the last bits — so outputs are compared within a tolerance, and the
//! tolerance is calibrated (`infergrid bench judge`) to sit far above the largest honest
//! error and far below the smallest cheat.
//!
//! The error of `actual` against `expected` is `max |actual − expected| / max |expected|`
//! over all values: relative to the tensor's own scale, so one threshold serves hidden
//! states (whose scale grows with depth, with a few very large channels) and logits alike.

use crate::engine::Activation;

/// The largest error an honest answer may have (`protocol-spec/validation.md`, "The judge").
pub const DEFAULT_TOLERANCE: f64 = 1e-3;

/// A judgement of one answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Within tolerance; `error` is the relative error.
    Pass { error: f64 },
    /// Out of tolerance: a wrong answer.
    Fail { error: f64 },
    /// Not comparable at all (another shape, or a non-finite value): a wrong answer.
    Malformed,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        matches!(self, Verdict::Pass { .. })
    }
}

/// Judges answers against expected outputs with a fixed tolerance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Judge {
    pub tolerance: f64,
}

impl Default for Judge {
    fn default() -> Self {
        Self { tolerance: DEFAULT_TOLERANCE }
    }
}

impl Judge {
    pub fn judge(&self, expected: &Activation, actual: &Activation) -> Verdict {
        match relative_error(expected, actual) {
            Some(error) if error <= self.tolerance => Verdict::Pass { error },
            Some(error) => Verdict::Fail { error },
            None => Verdict::Malformed,
        }
    }
}

/// `max |actual − expected| / max |expected|`, or `None` when the tensors are not comparable
/// (other shapes, a non-finite value). An all-zero expected tensor is compared absolutely.
pub fn relative_error(expected: &Activation, actual: &Activation) -> Option<f64> {
    if expected.shape() != actual.shape() {
        return None;
    }
    let (mut scale, mut worst) = (0.0f64, 0.0f64);
    for (&e, &a) in expected.data().iter().zip(actual.data()) {
        if !e.is_finite() || !a.is_finite() {
            return None;
        }
        scale = scale.max(f64::from(e).abs());
        worst = worst.max((f64::from(a) - f64::from(e)).abs());
    }
    Some(if scale > 0.0 { worst / scale } else { worst })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(values: &[f32]) -> Activation {
        Activation::new(vec![1, 1, values.len()], values.to_vec()).unwrap()
    }

    #[test]
    fn errors_are_relative_to_the_tensors_scale() {
        let judge = Judge::default();
        let expected = tensor(&[100.0, -3.0, 0.5]);
        assert_eq!(judge.judge(&expected, &expected), Verdict::Pass { error: 0.0 });
        // 0.01 off on a tensor of scale 100: 1e-4, honest noise.
        assert!(judge.judge(&expected, &tensor(&[100.0, -3.01, 0.5])).passed());
        // 1 off: 1e-2, a wrong answer.
        let Verdict::Fail { error } = judge.judge(&expected, &tensor(&[100.0, -2.0, 0.5])) else {
            panic!("a 1% error passed")
        };
        assert!((error - 0.01).abs() < 1e-9);
        assert_eq!(judge.judge(&expected, &tensor(&[100.0, f32::NAN, 0.5])), Verdict::Malformed);
        assert_eq!(judge.judge(&expected, &tensor(&[100.0, -3.0])), Verdict::Malformed);
        assert_eq!(relative_error(&tensor(&[0.0, 0.0]), &tensor(&[0.0, 0.5])), Some(0.5));
    }
}

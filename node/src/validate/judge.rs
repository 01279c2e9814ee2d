//! The judge: whether a node's output is the expected output up to honest floating-point
//! noise. Exact hashes cannot be the test — thread counts, kernels, optimization levels and
//! CPU vs CUDA all move the last bits — so outputs are compared within a tolerance, and the
//! tolerance is calibrated (`infergrid bench judge`) to sit far above the largest honest
//! error and far below the smallest cheat.
//!
//! The error of `actual` against `expected` is, over the rows (positions) of the tensors,
//! the largest `‖actual_row − expected_row‖₂ / ‖expected_row‖₂`: relative to each row's own
//! scale, so one threshold serves hidden states (whose scale grows with depth) and logits
//! alike, and a change spread over many ordinary channels counts in full even when a few very
//! large channels dominate the row (a max-norm would let it hide under them).

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

/// The largest relative L2 error over rows (the last dimension), or `None` when the tensors
/// are not comparable (other shapes, a non-finite value). A row expected all zeros is
/// compared absolutely.
pub fn relative_error(expected: &Activation, actual: &Activation) -> Option<f64> {
    if expected.shape() != actual.shape() {
        return None;
    }
    let width = expected.shape().last().copied().unwrap_or(0).max(1);
    let mut worst = 0.0f64;
    for (e_row, a_row) in expected.data().chunks(width).zip(actual.data().chunks(width)) {
        let (mut norm, mut diff) = (0.0f64, 0.0f64);
        for (&e, &a) in e_row.iter().zip(a_row) {
            if !e.is_finite() || !a.is_finite() {
                return None;
            }
            norm += f64::from(e) * f64::from(e);
            diff += (f64::from(a) - f64::from(e)).powi(2);
        }
        let error = if norm > 0.0 { (diff / norm).sqrt() } else { diff.sqrt() };
        worst = worst.max(error);
    }
    Some(worst)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(values: &[f32]) -> Activation {
        Activation::new(vec![1, 1, values.len()], values.to_vec()).unwrap()
    }

    #[test]
    fn errors_are_relative_to_each_rows_scale() {
        let judge = Judge::default();
        let expected = tensor(&[100.0, -3.0, 0.5]);
        assert_eq!(judge.judge(&expected, &expected), Verdict::Pass { error: 0.0 });
        // 0.01 off on a row of norm ~100: 1e-4, honest noise.
        assert!(judge.judge(&expected, &tensor(&[100.0, -3.01, 0.5])).passed());
        // 1 off: 1e-2, a wrong answer.
        let Verdict::Fail { error } = judge.judge(&expected, &tensor(&[100.0, -2.0, 0.5])) else {
            panic!("a 1% error passed")
        };
        assert!((error - 1.0 / 100.046f64).abs() < 1e-4, "{error}");
        assert_eq!(judge.judge(&expected, &tensor(&[100.0, f32::NAN, 0.5])), Verdict::Malformed);
        assert_eq!(judge.judge(&expected, &tensor(&[100.0, -3.0])), Verdict::Malformed);
        assert_eq!(relative_error(&tensor(&[0.0, 0.0]), &tensor(&[0.0, 0.5])), Some(0.5));
    }

    #[test]
    fn a_change_spread_over_ordinary_channels_is_not_hidden_by_a_huge_one() {
        // One channel of 1000, 63 of about 1: a max-norm judge sees 0.3/1000 = 3e-4 and
        // passes an answer whose ordinary channels are all 30% off.
        let mut values = vec![1.0f32; 64];
        values[0] = 1000.0;
        let moved: Vec<f32> =
            values.iter().enumerate().map(|(i, v)| if i == 0 { *v } else { v * 1.3 }).collect();
        let verdict = Judge::default().judge(&tensor(&values), &tensor(&moved));
        assert!(matches!(verdict, Verdict::Fail { error } if error > 2e-3), "{verdict:?}");
        // Each row is judged on its own scale: a wrong second row fails the answer.
        let rows =
            |second: f32| Activation::new(vec![1, 2, 2], vec![50.0, 50.0, second, 1.0]).unwrap();
        assert!(!Judge::default().judge(&rows(1.0), &rows(1.1)).passed());
    }
}

//! Batched decoder steps: many sessions' steps through one block in one ONNX Runtime call.
//!
//! Each session's KV cache stays its own (`[1, KV, L, D]` per layer, as an unbatched step
//! leaves it). For a batched call the caches are copied into one padded `[B, KV, P, D]`
//! tensor per layer, `P` the longest, row `b`'s `L[b]` tokens first (the graph's
//! `past_lengths` input masks the padding out); the call returns `[B, KV, P + S, D]`, from
//! which each row's `L[b]` cached and `S` new tokens are copied back out. The copies cost
//! about what attention spends reading the cache; in exchange the weights are read once for
//! the whole batch instead of once per session.

/// Copies `rows` caches (each `[1, heads, len, dim]`, as `(len, values)`; `None` for a row
/// starting fresh) into one `[rows, heads, padded, dim]` buffer, zero-padded.
pub(crate) fn pad_past(
    rows: &[Option<(usize, &[f32])>],
    heads: usize,
    padded: usize,
    dim: usize,
) -> Vec<f32> {
    let mut out = vec![0.0; rows.len() * heads * padded * dim];
    for (b, row) in rows.iter().enumerate() {
        let Some((len, values)) = row else { continue };
        for h in 0..heads {
            let from = h * len * dim;
            let to = ((b * heads + h) * padded) * dim;
            out[to..to + len * dim].copy_from_slice(&values[from..from + len * dim]);
        }
    }
    out
}

/// Row `b` of a `[rows, heads, padded + steps, dim]` present tensor as its own
/// `[1, heads, len + steps, dim]` cache: its `len` cached tokens and the `steps` new ones.
pub(crate) fn unpad_present(
    present: &[f32],
    b: usize,
    len: usize,
    (heads, padded, steps, dim): (usize, usize, usize, usize),
) -> Vec<f32> {
    let total = padded + steps;
    let mut out = Vec::with_capacity(heads * (len + steps) * dim);
    for h in 0..heads {
        let base = ((b * heads + h) * total) * dim;
        out.extend_from_slice(&present[base..base + len * dim]);
        out.extend_from_slice(&present[base + padded * dim..base + total * dim]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caches_round_trip_through_the_padded_batch() {
        // Two heads of dim 2; row 0 holds 1 token, row 1 holds 3, row 2 starts fresh.
        let row0: Vec<f32> = (0..4).map(|v| v as f32).collect(); // [1, 2, 1, 2]
        let row1: Vec<f32> = (100..112).map(|v| v as f32).collect(); // [1, 2, 3, 2]
        let rows = [Some((1, row0.as_slice())), Some((3, row1.as_slice())), None];
        let padded = pad_past(&rows, 2, 3, 2);
        assert_eq!(padded.len(), 3 * 2 * 3 * 2);
        assert_eq!(&padded[0..6], &[0.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(&padded[6..12], &[2.0, 3.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(&padded[12..24], row1.as_slice());
        assert!(padded[24..].iter().all(|&v| v == 0.0));

        // A present tensor is the padded past with one new step appended per row (value 9).
        let present: Vec<f32> =
            padded.chunks(3 * 2).flat_map(|head| head.iter().copied().chain([9.0, 9.0])).collect();
        assert_eq!(
            unpad_present(&present, 0, 1, (2, 3, 1, 2)),
            vec![0.0, 1.0, 9.0, 9.0, 2.0, 3.0, 9.0, 9.0]
        );
        let grown = unpad_present(&present, 1, 3, (2, 3, 1, 2));
        assert_eq!(&grown[0..6], &row1[0..6]);
        assert_eq!(&grown[6..8], &[9.0, 9.0]);
        assert_eq!(unpad_present(&present, 2, 0, (2, 3, 1, 2)), vec![9.0; 4]);
    }
}

//! Batched decoder steps: many sessions' steps through one block in one ONNX Runtime call.
//!
//! A batched call takes one left-padded `[B, KV, P, D]` past per layer: row b's first
//! `past_padding[b]` positions are padding and its `L[b]` cached tokens fill the rest, so the
//! call's `[B, KV, P + S, D]` present holds every row's tokens contiguously, padding still in
//! front. That present is kept whole ([`BatchCache`]) and each session's cache becomes a view
//! of its row. When the next step is a step of exactly the same sessions — decoding in
//! lockstep, the common case — the kept present *is* the next past, and no cache is copied on
//! this side of ONNX Runtime. When the batch changes (a session joins, leaves or runs alone),
//! the rows are copied into a new padded past, `P` the longest row.

use ort::value::DynValue;

/// The present tensors of one batched call, shared by the sessions whose caches are its rows.
pub(crate) struct BatchCache {
    /// `(key, value)` per layer, each `[B, KV, T, D]`.
    pub layers: Vec<(DynValue, DynValue)>,
    /// Padding positions in front of each row's tokens.
    pub padding: Vec<usize>,
}

/// One session's cached tokens in one layer's tensor `[rows, heads, total, dim]` (`data`):
/// row `row`, positions `start .. start + len` of the `total` axis.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowSpan<'a> {
    pub data: &'a [f32],
    pub heads: usize,
    pub dim: usize,
    pub row: usize,
    pub total: usize,
    pub start: usize,
    pub len: usize,
}

/// Copies `rows` caches (`None` for a row starting fresh) into one left-padded
/// `[rows, heads, padded, dim]` buffer: row b's `len` tokens at the end of its axis, zeros in
/// front. (The padding is masked out, but must be finite: a masked score weighs it 0, and
/// 0 · NaN is not 0.) One row with `padded == len` is a plain copy of that session's cache.
/// Every span has `heads` and `dim`, and at most `padded` tokens.
pub(crate) fn left_pad(
    rows: &[Option<RowSpan<'_>>],
    heads: usize,
    padded: usize,
    dim: usize,
) -> Vec<f32> {
    let mut out = vec![0.0; rows.len() * heads * padded * dim];
    for (b, row) in rows.iter().enumerate() {
        let Some(span) = row else { continue };
        debug_assert!(span.heads == heads && span.dim == dim && span.len <= padded);
        let skip = padded - span.len;
        for h in 0..heads {
            let from = ((span.row * heads + h) * span.total + span.start) * dim;
            let to = ((b * heads + h) * padded + skip) * dim;
            out[to..to + span.len * dim].copy_from_slice(&span.data[from..from + span.len * dim]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_of_a_batch_are_copied_into_a_left_padded_batch() {
        // A source batch of 2 rows, 2 heads of dim 2, total 3: row 0 has 1 padding position.
        let source: Vec<f32> = (0..24).map(|v| v as f32).collect();
        let span = |row, start, len| RowSpan {
            data: &source,
            heads: 2,
            dim: 2,
            row,
            total: 3,
            start,
            len,
        };
        let (row0, row1) = (span(0, 1, 2), span(1, 0, 3));
        // An unbatched cache [1, 2, 1, 2].
        let own: Vec<f32> = vec![100.0, 101.0, 102.0, 103.0];
        let single = RowSpan { data: &own, heads: 2, dim: 2, row: 0, total: 1, start: 0, len: 1 };

        let padded = left_pad(&[Some(single), Some(row0), None, Some(row1)], 2, 3, 2);
        assert_eq!(padded.len(), 4 * 2 * 3 * 2);
        // The single token sits last, after two padding positions, in each head.
        assert_eq!(&padded[0..6], &[0.0, 0.0, 0.0, 0.0, 100.0, 101.0]);
        assert_eq!(&padded[6..12], &[0.0, 0.0, 0.0, 0.0, 102.0, 103.0]);
        // Row 0 of the source: its padding dropped, its 2 tokens after one new padding position.
        assert_eq!(&padded[12..18], &[0.0, 0.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(&padded[18..24], &[0.0, 0.0, 8.0, 9.0, 10.0, 11.0]);
        // The fresh row is all padding; row 1 of the source fills its row.
        assert!(padded[24..36].iter().all(|&v| v == 0.0));
        assert_eq!(&padded[36..48], &source[12..24]);

        // One row cut to its first token, unpadded: what a rollback keeps.
        let cut = RowSpan { len: 1, ..row1 };
        assert_eq!(left_pad(&[Some(cut)], 2, 1, 2), vec![12.0, 13.0, 18.0, 19.0]);
    }
}

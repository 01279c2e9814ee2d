/// A float32 activation crossing a block boundary: `hidden_out` of one block is `hidden_in`
/// of the next, whether the next block runs in this process or on a peer.
#[derive(Debug, Clone, PartialEq)]
pub struct Activation {
    shape: Vec<usize>,
    data: Vec<f32>,
}

/// Why bytes or values do not form an activation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActivationError {
    #[error("shape {shape:?} holds {expected} values, got {actual}")]
    Length { shape: Vec<usize>, expected: usize, actual: usize },
    #[error("shape {0:?} is too large")]
    Overflow(Vec<usize>),
}

impl Activation {
    /// An activation of `shape` with `data` in row-major order.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self, ActivationError> {
        let expected = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| ActivationError::Overflow(shape.clone()))?;
        if expected != data.len() {
            return Err(ActivationError::Length { shape, expected, actual: data.len() });
        }
        Ok(Self { shape, data })
    }

    /// Decodes little-endian f32 bytes, as they arrive from a peer.
    pub fn from_le_bytes(shape: Vec<usize>, bytes: &[u8]) -> Result<Self, ActivationError> {
        if !bytes.len().is_multiple_of(4) {
            return Err(ActivationError::Length {
                shape,
                expected: bytes.len().div_ceil(4),
                actual: bytes.len() / 4,
            });
        }
        let data =
            bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        Self::new(shape, data)
    }

    /// Little-endian f32 bytes, for a peer.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        self.data.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn data(&self) -> &[f32] {
        &self.data
    }

    pub(crate) fn into_parts(self) -> (Vec<usize>, Vec<f32>) {
        (self.shape, self.data)
    }

    /// Positions of a `[1, S, N]` activation (`S`).
    pub fn rows(&self) -> usize {
        match self.shape.as_slice() {
            [.., rows, _] => *rows,
            _ => 0,
        }
    }

    /// Row `i` of a `[1, S, N]` activation: the logits (or hidden state) of its `i`-th position.
    pub fn row(&self, i: usize) -> &[f32] {
        let width = self.shape.last().copied().unwrap_or(0);
        &self.data[i * width..(i + 1) * width]
    }

    /// The last row of a `[1, S, N]` activation: the logits of the newest position.
    pub fn last_row(&self) -> &[f32] {
        let width = self.shape.last().copied().unwrap_or(0);
        &self.data[self.data.len().saturating_sub(width)..]
    }
}

/// What a block consumes: token ids for the first block, hidden states for the others.
#[derive(Debug, Clone, PartialEq)]
pub enum BlockInput {
    Tokens(Vec<i64>),
    Hidden(Activation),
}

impl BlockInput {
    /// Number of positions in this step.
    pub fn len(&self) -> usize {
        match self {
            BlockInput::Tokens(ids) => ids.len(),
            BlockInput::Hidden(a) => a.shape().get(1).copied().unwrap_or(0),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_lengths_are_checked() {
        let a = Activation::new(vec![1, 2, 3], (0..6).map(|v| v as f32 * 0.5).collect()).unwrap();
        assert_eq!(Activation::from_le_bytes(vec![1, 2, 3], &a.to_le_bytes()).unwrap(), a);
        assert!(matches!(
            Activation::from_le_bytes(vec![1, 2, 4], &a.to_le_bytes()),
            Err(ActivationError::Length { .. })
        ));
        assert!(Activation::from_le_bytes(vec![1, 2, 3], &[0u8; 7]).is_err());
        assert!(matches!(
            Activation::new(vec![usize::MAX, 2], vec![]),
            Err(ActivationError::Overflow(_))
        ));
        assert_eq!(a.last_row(), &[1.5, 2.0, 2.5]);
    }
}

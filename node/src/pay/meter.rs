//! Metering: what one step through a node costs (`protocol-spec/payments.md`, "Metering").
//!
//! The unit is the *block-token*: one token position through one layer block. A node's
//! registered `pricePerToken` buys one token through its whole registered span, so a step
//! using `k` of the span's `n` blocks for `t` tokens is `t·k` block-tokens at `price / n`
//! each. Amounts are computed from the cumulative count, so rounding never accumulates and
//! payer and node, counting the same steps, arrive at the same wei.

use alloy::primitives::U256;

use crate::net::codec::{InferRequest, Payload, StepKind};

/// A node's price as registered on-chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tariff {
    /// Token wei for one token through the whole registered span.
    pub price_per_token: U256,
    /// Blocks in the registered span (`lastBlock - firstBlock + 1`), at least 1.
    pub span_blocks: u16,
}

impl Tariff {
    /// The cumulative amount owed for `block_tokens` metered units: `⌊price · units / span⌋`.
    pub fn amount(&self, block_tokens: u64) -> U256 {
        self.price_per_token * U256::from(block_tokens) / U256::from(self.span_blocks.max(1))
    }

    /// The block-tokens whose amount is exactly `wei`, if any: the count a move to new terms
    /// settled (`payments.md`, "Price changes"). The smallest such count.
    pub fn units_worth(&self, wei: U256) -> Option<u64> {
        if self.price_per_token.is_zero() {
            return wei.is_zero().then_some(0);
        }
        // ⌊p·u/n⌋ = w holds for u in [⌈w·n/p⌉, ⌈(w+1)·n/p⌉); the first is the candidate.
        let span = U256::from(self.span_blocks.max(1));
        let units = (wei * span).div_ceil(self.price_per_token);
        let units = u64::try_from(units).ok()?;
        (self.amount(units) == wei).then_some(units)
    }
}

/// Bytes of a stored (settled amount, terms): settled 32 BE ‖ price 32 BE ‖ span u16 LE, the
/// layout the node's ledger and the gateway's wallet both keep.
pub const SETTLED_TERMS_BYTES: usize = 32 + 32 + 2;

/// Appends wei settled under earlier terms and the current `terms`, as stored.
pub fn encode_settled_terms(settled: U256, terms: Tariff, out: &mut Vec<u8>) {
    out.extend_from_slice(&settled.to_be_bytes::<32>());
    out.extend_from_slice(&terms.price_per_token.to_be_bytes::<32>());
    out.extend_from_slice(&terms.span_blocks.to_le_bytes());
}

/// Reads what [`encode_settled_terms`] wrote; `None` unless exactly that many bytes.
pub fn decode_settled_terms(bytes: &[u8]) -> Option<(U256, Tariff)> {
    if bytes.len() != SETTLED_TERMS_BYTES {
        return None;
    }
    let terms = Tariff {
        price_per_token: U256::from_be_slice(&bytes[32..64]),
        span_blocks: u16::from_le_bytes([bytes[64], bytes[65]]),
    };
    Some((U256::from_be_slice(&bytes[..32]), terms))
}

/// Block-tokens of one request: the positions it carries times the blocks it runs. Close
/// steps are free; prefill, decode and replay steps all run the blocks and are metered.
pub fn step_units(request: &InferRequest) -> u64 {
    if request.kind == StepKind::Close {
        return 0;
    }
    let blocks = u64::from(request.last_block.saturating_sub(request.first_block)) + 1;
    positions(&request.payload) as u64 * blocks
}

/// Token positions in a payload: ids, the sequence axis of hidden states `[1, S, D]`, the
/// attention mask's length for an encoder step (padding included: it is computed), or for a
/// draft step the ids and every guess fed back (all but the last guess: `n + g - 1`).
pub fn positions(payload: &Payload) -> usize {
    match payload {
        Payload::Empty => 0,
        Payload::Tokens(ids) => ids.len(),
        Payload::Tensor(a) => a.shape().get(1).copied().unwrap_or(0),
        Payload::Masked { attention_mask, .. } => attention_mask.len(),
        Payload::Draft { tokens, guesses } => {
            tokens.len() + usize::from(*guesses).saturating_sub(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Activation;

    fn request(kind: StepKind, blocks: (u16, u16), payload: Payload) -> InferRequest {
        InferRequest {
            model_id: [0; 32],
            first_block: blocks.0,
            last_block: blocks.1,
            session: 1,
            position: 0,
            kind,
            payment: None,
            payload,
        }
    }

    #[test]
    fn steps_count_positions_times_blocks() {
        let prefill = request(StepKind::Prefill, (0, 1), Payload::Tokens(vec![1, 2, 3]));
        assert_eq!(step_units(&prefill), 6);
        let hidden = Activation::new(vec![1, 4, 2], vec![0.0; 8]).unwrap();
        let decode = request(StepKind::Replay, (2, 2), Payload::Tensor(hidden));
        assert_eq!(step_units(&decode), 4);
        assert_eq!(step_units(&request(StepKind::Close, (0, 3), Payload::Empty)), 0);
        let masked = Payload::Masked {
            input: Box::new(Payload::Tokens(vec![5; 3])),
            attention_mask: vec![1, 1, 1, 0],
            token_type_ids: vec![],
        };
        assert_eq!(step_units(&request(StepKind::Prefill, (0, 0), masked)), 4);
        // Two ids run, then three guesses, two of them fed back: 4 positions.
        let draft = Payload::Draft { tokens: vec![7, 8], guesses: 3 };
        assert_eq!(step_units(&request(StepKind::Draft, (0, 0), draft)), 4);
    }

    #[test]
    fn amounts_come_from_the_cumulative_count_without_drift() {
        // A 3-block span at 10 wei per token: each block-token is 3⅓ wei.
        let tariff = Tariff { price_per_token: U256::from(10), span_blocks: 3 };
        assert_eq!(tariff.amount(1), U256::from(3));
        assert_eq!(tariff.amount(2), U256::from(6));
        assert_eq!(tariff.amount(3), U256::from(10));
        // Rounding each step separately would have lost a wei per step.
        assert_eq!(tariff.amount(3_000), U256::from(10_000));
        let whole = Tariff { price_per_token: U256::from(7), span_blocks: 1 };
        assert_eq!(whole.amount(5), U256::from(35));
    }

    #[test]
    fn an_amount_gives_back_the_units_it_is_worth() {
        let tariff = Tariff { price_per_token: U256::from(10), span_blocks: 3 };
        for units in [0u64, 1, 2, 3, 4, 1_000, 3_001] {
            assert_eq!(tariff.units_worth(tariff.amount(units)), Some(units), "{units}");
        }
        // 4 wei is no whole number of block-tokens at 3⅓ wei each.
        assert_eq!(tariff.units_worth(U256::from(4)), None);
        let free = Tariff { price_per_token: U256::ZERO, span_blocks: 1 };
        assert_eq!(free.units_worth(U256::ZERO), Some(0));
        assert_eq!(free.units_worth(U256::from(1)), None);
    }
}

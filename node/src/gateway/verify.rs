//! Checks every answer before the gateway uses it or pays for it. A node's output must have
//! the shape the next hop (hidden states) or the sampler (logits) needs, hold only finite
//! values, and carry its operator's EIP-712 `Response` signature — the evidence a validator
//! can later take on-chain. An answer failing any check is treated like a dead peer: the node
//! is banned, the step fails over, and the step is not paid for.

use alloy::primitives::B256;
use libp2p::PeerId;

use super::TermsBook;
use crate::eip712::{Domain, keccak256};
use crate::net::codec::{Payload, payload_bytes};
use crate::validate::{ChainClock, EpochClock, ResponseAttestation};

/// Why an answer is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadAnswer {
    #[error("the answer is not a tensor")]
    NotTensor,
    #[error("answer shape {found:?}, expected [1, {rows}, {width}]")]
    Shape { found: Vec<usize>, rows: usize, width: usize },
    #[error("the answer holds a NaN or infinite value")]
    NotFinite,
    #[error("no registered operator is known for the peer")]
    UnknownOperator,
    #[error("the answer is not signed by the peer's operator {operator} for epoch {epoch} (±1)")]
    Signature { operator: alloy::primitives::Address, epoch: u64 },
}

impl BadAnswer {
    /// Whether the answer itself is malformed (wrong shape, not a tensor, non-finite), which
    /// no honest node sends, rather than a signature that did not check.
    pub fn is_malformed(&self) -> bool {
        matches!(self, BadAnswer::NotTensor | BadAnswer::Shape { .. } | BadAnswer::NotFinite)
    }
}

/// What a step's output must look like: `[1, rows, width]` float32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpectedShape {
    pub rows: usize,
    pub width: usize,
}

impl ExpectedShape {
    /// Checks `output` against the shape, and that every value is finite.
    pub fn check(&self, output: &Payload) -> Result<(), BadAnswer> {
        let Payload::Tensor(tensor) = output else { return Err(BadAnswer::NotTensor) };
        if tensor.shape() != [1, self.rows, self.width] {
            return Err(BadAnswer::Shape {
                found: tensor.shape().to_vec(),
                rows: self.rows,
                width: self.width,
            });
        }
        if !tensor.data().iter().all(|v| v.is_finite()) {
            return Err(BadAnswer::NotFinite);
        }
        Ok(())
    }
}

/// Rows a step's output has: one per position of its input.
pub fn input_rows(payload: &Payload) -> usize {
    match payload {
        Payload::Empty => 0,
        Payload::Tokens(ids) => ids.len(),
        Payload::Tensor(tensor) => tensor.shape().get(1).copied().unwrap_or(0),
        Payload::Masked { input, .. } => input_rows(input),
    }
}

/// Checks answer signatures against the operators registered on-chain.
#[derive(Debug, Clone)]
pub struct SignatureCheck {
    /// The `Validation` contract's EIP-712 domain.
    pub domain: Domain,
    pub clock: EpochClock,
    /// The chain's time, kept in step with the latest block by the gateway.
    pub time: ChainClock,
    /// The operator of every routable peer.
    pub operators: TermsBook,
}

impl SignatureCheck {
    /// Checks that `signature` is the peer's operator signing `Response(request_hash,
    /// keccak(output), epoch)` for the current epoch or a neighbouring one (the node's and the
    /// gateway's view of the chain's time may straddle an epoch boundary), and returns the
    /// epoch it signed for: a fault report must name it.
    pub fn check(
        &self,
        peer: &PeerId,
        request_hash: B256,
        output: &Payload,
        signature: &[u8; 65],
    ) -> Result<u64, BadAnswer> {
        let operator = self
            .operators
            .lock()
            .expect("terms")
            .get(peer)
            .map(|terms| terms.operator)
            .ok_or(BadAnswer::UnknownOperator)?;
        let output_hash = keccak256(&payload_bytes(output));
        let epoch = self.clock.epoch_at(self.time.now());
        // The current epoch first: it is the one nearly every answer is signed for.
        [epoch, epoch.saturating_sub(1), epoch + 1]
            .into_iter()
            .find(|&e| {
                ResponseAttestation { request_hash, output_hash, epoch: e }
                    .signer(&self.domain, signature)
                    .is_ok_and(|signer| signer == operator)
            })
            .ok_or(BadAnswer::Signature { operator, epoch })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use alloy::primitives::{Address, U256};

    use super::*;
    use crate::eip712::Eip712Signer;
    use crate::engine::Activation;
    use crate::pay::NodeTerms;
    use crate::pay::meter::Tariff;

    fn tensor(shape: Vec<usize>, value: f32) -> Payload {
        let n = shape.iter().product();
        Payload::Tensor(Activation::new(shape, vec![value; n]).unwrap())
    }

    #[test]
    fn shapes_and_values_are_checked() {
        let logits = ExpectedShape { rows: 1, width: 8 };
        assert_eq!(logits.check(&tensor(vec![1, 1, 8], 0.5)), Ok(()));
        // The answer that used to panic the sampler: no logits at all.
        assert!(matches!(logits.check(&tensor(vec![1, 1, 0], 0.0)), Err(BadAnswer::Shape { .. })));
        assert!(matches!(logits.check(&tensor(vec![1, 2, 8], 0.0)), Err(BadAnswer::Shape { .. })));
        assert!(matches!(logits.check(&tensor(vec![8], 0.0)), Err(BadAnswer::Shape { .. })));
        assert_eq!(logits.check(&tensor(vec![1, 1, 8], f32::NAN)), Err(BadAnswer::NotFinite));
        assert_eq!(logits.check(&tensor(vec![1, 1, 8], f32::INFINITY)), Err(BadAnswer::NotFinite));
        assert_eq!(logits.check(&Payload::Tokens(vec![1])), Err(BadAnswer::NotTensor));
        assert_eq!(input_rows(&Payload::Tokens(vec![1, 2, 3])), 3);
        assert_eq!(input_rows(&tensor(vec![1, 5, 4], 0.0)), 5);
    }

    #[test]
    fn only_the_operators_signature_for_a_near_epoch_passes() {
        let operator = Eip712Signer::from_bytes(&B256::repeat_byte(7)).unwrap();
        let stranger = Eip712Signer::from_bytes(&B256::repeat_byte(9)).unwrap();
        let peer = PeerId::random();
        let terms = NodeTerms {
            operator: operator.address(),
            tariff: Tariff { price_per_token: U256::from(1), span_blocks: 1 },
        };
        let check = SignatureCheck {
            domain: crate::validate::validation_domain(31337, Address::repeat_byte(1)),
            clock: EpochClock { genesis: 0, duration: 60 },
            time: ChainClock::default(),
            operators: Arc::new(Mutex::new(HashMap::from([(peer, terms)]))),
        };
        let output = tensor(vec![1, 1, 4], 1.0);
        let request_hash = B256::repeat_byte(3);
        let epoch = check.clock.epoch_at(check.time.now());
        let sign = |signer: &Eip712Signer, epoch: u64, output: &Payload| {
            let output_hash = keccak256(&payload_bytes(output));
            ResponseAttestation { request_hash, output_hash, epoch }.sign(&check.domain, signer)
        };
        assert_eq!(
            check.check(&peer, request_hash, &output, &sign(&operator, epoch, &output)),
            Ok(epoch)
        );
        assert_eq!(
            check.check(&peer, request_hash, &output, &sign(&operator, epoch + 1, &output)),
            Ok(epoch + 1)
        );
        let wrong = [
            sign(&stranger, epoch, &output),
            sign(&operator, epoch + 5, &output),
            sign(&operator, epoch, &tensor(vec![1, 1, 4], 2.0)),
            [0u8; 65],
        ];
        for signature in wrong {
            assert!(matches!(
                check.check(&peer, request_hash, &output, &signature),
                Err(BadAnswer::Signature { .. })
            ));
        }
        assert_eq!(
            check.check(&PeerId::random(), request_hash, &output, &sign(&operator, epoch, &output)),
            Err(BadAnswer::UnknownOperator)
        );
    }
}

//! Checks every answer before the gateway uses it or pays for it. A node's output must have
//! the shape the next hop (hidden states) or the sampler (logits) needs, hold only finite
//! values, and carry its operator's EIP-712 signature — the evidence a validator can later
//! take on-chain: its own `Response` signature, or its message's `Responses` signature and its
//! proof under it. An answer failing any check is treated like a dead peer: the node
//! is banned, the step fails over, and the step is not paid for.

use alloy::primitives::B256;
use libp2p::PeerId;

use super::TermsBook;
use crate::eip712::Domain;
use crate::net::codec::Payload;
use crate::validate::{AnswerSeal, ChainClock, EpochClock, ResponseAttestation, SealMemo};

/// Why an answer is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadAnswer {
    #[error("the answer is not a tensor")]
    NotTensor,
    #[error("answer shape {found:?}, expected [1, {rows}, {width}]")]
    Shape { found: Vec<usize>, rows: usize, width: usize },
    #[error("the answer holds a NaN or infinite value")]
    NotFinite,
    #[error("the answer to a draft step is not token ids")]
    NotTokens,
    #[error("{found} guesses, {count} asked for")]
    Guesses { found: usize, count: usize },
    #[error("guess {id} is not a token of the {vocab}-token vocabulary")]
    NotAToken { id: i64, vocab: usize },
    #[error("no registered operator is known for the peer")]
    UnknownOperator,
    #[error("the answer is not signed by the peer's operator {operator} for epoch {epoch} (±1)")]
    Signature { operator: alloy::primitives::Address, epoch: u64 },
}

impl BadAnswer {
    /// Whether the answer itself is malformed (wrong shape, not a tensor, non-finite, wrong
    /// guesses), which no honest node sends, rather than a signature that did not check.
    pub fn is_malformed(&self) -> bool {
        match self {
            BadAnswer::NotTensor
            | BadAnswer::Shape { .. }
            | BadAnswer::NotFinite
            | BadAnswer::NotTokens
            | BadAnswer::Guesses { .. }
            | BadAnswer::NotAToken { .. } => true,
            BadAnswer::UnknownOperator | BadAnswer::Signature { .. } => false,
        }
    }
}

/// What a step's output must look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedShape {
    /// `[1, rows, width]` float32: hidden states or logits.
    Tensor { rows: usize, width: usize },
    /// A draft step's guesses: exactly `count` token ids below `vocab`.
    Guesses { count: usize, vocab: usize },
}

impl ExpectedShape {
    /// What the answer to a step with `payload` must be, from a span whose output is
    /// `width` wide (the vocabulary for a decoder's last block).
    pub fn of(payload: &Payload, width: usize) -> Self {
        match payload {
            Payload::Draft { guesses, .. } => {
                ExpectedShape::Guesses { count: usize::from(*guesses), vocab: width }
            }
            payload => ExpectedShape::Tensor { rows: payload.positions(), width },
        }
    }

    /// The encoded size of a payload of this shape.
    pub fn payload_bytes(&self) -> usize {
        match *self {
            // Tag, rank, three dimensions, the values.
            ExpectedShape::Tensor { rows, width } => 2 + 3 * 4 + 4 * rows * width,
            // Tag, count, the ids.
            ExpectedShape::Guesses { count, .. } => 5 + 8 * count,
        }
    }

    /// Checks `output` against the shape, and that every value is finite (a tensor) or a
    /// token of the vocabulary (guesses).
    pub fn check(&self, output: &Payload) -> Result<(), BadAnswer> {
        match (*self, output) {
            (ExpectedShape::Tensor { rows, width }, Payload::Tensor(tensor)) => {
                if tensor.shape() != [1, rows, width] {
                    return Err(BadAnswer::Shape { found: tensor.shape().to_vec(), rows, width });
                }
                if !tensor.data().iter().all(|v| v.is_finite()) {
                    return Err(BadAnswer::NotFinite);
                }
                Ok(())
            }
            (ExpectedShape::Tensor { .. }, _) => Err(BadAnswer::NotTensor),
            (ExpectedShape::Guesses { count, vocab }, Payload::Tokens(ids)) => {
                if ids.len() != count {
                    return Err(BadAnswer::Guesses { found: ids.len(), count });
                }
                match ids.iter().find(|&&id| usize::try_from(id).map_or(true, |id| id >= vocab)) {
                    Some(&id) => Err(BadAnswer::NotAToken { id, vocab }),
                    None => Ok(()),
                }
            }
            (ExpectedShape::Guesses { .. }, _) => Err(BadAnswer::NotTokens),
        }
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
    /// Checks that `seal` is the peer's operator signing `Response(request_hash, output_hash,
    /// epoch)`, or `Responses(root, epoch)` for the root the seal's proof leads to from that
    /// answer's leaf, for the current epoch or a neighbouring one (the node's and the gateway's
    /// view of the chain's time may straddle an epoch boundary), and returns the epoch it
    /// signed for: a fault report must name it. An answer of a message of several shares the
    /// message's `memo`: the first of its answers checked recovers the seal's signer, the
    /// others only fold their proof to the same root.
    pub fn check(
        &self,
        peer: &PeerId,
        request_hash: B256,
        output_hash: B256,
        seal: &AnswerSeal,
        memo: Option<&SealMemo>,
    ) -> Result<u64, BadAnswer> {
        let operator = self
            .operators
            .lock()
            .expect("terms")
            .get(peer)
            .map(|terms| terms.operator)
            .ok_or(BadAnswer::UnknownOperator)?;
        let epoch = self.clock.epoch_at(self.time.now());
        let near = |signed: u64| signed.abs_diff(epoch) <= 1;
        let attestation = |epoch| ResponseAttestation { request_hash, output_hash, epoch };
        let recover = || {
            // The current epoch first: it is the one nearly every answer is signed for.
            [epoch, epoch.saturating_sub(1), epoch + 1]
                .into_iter()
                .find(|&e| {
                    attestation(e)
                        .sealed_by(&self.domain, seal)
                        .is_ok_and(|signer| signer == operator)
                })
                .ok_or(BadAnswer::Signature { operator, epoch })
        };
        let Some(memo) = memo.filter(|_| !seal.proof.is_empty()) else { return recover() };
        let root = attestation(epoch).root(&seal.proof);
        let mut mine = None;
        let found = memo.0.get_or_init(|| {
            let result = recover();
            let found = result.as_ref().ok().map(|&signed| (root, operator, signed));
            mine = Some(result);
            found
        });
        match (mine, found) {
            (Some(result), _) => result,
            (None, &Some((r, o, signed))) if r == root && o == operator && near(signed) => {
                Ok(signed)
            }
            (None, _) => recover(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use alloy::primitives::{Address, U256};

    use super::*;
    use crate::eip712::{Eip712Signer, keccak256};
    use crate::engine::Activation;
    use crate::net::codec::payload_bytes;
    use crate::pay::NodeTerms;
    use crate::pay::meter::Tariff;

    fn tensor(shape: Vec<usize>, value: f32) -> Payload {
        let n = shape.iter().product();
        Payload::Tensor(Activation::new(shape, vec![value; n]).unwrap())
    }

    #[test]
    fn shapes_and_values_are_checked() {
        let logits = ExpectedShape::of(&Payload::Tokens(vec![3]), 8);
        assert_eq!(logits.check(&tensor(vec![1, 1, 8], 0.5)), Ok(()));
        // The answer that used to panic the sampler: no logits at all.
        assert!(matches!(logits.check(&tensor(vec![1, 1, 0], 0.0)), Err(BadAnswer::Shape { .. })));
        assert!(matches!(logits.check(&tensor(vec![1, 2, 8], 0.0)), Err(BadAnswer::Shape { .. })));
        assert!(matches!(logits.check(&tensor(vec![8], 0.0)), Err(BadAnswer::Shape { .. })));
        assert_eq!(logits.check(&tensor(vec![1, 1, 8], f32::NAN)), Err(BadAnswer::NotFinite));
        assert_eq!(logits.check(&tensor(vec![1, 1, 8], f32::INFINITY)), Err(BadAnswer::NotFinite));
        assert_eq!(logits.check(&Payload::Tokens(vec![1])), Err(BadAnswer::NotTensor));
        assert_eq!(Payload::Tokens(vec![1, 2, 3]).positions(), 3);
        assert_eq!(tensor(vec![1, 5, 4], 0.0).positions(), 5);
    }

    #[test]
    fn guesses_are_checked_in_number_and_against_the_vocabulary() {
        let draft = ExpectedShape::of(&Payload::Draft { tokens: vec![1, 2], guesses: 3 }, 8);
        assert_eq!(draft, ExpectedShape::Guesses { count: 3, vocab: 8 });
        assert_eq!(draft.check(&Payload::Tokens(vec![0, 7, 3])), Ok(()));
        let wrong = |ids: Vec<i64>| draft.check(&Payload::Tokens(ids)).unwrap_err();
        assert_eq!(wrong(vec![1, 2]), BadAnswer::Guesses { found: 2, count: 3 });
        assert_eq!(wrong(vec![1, 2, 3, 4]), BadAnswer::Guesses { found: 4, count: 3 });
        assert_eq!(wrong(vec![1, 8, 3]), BadAnswer::NotAToken { id: 8, vocab: 8 });
        assert_eq!(wrong(vec![-1, 2, 3]), BadAnswer::NotAToken { id: -1, vocab: 8 });
        assert_eq!(draft.check(&tensor(vec![1, 3, 8], 0.0)), Err(BadAnswer::NotTokens));
        // Any of these is nothing an honest node sends.
        assert!(wrong(vec![9, 9, 9]).is_malformed());
    }

    /// A check knowing one peer, run by `operator`.
    fn checking(operator: &Eip712Signer) -> (SignatureCheck, PeerId) {
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
        (check, peer)
    }

    fn hash(output: &Payload) -> B256 {
        keccak256(&payload_bytes(output))
    }

    #[test]
    fn only_the_operators_signature_for_a_near_epoch_passes() {
        let operator = Eip712Signer::from_bytes(&B256::repeat_byte(7)).unwrap();
        let stranger = Eip712Signer::from_bytes(&B256::repeat_byte(9)).unwrap();
        let (check, peer) = checking(&operator);
        let output = tensor(vec![1, 1, 4], 1.0);
        let request_hash = B256::repeat_byte(3);
        let epoch = check.clock.epoch_at(check.time.now());
        let sign = |signer: &Eip712Signer, epoch: u64, output: &Payload| {
            let output_hash = hash(output);
            AnswerSeal::alone(
                ResponseAttestation { request_hash, output_hash, epoch }
                    .sign(&check.domain, signer),
            )
        };
        let checked = |peer: &PeerId, seal: &AnswerSeal| {
            check.check(peer, request_hash, hash(&output), seal, None)
        };
        assert_eq!(checked(&peer, &sign(&operator, epoch, &output)), Ok(epoch));
        assert_eq!(checked(&peer, &sign(&operator, epoch + 1, &output)), Ok(epoch + 1));
        let wrong = [
            sign(&stranger, epoch, &output),
            sign(&operator, epoch + 5, &output),
            sign(&operator, epoch, &tensor(vec![1, 1, 4], 2.0)),
            AnswerSeal::alone([0u8; 65]),
        ];
        for signature in wrong {
            assert!(matches!(checked(&peer, &signature), Err(BadAnswer::Signature { .. })));
        }
        assert_eq!(
            checked(&PeerId::random(), &sign(&operator, epoch, &output)),
            Err(BadAnswer::UnknownOperator)
        );
    }

    #[test]
    fn a_message_s_seal_checks_each_answer_by_its_proof_and_is_recovered_once() {
        use crate::validate::{answer_proofs, seal_answers};
        let operator = Eip712Signer::from_bytes(&B256::repeat_byte(7)).unwrap();
        let stranger = Eip712Signer::from_bytes(&B256::repeat_byte(9)).unwrap();
        let (check, peer) = checking(&operator);
        let epoch = check.clock.epoch_at(check.time.now());
        let answers: Vec<(B256, B256)> = (0..3u8)
            .map(|i| (B256::repeat_byte(i + 1), hash(&tensor(vec![1, 1, 4], f32::from(i)))))
            .collect();
        let proofs = answer_proofs(&answers);
        let signed_by = |signer: &Eip712Signer, epoch: u64| {
            seal_answers(&check.domain, signer, epoch, &answers).unwrap()
        };
        let seal =
            |signature: [u8; 65], i: usize| AnswerSeal { signature, proof: proofs[i].clone() };
        let signature = signed_by(&operator, epoch);
        let checked = |i: usize, seal: &AnswerSeal, memo: &SealMemo| {
            check.check(&peer, answers[i].0, answers[i].1, seal, Some(memo))
        };

        // Each answer checks by its proof; the first check leaves the seal's signer for the
        // others.
        let memo = SealMemo::default();
        for i in 0..3 {
            assert_eq!(checked(i, &seal(signature, i), &memo), Ok(epoch));
        }
        let root =
            ResponseAttestation { request_hash: answers[0].0, output_hash: answers[0].1, epoch }
                .root(&proofs[0]);
        assert_eq!(memo.0.get(), Some(&Some((root, operator.address(), epoch))));
        // Reused, not recovered: a memo saying epoch + 1 is believed for this root...
        let planted = SealMemo::default();
        planted.0.set(Some((root, operator.address(), epoch + 1))).unwrap();
        assert_eq!(checked(1, &seal(signature, 1), &planted), Ok(epoch + 1));
        // ...but not for another root, another operator or a far epoch: those recover.
        for (r, o, e) in [
            (B256::ZERO, operator.address(), epoch + 1),
            (root, stranger.address(), epoch + 1),
            (root, operator.address(), epoch + 5),
        ] {
            let planted = SealMemo::default();
            planted.0.set(Some((r, o, e))).unwrap();
            assert_eq!(checked(1, &seal(signature, 1), &planted), Ok(epoch));
        }

        // An answer under another's proof, the seal without a proof, a stranger's or another
        // epoch's seal: none checks, and a message whose first checked answer failed still
        // checks its honest answers, each on its own.
        let memo = SealMemo::default();
        let refused = |i: usize, seal: AnswerSeal| {
            matches!(checked(i, &seal, &memo), Err(BadAnswer::Signature { .. }))
        };
        assert!(refused(0, seal(signature, 1)));
        assert_eq!(memo.0.get(), Some(&None));
        assert!(refused(1, seal(signature, 0)));
        assert!(refused(0, AnswerSeal::alone(signature)));
        assert!(refused(0, seal(signed_by(&stranger, epoch), 0)));
        assert!(refused(0, seal(signed_by(&operator, epoch + 5), 0)));
        assert_eq!(checked(2, &seal(signature, 2), &memo), Ok(epoch));
        // What one operator's seal proved is not taken for another peer's answers.
        let (other, other_peer) = checking(&stranger);
        let memo = SealMemo::default();
        assert_eq!(checked(0, &seal(signature, 0), &memo), Ok(epoch));
        assert!(matches!(
            other.check(&other_peer, answers[1].0, answers[1].1, &seal(signature, 1), Some(&memo)),
            Err(BadAnswer::Signature { .. })
        ));
    }
}

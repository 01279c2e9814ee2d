//! Checks every answer before the gateway uses it or pays for it. A node's output must have
//! the shape the next hop (hidden states) or the sampler (logits) needs, hold only finite
//! values, and carry its operator's EIP-712 signature — the evidence a validator can later
//! take on-chain: its own `Response` signature, or its message's `Responses` signature and its
//! proof under it. An answer failing any check is treated like a dead peer: the node
//! is banned, the step fails over, and the step is not paid for.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use alloy::primitives::{Address, B256};
use libp2p::PeerId;

use super::TermsBook;
use crate::eip712::{Domain, keccak256};
use crate::net::codec::{Payload, payload_bytes};
use crate::validate::{AnswerSeal, ChainClock, EpochClock, ResponseAttestation};

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
    /// Messages' signatures already checked.
    pub seals: SealCache,
}

/// The signatures of messages of answers already checked, so that the other answers of a
/// message cost a proof (a few hashes), not a secp256k1 recovery each: (root, signature) →
/// (signer, epoch), the last [`SEALS_KEPT`] of them. Only signatures that recovered to the
/// operator asked for are kept, so a stranger's entry can match no one else's answer.
#[derive(Debug, Clone, Default)]
pub struct SealCache(Arc<Mutex<SealEntries>>);

/// Messages in flight at once are at most one per node and client: a few hundred suffice.
const SEALS_KEPT: usize = 256;

type SealKey = (B256, [u8; 65]);

#[derive(Debug, Default)]
struct SealEntries {
    checked: HashMap<SealKey, (Address, u64)>,
    order: VecDeque<SealKey>,
}

impl SealCache {
    fn get(&self, key: &SealKey) -> Option<(Address, u64)> {
        self.0.lock().expect("seals").checked.get(key).copied()
    }

    fn insert(&self, key: SealKey, signed: (Address, u64)) {
        let mut seals = self.0.lock().expect("seals");
        if seals.checked.insert(key, signed).is_none() {
            seals.order.push_back(key);
        }
        while seals.order.len() > SEALS_KEPT {
            let oldest = seals.order.pop_front().expect("over the limit");
            seals.checked.remove(&oldest);
        }
    }
}

impl SignatureCheck {
    /// Checks that `seal` is the peer's operator signing `Response(request_hash,
    /// keccak(output), epoch)`, or `Responses(root, epoch)` for the root the seal's proof
    /// leads to from that answer's leaf, for the current epoch or a neighbouring one (the
    /// node's and the gateway's view of the chain's time may straddle an epoch boundary), and
    /// returns the epoch it signed for: a fault report must name it.
    pub fn check(
        &self,
        peer: &PeerId,
        request_hash: B256,
        output: &Payload,
        seal: &AnswerSeal,
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
        let attestation = |epoch| ResponseAttestation { request_hash, output_hash, epoch };
        let key = (attestation(epoch).root(&seal.proof), seal.signature);
        let sealed = !seal.proof.is_empty();
        if sealed
            && let Some((signer, signed)) = self.seals.get(&key)
            && signer == operator
        {
            return Ok(signed);
        }
        // The current epoch first: it is the one nearly every answer is signed for.
        let signed = [epoch, epoch.saturating_sub(1), epoch + 1]
            .into_iter()
            .find(|&e| {
                attestation(e).sealed_by(&self.domain, seal).is_ok_and(|signer| signer == operator)
            })
            .ok_or(BadAnswer::Signature { operator, epoch })?;
        if sealed {
            self.seals.insert(key, (operator, signed));
        }
        Ok(signed)
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
            seals: SealCache::default(),
        };
        (check, peer)
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
            let output_hash = keccak256(&payload_bytes(output));
            AnswerSeal::alone(
                ResponseAttestation { request_hash, output_hash, epoch }
                    .sign(&check.domain, signer),
            )
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
            AnswerSeal::alone([0u8; 65]),
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

    #[test]
    fn a_message_s_signature_checks_each_answer_by_its_proof_and_once() {
        use crate::validate::{answer_proofs, seal_answers};
        let operator = Eip712Signer::from_bytes(&B256::repeat_byte(7)).unwrap();
        let stranger = Eip712Signer::from_bytes(&B256::repeat_byte(9)).unwrap();
        let (check, peer) = checking(&operator);
        let epoch = check.clock.epoch_at(check.time.now());
        let outputs: Vec<Payload> = (0..3).map(|i| tensor(vec![1, 1, 4], i as f32)).collect();
        let requests: Vec<B256> = (0..3).map(|i| B256::repeat_byte(i + 1)).collect();
        let answers: Vec<(B256, B256)> = requests
            .iter()
            .zip(&outputs)
            .map(|(&request, output)| (request, keccak256(&payload_bytes(output))))
            .collect();
        let proofs = answer_proofs(&answers);
        let signed_by = |signer: &Eip712Signer, epoch: u64| {
            seal_answers(&check.domain, signer, epoch, &answers).unwrap()
        };
        let seal =
            |signature: [u8; 65], i: usize| AnswerSeal { signature, proof: proofs[i].clone() };
        let signature = signed_by(&operator, epoch);
        for i in 0..3 {
            assert_eq!(
                check.check(&peer, requests[i], &outputs[i], &seal(signature, i)),
                Ok(epoch)
            );
        }
        // Recovered once, for the first answer; the others were a proof each.
        let root =
            ResponseAttestation { request_hash: requests[0], output_hash: answers[0].1, epoch }
                .root(&proofs[0]);
        assert_eq!(check.seals.get(&(root, signature)), Some((operator.address(), epoch)));
        assert_eq!(check.seals.0.lock().unwrap().order.len(), 1);

        // An answer under another's proof, the signature without a proof, a stranger's or
        // another epoch's signature: none checks, and none is remembered.
        let refused = |request: B256, output: &Payload, seal: AnswerSeal| {
            matches!(check.check(&peer, request, output, &seal), Err(BadAnswer::Signature { .. }))
        };
        assert!(refused(requests[0], &outputs[0], seal(signature, 1)));
        assert!(refused(requests[1], &outputs[0], seal(signature, 0)));
        assert!(refused(requests[0], &outputs[0], AnswerSeal::alone(signature)));
        assert!(refused(requests[0], &outputs[0], seal(signed_by(&stranger, epoch), 0)));
        assert!(refused(requests[0], &outputs[0], seal(signed_by(&operator, epoch + 5), 0)));
        assert_eq!(check.seals.0.lock().unwrap().order.len(), 1);
        // What one operator's signature proved is not taken for another's answers.
        let (other, other_peer) = checking(&stranger);
        let other = SignatureCheck { seals: check.seals.clone(), ..other };
        assert!(matches!(
            other.check(&other_peer, requests[0], &outputs[0], &seal(signature, 0)),
            Err(BadAnswer::Signature { .. })
        ));
    }

    #[test]
    fn the_seal_cache_keeps_only_the_latest() {
        let cache = SealCache::default();
        for i in 0..SEALS_KEPT + 10 {
            cache.insert((B256::from(U256::from(i)), [0; 65]), (Address::ZERO, i as u64));
        }
        assert_eq!(cache.get(&(B256::from(U256::from(9)), [0; 65])), None);
        assert_eq!(cache.get(&(B256::from(U256::from(10)), [0; 65])), Some((Address::ZERO, 10)));
        let entries = cache.0.lock().unwrap();
        assert_eq!((entries.order.len(), entries.checked.len()), (SEALS_KEPT, SEALS_KEPT));
    }
}

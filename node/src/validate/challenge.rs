//! A validator's secret challenge set for one epoch: generation sessions run by its own
//! engine, and for every step of every session the exact request a node serving any span of
//! blocks will receive and the output it must give.
//!
//! A session is a prompt and its greedy continuation by the validator's model. At every step
//! and every block boundary `b` the validator keeps its own input to block `b` (the prompt's
//! or the chosen token's ids at `b = 0`, its own hidden states after that) and the output of
//! block `b`. A node serving blocks `f..=l` is sent the validator's input at boundary `f` —
//! never the previous node's output, so one faulty hop cannot make the next honest node look
//! faulty — and must answer, within the judge's tolerance, the validator's output of block
//! `l`. Because the route is only known when a challenge is sent, the set holds a leaf for
//! every span `f..=l` of every step: `challenge_leaf(requestHash, keccak(expected output))`,
//! whose Merkle root is committed before the epoch begins.

use std::collections::HashMap;

use alloy::primitives::B256;

use super::{MerkleTree, challenge_leaf};
use crate::eip712::keccak256;
use crate::engine::{Activation, BlockInput, EngineError, Pipeline};
use crate::generate::argmax;
use crate::net::codec::{InferRequest, Payload, StepKind, payload_bytes};

/// One step of a challenge session, at every block boundary.
#[derive(Debug, Clone)]
pub struct ChallengeStep {
    pub position: u32,
    pub kind: StepKind,
    /// `inputs[b]`: the validator's input to block `b`.
    pub inputs: Vec<Payload>,
    /// `outputs[b]`: the validator's output of block `b`.
    pub outputs: Vec<Activation>,
}

/// One generation session of a challenge set.
#[derive(Debug, Clone)]
pub struct ChallengeSession {
    /// The session id its requests carry: random, like any client's.
    pub session: u64,
    pub steps: Vec<ChallengeStep>,
}

impl ChallengeSession {
    /// Runs `prompt` and `decode_steps` greedy steps through the validator's own `pipeline`,
    /// block by block, keeping every boundary's input and output.
    pub fn run(
        pipeline: &Pipeline,
        session: u64,
        prompt: &[i64],
        decode_steps: usize,
    ) -> Result<Self, EngineError> {
        let mut steps = Vec::with_capacity(decode_steps + 1);
        let (mut tokens, mut position) = (prompt.to_vec(), 0usize);
        let result = (|| {
            for step in 0..=decode_steps {
                let mut inputs = vec![Payload::Tokens(tokens.clone())];
                let mut outputs = Vec::with_capacity(pipeline.blocks().len());
                let mut input = BlockInput::Tokens(tokens.clone());
                for block in pipeline.blocks() {
                    let output = block.forward(session, position, input)?;
                    input = BlockInput::Hidden(output.clone());
                    inputs.push(Payload::Tensor(output.clone()));
                    outputs.push(output);
                }
                inputs.pop(); // the last block's output is no block's input
                let next = argmax(outputs.last().expect("a model has blocks").last_row());
                let kind = if step == 0 { StepKind::Prefill } else { StepKind::Decode };
                steps.push(ChallengeStep { position: position as u32, kind, inputs, outputs });
                position += tokens.len();
                tokens = vec![i64::from(next)];
            }
            Ok(())
        })();
        pipeline.close(session);
        result.map(|()| Self { session, steps })
    }

    /// The request a node serving blocks `first..=last` receives at step `step` (without a
    /// voucher: the signed request hash leaves payment out).
    pub fn request(&self, model_id: [u8; 32], step: usize, first: u16, last: u16) -> InferRequest {
        let s = &self.steps[step];
        InferRequest {
            model_id,
            first_block: first,
            last_block: last,
            session: self.session,
            position: s.position,
            kind: s.kind,
            payment: None,
            payload: s.inputs[first as usize].clone(),
        }
    }

    /// The output a node serving blocks `..=last` must give at step `step`.
    pub fn expected(&self, step: usize, last: u16) -> &Activation {
        &self.steps[step].outputs[last as usize]
    }
}

/// Where a challenge request sits in the set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChallengeRef {
    pub session: usize,
    pub step: usize,
    pub last_block: u16,
    leaf: usize,
    pub expected_output_hash: B256,
}

/// A validator's challenge set for one epoch, with the Merkle tree it commits.
#[derive(Debug, Clone)]
pub struct ChallengeSet {
    pub model_id: [u8; 32],
    pub sessions: Vec<ChallengeSession>,
    tree: MerkleTree,
    by_request: HashMap<B256, ChallengeRef>,
}

impl ChallengeSet {
    /// Runs one session per prompt (`decode_steps` each, session ids from `session_ids`) and
    /// commits to every span of every step. `None` when there are no prompts.
    pub fn build(
        pipeline: &Pipeline,
        prompts: &[Vec<i64>],
        decode_steps: usize,
        mut session_ids: impl FnMut() -> u64,
    ) -> Result<Option<Self>, EngineError> {
        let sessions = prompts
            .iter()
            .map(|prompt| ChallengeSession::run(pipeline, session_ids(), prompt, decode_steps))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::commit(pipeline.manifest().id().0, pipeline.blocks().len() as u16, sessions))
    }

    /// Commits to every span of every step of `sessions` of the `blocks`-block model
    /// `model_id`. `None` when there are no sessions.
    pub fn commit(
        model_id: [u8; 32],
        blocks: u16,
        sessions: Vec<ChallengeSession>,
    ) -> Option<Self> {
        let (mut leaves, mut by_request) = (Vec::new(), HashMap::new());
        for (index, session) in sessions.iter().enumerate() {
            for step in 0..session.steps.len() {
                for first in 0..blocks {
                    for last in first..blocks {
                        let request_hash =
                            session.request(model_id, step, first, last).request_hash();
                        let expected = Payload::Tensor(session.expected(step, last).clone());
                        let expected_output_hash = keccak256(&payload_bytes(&expected));
                        let at = ChallengeRef {
                            session: index,
                            step,
                            last_block: last,
                            leaf: leaves.len(),
                            expected_output_hash,
                        };
                        leaves.push(challenge_leaf(request_hash, expected_output_hash));
                        by_request.insert(request_hash, at);
                    }
                }
            }
        }
        MerkleTree::new(leaves).map(|tree| Self { model_id, sessions, tree, by_request })
    }

    /// The root to commit before the epoch.
    pub fn root(&self) -> B256 {
        self.tree.root()
    }

    /// The challenge a request (by its signed hash) belongs to, if it is one of this set's.
    pub fn find(&self, request_hash: &B256) -> Option<&ChallengeRef> {
        self.by_request.get(request_hash)
    }

    /// The expected output of a challenge.
    pub fn expected(&self, at: &ChallengeRef) -> &Activation {
        self.sessions[at.session].expected(at.step, at.last_block)
    }

    /// The Merkle proof of a challenge's leaf, for a fault report.
    pub fn proof(&self, at: &ChallengeRef) -> Vec<B256> {
        self.tree.proof(at.leaf).expect("every reference points at a leaf")
    }

    /// Number of leaves (requests committed to).
    pub fn len(&self) -> usize {
        self.by_request.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_request.is_empty()
    }
}

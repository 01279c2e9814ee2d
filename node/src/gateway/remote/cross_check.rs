//! Cross-checked hops (`gateway --cross-check`): every step of a hop also runs on a *witness*,
//! a node of another operator serving the same blocks, and the two answers are compared with
//! the validators' judge (`protocol-spec/validation.md`) before either is used.
//!
//! Validators catch a cheating node within epochs, but the answers it gave users until then
//! were wrong. A cross-checked user gets the honest model's output throughout: a dispute is
//! settled by asking both again (the nodes roll their caches back to the step), so a node
//! that perturbs some of its answers is outvoted by its own next answer and the other node,
//! and is banned; an answer is used only once two nodes agree on it. It costs a second node's
//! compute and payment on every hop that has a witness; a hop whose blocks no other
//! operator's node serves runs unchecked.

use std::collections::HashSet;

use libp2p::PeerId;

use super::{RemoteModel, SessionState, StepFailure};
use crate::net::codec::{Payload, StepKind};
use crate::route::Hop;
use crate::validate::{Judge, Verdict};

/// How many times a disputed step is asked of both nodes before neither is trusted.
const ROUNDS: usize = 3;

/// Whether two answers to the same step agree: tensors within the judge's tolerance, anything
/// else exactly.
fn agree(a: &Payload, b: &Payload) -> bool {
    match (a, b) {
        (Payload::Tensor(a), Payload::Tensor(b)) => {
            matches!(Judge::default().judge(a, b), Verdict::Pass { .. })
        }
        _ => a == b,
    }
}

/// Who, in a dispute settled on `truth`, gave an answer that differs from it.
fn liars(rounds: &[(Payload, Payload)], truth: &Payload) -> (bool, bool) {
    let lied = |answer: &Payload| !agree(answer, truth);
    (rounds.iter().any(|(a, _)| lied(a)), rounds.iter().any(|(_, b)| lied(b)))
}

impl RemoteModel {
    /// Gives hops `from..` of the session's route a witness each where one exists, rebuilding
    /// its cache by replaying the session's inputs before `position`.
    pub(super) fn add_witnesses(
        &self,
        state: &mut SessionState,
        from: usize,
        session: u64,
        position: u32,
        needed_tokens: usize,
    ) {
        state.witnesses.resize(state.hops.len(), None);
        if !self.router.cross_check {
            return;
        }
        for index in from..state.hops.len() {
            let Some(witness) = self.witness_for(state, index, needed_tokens) else {
                tracing::debug!(
                    "session {session}: no witness serves blocks {}-{}; that hop runs unchecked",
                    state.hops[index].first_block,
                    state.hops[index].last_block
                );
                continue;
            };
            match self.replay_hop(state, &witness, session, position) {
                Ok(_) => state.witnesses[index] = Some(witness),
                Err(failure) => {
                    self.set_aside(witness.peer, failure);
                }
            }
        }
    }

    /// The cheapest usable node of another operator that serves hop `index`'s blocks and is
    /// not already on the session's route or a witness in it.
    fn witness_for(&self, state: &SessionState, index: usize, needed_tokens: usize) -> Option<Hop> {
        let hop = state.hops[index];
        let candidates = self.router.candidates.lock().expect("candidates").clone();
        let excluded = self.router.hops.bans().excluded();
        let taken: HashSet<PeerId> =
            state.hops.iter().chain(state.witnesses.iter().flatten()).map(|h| h.peer).collect();
        let operator = self.router.hops.operator_of(&hop.peer);
        let blocks = hop.last_block - hop.first_block + 1;
        let cost = |c: &crate::route::Candidate| self.router.cost.edge(c, blocks, needed_tokens);
        candidates
            .iter()
            .filter(|c| c.first_block <= hop.first_block && hop.last_block <= c.last_block)
            .filter(|c| !excluded.contains(&c.peer) && !taken.contains(&c.peer))
            .filter(|c| operator.is_none() || self.router.hops.operator_of(&c.peer) != operator)
            .min_by(|a, b| cost(a).total_cmp(&cost(b)))
            .map(|c| Hop { peer: c.peer, ..hop })
    }

    /// One step to hop `index` of the route, cross-checked against its witness when it has
    /// one. A primary that fails or is caught lying hands the hop to its witness, which has
    /// run every step too; a witness that fails or lies is dropped. A dispute the two do not
    /// settle in [`ROUNDS`] goes to a third node, the referee.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn ask(
        &self,
        state: &mut SessionState,
        index: usize,
        session: u64,
        position: u32,
        kind: StepKind,
        payload: &Payload,
        needed_tokens: usize,
    ) -> Result<Payload, StepFailure> {
        let primary = state.hops[index];
        let Some(witness) = state.witnesses.get(index).copied().flatten() else {
            return self.call_routable(&primary, session, position, kind, payload);
        };
        let mut disputed: Vec<(Payload, Payload)> = Vec::new();
        for _ in 0..ROUNDS {
            let (answer, witnessed) = std::thread::scope(|scope| {
                let witnessed =
                    scope.spawn(|| self.call_routable(&witness, session, position, kind, payload));
                let answer = self.call_routable(&primary, session, position, kind, payload);
                let witnessed = witnessed.join().unwrap_or_else(|_| {
                    Err(StepFailure::Peer("the witness's call panicked".into()))
                });
                (answer, witnessed)
            });
            match (answer, witnessed) {
                (Err(StepFailure::Fatal(e)), _) | (_, Err(StepFailure::Fatal(e))) => {
                    return Err(StepFailure::Fatal(e));
                }
                (Ok(a), Ok(b)) if agree(&a, &b) => {
                    return self.settle(state, index, session, position, &disputed, a, None);
                }
                (Ok(a), Ok(b)) => {
                    tracing::warn!(
                        "session {session} position {position}: {} and its witness {} (blocks \
                         {}-{}) disagree; asking both again",
                        primary.peer,
                        witness.peer,
                        primary.first_block,
                        primary.last_block
                    );
                    self.router.report.lock().expect("report").disputes_total += 1;
                    disputed.push((a, b));
                }
                (Ok(a), Err(failure)) => {
                    let reason = self.set_aside(witness.peer, failure);
                    self.drop_witness(state, index, session, reason);
                    return Ok(a);
                }
                (Err(failure), Ok(b)) => {
                    let reason = self.set_aside(primary.peer, failure);
                    self.hand_to_witness(state, index, session, reason);
                    return Ok(b);
                }
                (Err(failure), Err(witness_failure)) => {
                    let reason = self.set_aside(witness.peer, witness_failure);
                    self.drop_witness(state, index, session, reason);
                    return Err(failure);
                }
            }
        }
        self.referee(state, index, session, (position, kind, payload), &disputed, needed_tokens)
    }

    /// A dispute the primary and the witness of hop `index` kept: a third node serving the
    /// blocks rebuilds the session's cache and answers the step; whoever it agrees with is
    /// right, and it becomes the hop's witness. Without one that agrees with either, neither
    /// answer is used and both are left out.
    fn referee(
        &self,
        state: &mut SessionState,
        index: usize,
        session: u64,
        (position, kind, payload): (u32, StepKind, &Payload),
        disputed: &[(Payload, Payload)],
        needed_tokens: usize,
    ) -> Result<Payload, StepFailure> {
        let (primary, witness) = (state.hops[index].peer, state.witnesses[index].map(|w| w.peer));
        let unsettled = format!(
            "{primary} and its witness {witness:?} disagreed {ROUNDS} times on position {position}"
        );
        if let Some(referee) = self.witness_for(state, index, needed_tokens) {
            let answer = self
                .replay_hop(state, &referee, session, position)
                .and_then(|_| self.call_routable(&referee, session, position, kind, payload));
            let sides = disputed.last().expect("a dispute has rounds");
            match answer {
                Err(StepFailure::Fatal(e)) => return Err(StepFailure::Fatal(e)),
                Ok(truth) if agree(&sides.0, &truth) || agree(&sides.1, &truth) => {
                    tracing::info!(
                        "session {session} position {position}: {} refereed the dispute",
                        referee.peer
                    );
                    return self.settle(
                        state,
                        index,
                        session,
                        position,
                        disputed,
                        truth,
                        Some(referee),
                    );
                }
                Ok(_) => {
                    self.set_aside(referee.peer, StepFailure::Peer(unsettled.clone()));
                    let _ = self.call(&referee, session, 0, StepKind::Close, Payload::Empty);
                }
                Err(failure) => {
                    self.set_aside(referee.peer, failure);
                    let _ = self.call(&referee, session, 0, StepKind::Close, Payload::Empty);
                }
            }
        }
        self.drop_witness(state, index, session, unsettled.clone());
        Err(StepFailure::Peer(unsettled))
    }

    /// The end of a step of hop `index` on `truth`, an answer two nodes agree on: whoever
    /// answered the disputed rounds unlike it is caught and banned, and a `referee` that
    /// settled the dispute becomes the hop's witness if it has none left.
    #[allow(clippy::too_many_arguments)]
    fn settle(
        &self,
        state: &mut SessionState,
        index: usize,
        session: u64,
        position: u32,
        disputed: &[(Payload, Payload)],
        truth: Payload,
        referee: Option<Hop>,
    ) -> Result<Payload, StepFailure> {
        let (primary_lied, witness_lied) = liars(disputed, &truth);
        let caught = u64::from(primary_lied) + u64::from(witness_lied);
        self.router.report.lock().expect("report").caught_total += caught;
        let lie = || format!("answered position {position} unlike two agreeing answers");
        let settled = match (primary_lied, witness_lied) {
            (true, true) => {
                self.drop_witness(state, index, session, lie());
                Err(StepFailure::Peer(lie()))
            }
            (true, false) => {
                self.hand_to_witness(state, index, session, lie());
                Ok(truth)
            }
            (false, true) => {
                self.drop_witness(state, index, session, lie());
                Ok(truth)
            }
            (false, false) => Ok(truth),
        };
        if let Some(referee) = referee {
            if settled.is_ok() && state.witnesses[index].is_none() {
                state.witnesses[index] = Some(referee);
            } else {
                let _ = self.call(&referee, session, 0, StepKind::Close, Payload::Empty);
            }
        }
        settled
    }

    /// A step to `hop`, unless it has left the directory.
    pub(super) fn call_routable(
        &self,
        hop: &Hop,
        session: u64,
        position: u32,
        kind: StepKind,
        payload: &Payload,
    ) -> Result<Payload, StepFailure> {
        // A node jailed, unstaked or fallen below the minimum reputation mid-session is left
        // at once: its answers are no longer trusted or paid for.
        if !self.routable(&hop.peer) {
            return Err(StepFailure::Peer(
                "left the directory (jailed, unstaked or below the minimum reputation)".into(),
            ));
        }
        self.call(hop, session, position, kind, payload.clone())
    }

    /// Bans hop `index`'s witness and ends its session there.
    fn drop_witness(&self, state: &mut SessionState, index: usize, session: u64, reason: String) {
        let Some(witness) = state.witnesses[index].take() else { return };
        tracing::warn!(
            "session {session}: dropped witness {} (blocks {}-{}): {reason}",
            witness.peer,
            witness.first_block,
            witness.last_block
        );
        self.set_aside(witness.peer, StepFailure::Peer(reason));
        let _ = self.call(&witness, session, 0, StepKind::Close, Payload::Empty);
    }

    /// Bans hop `index`'s node and makes its witness, whose cache is as far along, the hop.
    fn hand_to_witness(
        &self,
        state: &mut SessionState,
        index: usize,
        session: u64,
        reason: String,
    ) {
        let Some(witness) = state.witnesses[index].take() else { return };
        let primary = std::mem::replace(&mut state.hops[index], witness);
        tracing::warn!(
            "session {session}: {} (blocks {}-{}) failed, its witness {} takes over: {reason}",
            primary.peer,
            primary.first_block,
            primary.last_block,
            witness.peer
        );
        self.set_aside(primary.peer, StepFailure::Peer(reason));
        let _ = self.call(&primary, session, 0, StepKind::Close, Payload::Empty);
        if let Some(metrics) = &self.router.metrics {
            metrics.failover(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Activation;

    fn tensor(values: &[f32]) -> Payload {
        Payload::Tensor(Activation::new(vec![1, 1, values.len()], values.to_vec()).unwrap())
    }

    #[test]
    fn answers_agree_within_the_judges_tolerance_only() {
        let honest = tensor(&[1.0, 2.0, 3.0]);
        assert!(agree(&honest, &tensor(&[1.0, 2.0, 3.000_001])));
        assert!(!agree(&honest, &tensor(&[1.0, 2.0, 3.1])));
        assert!(!agree(&honest, &tensor(&[1.0, 2.0])));
        assert!(!agree(&honest, &Payload::Empty));
        assert!(agree(&Payload::Tokens(vec![1, 2]), &Payload::Tokens(vec![1, 2])));
    }

    #[test]
    fn the_liar_is_whoever_differed_from_the_settled_answer() {
        let (truth, wrong) = (tensor(&[1.0, 2.0]), tensor(&[1.0, 2.5]));
        assert_eq!(liars(&[], &truth), (false, false));
        assert_eq!(liars(&[(wrong.clone(), truth.clone())], &truth), (true, false));
        assert_eq!(liars(&[(truth.clone(), wrong.clone())], &truth), (false, true));
        let twice = [(truth.clone(), wrong.clone()), (wrong.clone(), truth.clone())];
        assert_eq!(liars(&twice, &truth), (true, true));
    }
}

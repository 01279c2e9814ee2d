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

/// How many times in a row a step is disputed by the same two nodes before a referee is asked.
const ROUNDS: usize = 3;
/// Most rounds one step may take, party changes (a failed or replaced witness) included.
const MAX_ROUNDS: usize = 2 * ROUNDS;

/// Whether two answers to the same step agree: tensors within the judge's tolerance of each
/// other (either taken as the expected one), anything else exactly.
fn agree(a: &Payload, b: &Payload) -> bool {
    let pass =
        |expected, actual| matches!(Judge::default().judge(expected, actual), Verdict::Pass { .. });
    match (a, b) {
        (Payload::Tensor(a), Payload::Tensor(b)) => pass(a, b) || pass(b, a),
        _ => a == b,
    }
}

/// Who, in a dispute settled on `truth`, gave an answer that differs from it.
fn liars(rounds: &[(Payload, Payload)], truth: &Payload) -> (bool, bool) {
    let lied = |answer: &Payload| !agree(answer, truth);
    (rounds.iter().any(|(a, _)| lied(a)), rounds.iter().any(|(_, b)| lied(b)))
}

/// A witness's or referee's failure, for banning: one that calls the request itself wrong
/// (which the hop's node did not) is the peer's fault.
fn peer_fault(failure: StepFailure) -> StepFailure {
    match failure {
        StepFailure::Fatal(e) => StepFailure::Peer(e.to_string()),
        other => other,
    }
}

/// One step of one session as a hop runs it: its position, kind and input.
#[derive(Clone, Copy)]
pub(super) struct Step<'a> {
    pub position: u32,
    pub kind: StepKind,
    pub payload: &'a Payload,
    /// Cache tokens the session needs, for choosing nodes.
    pub needed_tokens: usize,
}

impl RemoteModel {
    /// Gives hops `from..` of the session's route a witness each where one exists, rebuilding
    /// its cache from the session's inputs before `before`. The witness's replayed answers
    /// must agree with those kept for the next boundary — just replayed by a replacement
    /// after a failover, and not yet checked — or the hop's node is not trusted: `Err`.
    pub(super) fn add_witnesses(
        &self,
        state: &mut SessionState,
        from: usize,
        session: u64,
        before: u32,
        needed_tokens: usize,
    ) -> Result<(), (Hop, StepFailure)> {
        state.witnesses.resize(state.hops.len(), None);
        for index in from..state.hops.len() {
            self.recruit(state, index, session, (before, false), needed_tokens, false)
                .map_err(|failure| (state.hops[index], failure))?;
        }
        Ok(())
    }

    /// A witness for hop `index`, its cache rebuilt from the inputs before the step at
    /// `position` (and through it, with `through`: it was answered already). Its replayed
    /// answers before `position` are compared with those kept for the next boundary: when
    /// those were `agreed` already, a witness that differs is caught; when they were not, the
    /// hop's node is the one in doubt (`Err`), and the witness is let go.
    fn recruit(
        &self,
        state: &mut SessionState,
        index: usize,
        session: u64,
        (position, through): (u32, bool),
        needed_tokens: usize,
        agreed: bool,
    ) -> Result<(), StepFailure> {
        if !self.router.cross_check {
            return Ok(());
        }
        let hop = state.hops[index];
        let Some(witness) = self.witness_for(state, index, needed_tokens) else {
            tracing::debug!(
                "session {session}: no other operator's node serves blocks {}-{}; that hop \
                 runs unchecked",
                hop.first_block,
                hop.last_block
            );
            return Ok(());
        };
        let replayed =
            match self.replay_hop(state, &witness, session, position + u32::from(through)) {
                Ok(replayed) => replayed,
                Err(failure) => {
                    self.set_aside(witness.peer, peer_fault(failure));
                    self.close_detached(&witness, session);
                    return Ok(());
                }
            };
        let kept = state.history.get(&(hop.last_block + 1));
        let differs = replayed.iter().filter(|(p, _)| *p < position).find(|(p, output)| {
            let kept = kept.and_then(|k| k.iter().find(|(q, _)| q == p));
            kept.is_some_and(|(_, kept)| !agree(kept, output))
        });
        match differs {
            None => {
                state.witnesses[index] = Some(witness);
                Ok(())
            }
            Some((at, _)) => {
                let disagreed = format!(
                    "{} and witness {} replayed session {session} position {at} differently",
                    hop.peer, witness.peer
                );
                tracing::warn!("{disagreed}");
                self.close_detached(&witness, session);
                if agreed {
                    self.router.report.lock().expect("report").caught_total += 1;
                    self.set_aside(witness.peer, StepFailure::Lied(disagreed));
                    Ok(())
                } else {
                    self.set_aside(witness.peer, StepFailure::Peer(disagreed.clone()));
                    Err(StepFailure::Peer(disagreed))
                }
            }
        }
    }

    /// The cheapest usable node serving hop `index`'s blocks that is not already on the
    /// session's route or a witness in it, and whose operator is neither the hop node's nor
    /// its witness's: two nodes of one operator check nothing.
    fn witness_for(&self, state: &SessionState, index: usize, needed_tokens: usize) -> Option<Hop> {
        let hop = state.hops[index];
        let candidates = self.router.candidates.lock().expect("candidates").clone();
        let excluded = self.router.hops.bans().excluded();
        let taken: HashSet<PeerId> =
            state.hops.iter().chain(state.witnesses.iter().flatten()).map(|h| h.peer).collect();
        let parties = std::iter::once(hop.peer)
            .chain(state.witnesses.get(index).copied().flatten().map(|w| w.peer));
        let operators: Vec<_> = parties.filter_map(|p| self.router.hops.operator_of(&p)).collect();
        let blocks = hop.last_block - hop.first_block + 1;
        let cost = |c: &crate::route::Candidate| self.router.cost.edge(c, blocks, needed_tokens);
        candidates
            .iter()
            .filter(|c| c.first_block <= hop.first_block && hop.last_block <= c.last_block)
            .filter(|c| !excluded.contains(&c.peer) && !taken.contains(&c.peer))
            .filter(|c| {
                self.router.hops.operator_of(&c.peer).is_none_or(|o| !operators.contains(&o))
            })
            .min_by(|a, b| cost(a).total_cmp(&cost(b)))
            .map(|c| Hop { peer: c.peer, ..hop })
    }

    /// One step to hop `index` of the route, cross-checked against its witness when it has
    /// one: only an answer two nodes agree on is returned. A disputed step is asked of both
    /// again; one the same two keep disputing for [`ROUNDS`] goes to a referee. A witness
    /// that fails is replaced; a hop node that fails hands the hop to its witness, which has
    /// run every step too; either way the step is asked again of the new pair.
    pub(super) fn ask(
        &self,
        state: &mut SessionState,
        index: usize,
        session: u64,
        step: Step<'_>,
    ) -> Result<Payload, StepFailure> {
        let Step { position, kind, payload, needed_tokens } = step;
        let mut disputed: Vec<(Payload, Payload)> = Vec::new();
        for _ in 0..MAX_ROUNDS {
            let primary = state.hops[index];
            let Some(witness) = state.witnesses.get(index).copied().flatten() else {
                return self.call_routable(&primary, session, position, kind, payload);
            };
            if disputed.len() == ROUNDS {
                return self.referee(state, index, session, (primary, witness), step, &disputed);
            }
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
                (Err(StepFailure::Fatal(e)), _) => return Err(StepFailure::Fatal(e)),
                (Ok(a), Ok(b)) if agree(&a, &b) => {
                    let parties = (primary, witness);
                    return self.settle(state, index, session, parties, step, &disputed, a, None);
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
                (Ok(_), Err(failure)) => {
                    // Another witness, and the step asked again: a lone answer is not used.
                    let reason = self.set_aside(witness.peer, peer_fault(failure));
                    self.let_go_witness(state, index, session, &reason);
                    self.recruit(state, index, session, (position, false), needed_tokens, true)?;
                    disputed.clear();
                }
                (Err(failure), Ok(_)) => {
                    let reason = self.set_aside(primary.peer, failure);
                    self.hand_to_witness(state, index, session, &reason);
                    self.recruit(state, index, session, (position, false), needed_tokens, true)?;
                    disputed.clear();
                }
                (Err(failure), Err(witness_failure)) => {
                    let reason = self.set_aside(witness.peer, peer_fault(witness_failure));
                    self.let_go_witness(state, index, session, &reason);
                    return Err(failure);
                }
            }
        }
        Err(StepFailure::Peer(format!(
            "position {position} found no two nodes agreeing in {MAX_ROUNDS} rounds"
        )))
    }

    /// A dispute the hop node and its witness kept: a third node serving the blocks (of a
    /// third operator) rebuilds the session's cache and answers the step. If it agrees with
    /// either side, that side is right and the referee stays as a witness. Otherwise neither
    /// answer is used: the witness is let go, and the hop node fails over.
    fn referee(
        &self,
        state: &mut SessionState,
        index: usize,
        session: u64,
        parties: (Hop, Hop),
        step: Step<'_>,
        disputed: &[(Payload, Payload)],
    ) -> Result<Payload, StepFailure> {
        let Step { position, kind, payload, needed_tokens } = step;
        let unsettled = format!(
            "{} and its witness {} disagreed {ROUNDS} times on position {position}",
            parties.0.peer, parties.1.peer
        );
        if let Some(referee) = self.witness_for(state, index, needed_tokens) {
            let answer = self
                .replay_hop(state, &referee, session, position)
                .and_then(|_| self.call_routable(&referee, session, position, kind, payload));
            let sides = disputed.last().expect("a referee is asked after disputed rounds");
            match answer {
                Ok(truth) if agree(&sides.0, &truth) || agree(&sides.1, &truth) => {
                    tracing::info!(
                        "session {session} position {position}: {} refereed the dispute",
                        referee.peer
                    );
                    let referee = Some(referee);
                    return self
                        .settle(state, index, session, parties, step, disputed, truth, referee);
                }
                // A third answer unlike both: nobody can tell who is right, so nobody is banned
                // for it; the referee is not kept.
                Ok(_) => self.close_detached(&referee, session),
                Err(failure) => {
                    self.set_aside(referee.peer, peer_fault(failure));
                    self.close_detached(&referee, session);
                }
            }
        }
        self.set_aside(parties.1.peer, StepFailure::Peer(unsettled.clone()));
        self.let_go_witness(state, index, session, &unsettled);
        Err(StepFailure::Peer(unsettled))
    }

    /// The end of a step of hop `index` on `truth`, an answer two nodes agree on: whoever of
    /// the two `parties` answered a disputed round unlike it is caught, left out for the rest
    /// of the run, and leaves the session. A `referee` that settled the dispute takes a place
    /// left empty (the hop's, or its witness's); a place still empty gets a new witness.
    #[allow(clippy::too_many_arguments)]
    fn settle(
        &self,
        state: &mut SessionState,
        index: usize,
        session: u64,
        (primary, witness): (Hop, Hop),
        step: Step<'_>,
        disputed: &[(Payload, Payload)],
        truth: Payload,
        mut referee: Option<Hop>,
    ) -> Result<Payload, StepFailure> {
        let position = step.position;
        let (primary_lied, witness_lied) = liars(disputed, &truth);
        let caught = u64::from(primary_lied) + u64::from(witness_lied);
        self.router.report.lock().expect("report").caught_total += caught;
        let lie = format!("answered position {position} unlike two agreeing answers");
        if witness_lied {
            self.set_aside(witness.peer, StepFailure::Lied(lie.clone()));
            self.let_go_witness(state, index, session, &lie);
        }
        if primary_lied {
            let reason = self.set_aside(primary.peer, StepFailure::Lied(lie.clone()));
            if state.witnesses[index].is_some() {
                self.hand_to_witness(state, index, session, &reason);
            } else if let Some(referee) = referee.take() {
                // The referee ran this step too: its cache is as far along.
                state.hops[index] = referee;
                self.close_detached(&primary, session);
            } else {
                // Both lied: nobody on this hop is trusted; the hop fails over.
                return Err(StepFailure::Lied(lie));
            }
        }
        if let Some(referee) = referee {
            match state.witnesses[index] {
                None => state.witnesses[index] = Some(referee),
                Some(_) => self.close_detached(&referee, session),
            }
        }
        if state.witnesses[index].is_none() {
            // Rebuilt through this step: its answer to it is the agreed one, not re-checked.
            self.recruit(state, index, session, (position, true), step.needed_tokens, true)?;
        }
        Ok(truth)
    }

    /// A step to `hop`, unless it has left the directory ([`super::Router::call_routable`]), from
    /// the session's thread.
    pub(super) fn call_routable(
        &self,
        hop: &Hop,
        session: u64,
        position: u32,
        kind: StepKind,
        payload: &Payload,
    ) -> Result<Payload, StepFailure> {
        let call = self.router.call_routable(hop, session, position, kind, payload);
        self.router.hops.runtime().block_on(call)
    }

    /// Ends hop `index`'s witness's part in the session (the caller has set it aside).
    fn let_go_witness(&self, state: &mut SessionState, index: usize, session: u64, reason: &str) {
        let Some(witness) = state.witnesses[index].take() else { return };
        tracing::warn!(
            "session {session}: let witness {} (blocks {}-{}) go: {reason}",
            witness.peer,
            witness.first_block,
            witness.last_block
        );
        self.close_detached(&witness, session);
    }

    /// Makes hop `index`'s witness, whose cache is as far along, the hop, and ends the
    /// replaced node's part in the session (the caller has set it aside).
    fn hand_to_witness(&self, state: &mut SessionState, index: usize, session: u64, reason: &str) {
        let Some(witness) = state.witnesses[index].take() else { return };
        let primary = std::mem::replace(&mut state.hops[index], witness);
        tracing::warn!(
            "session {session}: {} (blocks {}-{}) failed, its witness {} takes over: {reason}",
            primary.peer,
            primary.first_block,
            primary.last_block,
            witness.peer
        );
        self.close_detached(&primary, session);
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

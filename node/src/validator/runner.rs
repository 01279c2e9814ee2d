//! A validator's epoch loop. Before epoch `e + 1` begins it builds that epoch's secret
//! challenge set and commits its Merkle root; during epoch `e` it sends that epoch's sessions
//! at random times spread over the epoch, each along a random route through the staked
//! nodes, paid like any dApp's requests; every judged answer goes to the result rounds and
//! every wrong one to the reporter.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rand::seq::IndexedRandom;
use tokio::sync::mpsc;

use super::faults::FoundFault;
use super::rounds::RoundEvent;
use super::{Challenger, SessionOutcome};
use crate::chain::ValidationClient;
use crate::engine::Pipeline;
use crate::gateway::{HopClient, TermsBook};
use crate::net::codec::Payload;
use crate::route::{Candidate, Hop};
use crate::serve::Cheat;
use crate::telemetry::{SessionEnd, ValidatorMetrics};
use crate::validate::{ChainClock, ChallengeSession, ChallengeSet, EpochClock, Judge};

/// How much challenging a validator does.
#[derive(Debug, Clone, Copy)]
pub struct ChallengeRate {
    /// Challenge sessions per epoch.
    pub sessions_per_epoch: usize,
    /// Greedy decode steps after each session's prompt.
    pub decode_steps: usize,
    /// The share of the epoch, from its start, over which sessions are spread: the rest is
    /// margin, so that every answer is signed inside the epoch its challenge was committed for.
    pub spread: f64,
}

/// The challenge loop's parts.
pub struct ChallengeLoop {
    pub validation: ValidationClient,
    pub clock: EpochClock,
    pub time: ChainClock,
    pub pipeline: Arc<Pipeline>,
    pub hops: Arc<HopClient>,
    pub candidates: Arc<std::sync::Mutex<Vec<Candidate>>>,
    pub operators: TermsBook,
    pub judge: Judge,
    /// Tokenized prompts that look like user traffic.
    pub prompts: Vec<Vec<i64>>,
    pub rate: ChallengeRate,
    pub rounds: mpsc::UnboundedSender<RoundEvent>,
    pub faults: mpsc::UnboundedSender<FoundFault>,
    pub metrics: ValidatorMetrics,
    /// TESTING ONLY: a faulty validator, whose expected outputs are perturbed before they
    /// are committed, so that it judges honest answers wrong and reports them.
    pub corrupt_expected: bool,
}

impl ChallengeLoop {
    /// Runs forever: every epoch's set prepared and committed ahead, its sessions sent.
    pub async fn run(self: Arc<Self>) {
        let mut epoch = self.clock.epoch_at(self.time.now());
        let mut next = self.clone().prepare(epoch + 1).await;
        loop {
            sleep_until(&self.time, self.clock.genesis + (epoch + 1) * self.clock.duration).await;
            epoch += 1;
            let current = next.take();
            let preparing = tokio::spawn(self.clone().prepare(epoch + 1));
            match current {
                Some(set) => self.challenge(epoch, set).await,
                None => tracing::warn!("epoch {epoch}: no committed challenge set, idle"),
            }
            next = preparing.await.unwrap_or_else(|e| {
                tracing::warn!("preparing epoch {} failed: {e}", epoch + 1);
                None
            });
        }
    }

    /// Builds the set of `epoch` on a blocking thread and commits its root; `None` (logged)
    /// when it cannot be built, or committed before `epoch` begins.
    async fn prepare(self: Arc<Self>, epoch: u64) -> Option<Arc<ChallengeSet>> {
        let prompts: Vec<Vec<i64>> = {
            let mut rng = rand::rng();
            (0..self.rate.sessions_per_epoch)
                .filter_map(|_| self.prompts.choose(&mut rng).cloned())
                .collect()
        };
        let (pipeline, decode_steps) = (self.pipeline.clone(), self.rate.decode_steps);
        let corrupt = self.corrupt_expected;
        let started = std::time::Instant::now();
        let built = tokio::task::spawn_blocking(move || {
            if !corrupt {
                return ChallengeSet::build(&pipeline, &prompts, decode_steps, rand::random);
            }
            let cheat = Cheat::perturbing(1.0, rand::random());
            let mut sessions = Vec::with_capacity(prompts.len());
            for prompt in &prompts {
                let mut session =
                    ChallengeSession::run(&pipeline, rand::random(), prompt, decode_steps)?;
                for output in session.steps.iter_mut().flat_map(|s| s.outputs.iter_mut()) {
                    let mut payload = Payload::Tensor(output.clone());
                    cheat.apply(&mut payload);
                    if let Payload::Tensor(wrong) = payload {
                        *output = wrong;
                    }
                }
                sessions.push(session);
            }
            let (model_id, blocks) = (pipeline.manifest().id().0, pipeline.blocks().len());
            Ok(ChallengeSet::commit(model_id, blocks as u16, sessions))
        })
        .await;
        let set = match built {
            Ok(Ok(Some(set))) => Arc::new(set),
            Ok(Ok(None)) => {
                self.metrics.challenge_set(false);
                return None;
            }
            Ok(Err(e)) => {
                tracing::warn!("building the challenge set of epoch {epoch} failed: {e}");
                self.metrics.challenge_set(false);
                return None;
            }
            Err(e) => {
                tracing::warn!("building the challenge set of epoch {epoch} failed: {e}");
                self.metrics.challenge_set(false);
                return None;
            }
        };
        match self.validation.commit_challenge_root(epoch, set.root()).await {
            Ok(_) => {
                tracing::info!(
                    "epoch {epoch}: committed challenge root {} ({} sessions, {} \
                     requests, built in {:.1}s)",
                    set.root(),
                    set.sessions.len(),
                    set.len(),
                    started.elapsed().as_secs_f64()
                );
                self.metrics.challenge_set(true);
                Some(set)
            }
            Err(e) => {
                tracing::warn!("committing the challenge root of epoch {epoch} refused: {e}");
                self.metrics.challenge_set(false);
                None
            }
        }
    }

    /// Sends every session of `set` at random times over the first `spread` of `epoch`, in
    /// bursts of sessions running at once (see [`bursts`]), each along a route of its own.
    async fn challenge(&self, epoch: u64, set: Arc<ChallengeSet>) {
        // The round is scheduled now, not after the last session: a session running late
        // must not push the commitments out of their window.
        let _ = self.rounds.send(RoundEvent::Challenged { epoch });
        self.metrics.challenging(epoch);
        let start = self.clock.genesis + epoch * self.clock.duration;
        let window = self.clock.duration as f64 * self.rate.spread;
        let bursts = bursts(set.sessions.len(), window, &mut rand::rng());
        let mut tally = Tally::default();
        for (offset, sessions) in bursts {
            sleep_until(&self.time, start + offset as u64).await;
            if self.time.now() >= start + window.ceil() as u64 {
                tracing::info!(
                    "epoch {epoch}: sessions {sessions:?} left out: too late in the epoch"
                );
                sessions.iter().for_each(|_| self.metrics.session(SessionEnd::LeftOut));
                continue;
            }
            let mut running = tokio::task::JoinSet::new();
            for index in sessions {
                let route = {
                    let candidates = self.candidates.lock().expect("candidates");
                    random_route(&candidates, self.pipeline.blocks().len() as u16)
                };
                let Some(route) = route else {
                    tracing::info!(
                        "epoch {epoch}: no staked nodes cover every block; session {index} left out"
                    );
                    self.metrics.session(SessionEnd::LeftOut);
                    continue;
                };
                let rounds = self.rounds.clone();
                let (set, hops) = (set.clone(), self.hops.clone());
                let operators = self.operators.clone();
                let judge = self.judge;
                running.spawn_blocking(move || {
                    let challenger = Challenger { hops: &hops, judge, operators };
                    let outcome = challenger.run(&set, index, &route, epoch, |node, passed| {
                        let _ = rounds.send(RoundEvent::Judged { epoch, node, passed });
                    });
                    (index, outcome)
                });
            }
            while let Some(done) = running.join_next().await {
                match done {
                    Ok((index, outcome)) => self.account(epoch, &set, index, outcome, &mut tally),
                    Err(e) => {
                        tracing::warn!("epoch {epoch}: a session failed: {e}");
                        self.metrics.session(SessionEnd::Stopped);
                    }
                }
            }
        }
        let Tally { passed, failed } = tally;
        tracing::warn!("epoch {epoch}: challenges sent; {passed} answers right, {failed} wrong");
        let _ = self.rounds.send(RoundEvent::Challenged { epoch });
    }

    /// Counts a finished session's answers and reports its wrong ones.
    fn account(
        &self,
        epoch: u64,
        set: &Arc<ChallengeSet>,
        index: usize,
        outcome: SessionOutcome,
        tally: &mut Tally,
    ) {
        tally.passed += outcome.passed;
        tally.failed += outcome.failures.len() + outcome.unsigned.len();
        self.metrics.judged(outcome.passed, outcome.failures.len(), outcome.unsigned.len());
        match &outcome.stopped {
            Some(why) => {
                tracing::warn!("epoch {epoch}: session {index} stopped early: {why}");
                self.metrics.session(SessionEnd::Stopped);
            }
            None => self.metrics.session(SessionEnd::Completed),
        }
        for failure in outcome.failures {
            let _ = self.faults.send(FoundFault { epoch, set: set.clone(), failure });
        }
    }
}

/// Answers judged right and wrong over an epoch's sessions.
#[derive(Debug, Default)]
struct Tally {
    passed: usize,
    failed: usize,
}

/// The most challenge sessions sent at once.
const MOST_AT_ONCE: usize = 8;

/// The epoch's `sessions` in bursts of 1 to [`MOST_AT_ONCE`] (uniformly drawn; the last takes
/// what is left), each at a random offset within `window` seconds, in time order. A burst's
/// sessions run at once, so their steps to a node they share share messages (`wire.md`,
/// "Several steps in one message") as a busy gateway's users' do: a node cannot confine
/// cheating to messages of several steps. Each still takes a route of its own, so that as
/// many nodes are challenged as before.
fn bursts(sessions: usize, window: f64, rng: &mut impl Rng) -> Vec<(f64, Vec<usize>)> {
    let mut bursts = Vec::new();
    let mut next = 0;
    while next < sessions {
        let size = rng.random_range(1..=MOST_AT_ONCE).min(sessions - next);
        bursts.push((rng.random_range(0.0..window), (next..next + size).collect()));
        next += size;
    }
    bursts.sort_by(|a, b| a.0.total_cmp(&b.0));
    bursts
}

/// A route through every block, each hop drawn at random among the candidates serving its
/// first block (to its span's end), so that over many sessions every node is challenged.
pub fn random_route(candidates: &[Candidate], blocks: u16) -> Option<Vec<Hop>> {
    let mut rng = rand::rng();
    let mut route = Vec::new();
    let mut at = 0u16;
    while at < blocks {
        let serving: Vec<&Candidate> =
            candidates.iter().filter(|c| c.first_block <= at && at <= c.last_block).collect();
        let chosen = serving.choose(&mut rng)?;
        let last = chosen.last_block.min(blocks - 1);
        route.push(Hop { peer: chosen.peer, first_block: at, last_block: last });
        at = last + 1;
    }
    Some(route)
}

/// Sleeps until the chain's clock reads `unix_secs`.
pub async fn sleep_until(time: &ChainClock, unix_secs: u64) {
    loop {
        let now = time.now();
        if now >= unix_secs {
            return;
        }
        tokio::time::sleep(Duration::from_secs((unix_secs - now).min(5))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_session_goes_once_in_bursts_of_one_to_the_most_in_time_order() {
        let mut rng = rand::rng();
        for sessions in [0, 1, 7, 40] {
            let bursts = bursts(sessions, 30.0, &mut rng);
            let sent: Vec<usize> = bursts.iter().flat_map(|(_, burst)| burst.clone()).collect();
            let mut sorted = sent.clone();
            sorted.sort();
            assert_eq!(sorted, (0..sessions).collect::<Vec<_>>(), "each session exactly once");
            assert!(bursts.iter().all(|(_, burst)| (1..=MOST_AT_ONCE).contains(&burst.len())));
            assert!(bursts.iter().all(|(offset, _)| (0.0..30.0).contains(offset)));
            assert!(bursts.windows(2).all(|w| w[0].0 <= w[1].0), "in time order");
        }
        // Over many draws, bursts of every size from one to the most occur.
        let sizes: std::collections::HashSet<usize> =
            bursts(2000, 30.0, &mut rng).iter().map(|(_, burst)| burst.len()).collect();
        assert!((1..MOST_AT_ONCE).all(|size| sizes.contains(&size)), "{sizes:?}");
    }
}

//! The result rounds: one task owns the validator's [`ResultBook`], counts every judged answer
//! sent to it, and after each challenged epoch commits the tallies inside the commit window
//! and reveals them inside the reveal window, retrying what an RPC outage refused while the
//! window is still open. Owning the book (instead of sharing it behind a lock) keeps the
//! challenge sessions counting while a commitment waits on the chain.

use std::collections::BTreeMap;
use std::time::Duration;

use alloy::primitives::Address;
use tokio::sync::mpsc;

use crate::chain::{ChainError, ValidationClient};
use crate::validate::{ChainClock, EpochClock, ResultBook, Sent};

/// What the rounds task is told.
#[derive(Debug)]
pub enum RoundEvent {
    /// One judged answer of `node` in `epoch`.
    Judged { epoch: u64, node: Address, passed: bool },
    /// `epoch` is being challenged: commit and reveal its results when their windows open.
    Challenged { epoch: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    Commit(u64),
    Reveal(u64),
    /// After the reveal window: penalize whoever withheld a reveal in a round that did not
    /// finalize.
    Audit(u64),
}

/// The windows of a result round, from the contract's parameters, and how this validator
/// plays them.
#[derive(Debug, Clone, Copy)]
pub struct RoundWindows {
    pub commit_secs: u64,
    pub reveal_secs: u64,
    /// TESTING ONLY: commit every result and never reveal one (a validator stalling rounds).
    pub withhold_reveals: bool,
}

/// Seconds after a window opens before acting in it: the next block's timestamp may lag the
/// local view of the chain's clock by about that.
const MARGIN_SECS: u64 = 1;
/// How soon a refused commitment or reveal is tried again.
const RETRY_SECS: u64 = 2;

/// Runs until `events` closes.
pub async fn run_rounds(
    mut book: ResultBook,
    validation: ValidationClient,
    validator: Address,
    clock: EpochClock,
    time: ChainClock,
    windows: RoundWindows,
    mut events: mpsc::UnboundedReceiver<RoundEvent>,
) {
    // When each action is due, in the chain's unix seconds.
    let mut due: BTreeMap<(u64, Action), ()> = BTreeMap::new();
    loop {
        let wait = due
            .keys()
            .next()
            .map(|(at, _)| Duration::from_secs(at.saturating_sub(time.now())))
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            event = events.recv() => match event {
                None => return,
                Some(RoundEvent::Judged { epoch, node, passed }) => {
                    if !book.record(epoch, node, passed) {
                        tracing::info!(
                            "an answer of {node} judged after epoch {epoch}'s results \
                             were sealed is not counted"
                        );
                    }
                }
                Some(RoundEvent::Challenged { epoch }) => {
                    let ends = epoch_end(&clock, epoch);
                    due.insert((ends + MARGIN_SECS, Action::Commit(epoch)), ());
                    let reveal_opens = ends + windows.commit_secs + MARGIN_SECS;
                    if !windows.withhold_reveals {
                        due.insert((reveal_opens, Action::Reveal(epoch)), ());
                    }
                    let closed = reveal_opens + windows.reveal_secs;
                    due.insert((closed, Action::Audit(epoch)), ());
                }
            },
            () = tokio::time::sleep(wait) => {
                let Some(((_, action), ())) = due.pop_first() else { continue };
                let retry_at = time.now() + RETRY_SECS;
                let ends = |epoch| epoch_end(&clock, epoch);
                match action {
                    Action::Commit(epoch) => {
                        let sent = book.commit(&validation, validator, epoch).await;
                        let closes = ends(epoch) + windows.commit_secs;
                        if log_round("commit", epoch, sent) && retry_at < closes {
                            due.insert((retry_at, action), ());
                        }
                    }
                    Action::Reveal(epoch) => {
                        let sent = book.reveal(&validation, epoch).await;
                        let closes = ends(epoch) + windows.commit_secs + windows.reveal_secs;
                        if log_round("reveal", epoch, sent) && retry_at < closes {
                            due.insert((retry_at, action), ());
                        }
                    }
                    Action::Audit(epoch) => {
                        let nodes: Vec<Address> = book.epoch(epoch).map(|r| r.node).collect();
                        penalize_withheld_reveals(&validation, validator, epoch, &nodes).await;
                    }
                }
            }
        }
    }
}

/// For every node of `nodes` whose round of `epoch` did not finalize, penalizes each other
/// validator that committed a result about it and never revealed it — how a minority would
/// stall the quorum (`validation.md`, "Missed reveals"). Logged; failures are not retried.
async fn penalize_withheld_reveals(
    validation: &ValidationClient,
    validator: Address,
    epoch: u64,
    nodes: &[Address],
) {
    for &node in nodes {
        let withheld = async {
            if validation.result_finalized(node, epoch).await? {
                return Ok(Vec::new());
            }
            validation.withheld_reveals(node, epoch).await
        };
        let withheld = match withheld.await {
            Ok(withheld) => withheld,
            Err(e) => {
                tracing::warn!("epoch {epoch}: checking the round of {node} failed: {e}");
                continue;
            }
        };
        for other in withheld.into_iter().filter(|v| *v != validator) {
            match validation.penalize_missed_reveal(other, node, epoch).await {
                Ok(_) => tracing::info!(
                    "epoch {epoch}: {other} committed a result about {node} and never \
                     revealed it; the round did not finalize: penalized"
                ),
                Err(e) => tracing::warn!(
                    "epoch {epoch}: penalizing {other}'s missed reveal about {node} \
                     refused: {e}"
                ),
            }
        }
    }
}

fn epoch_end(clock: &EpochClock, epoch: u64) -> u64 {
    clock.genesis + (epoch + 1) * clock.duration
}

/// Logs a commit or reveal pass, one line per node; returns whether any may succeed if sent
/// again: an RPC failure, or a transaction sent a moment before its window opened on-chain.
/// Other refusals are final (a round the others' reveals already finalized, say).
fn log_round(
    what: &str,
    epoch: u64,
    sent: Result<Vec<Sent>, crate::validate::ResultBookError>,
) -> bool {
    let sent = match sent {
        Ok(sent) => sent,
        Err(e) => {
            tracing::warn!("epoch {epoch}: {what} stopped: {e}");
            return true;
        }
    };
    let mut retry = false;
    for Sent { node, outcome } in sent {
        match outcome {
            Ok(()) => tracing::info!("epoch {epoch}: {what} of the result for {node}: done"),
            Err(e) => {
                let early = ["EpochNotEnded", "RevealWindowNotOpen"];
                let again = match &e {
                    ChainError::Reverted(reason) => early.iter().any(|r| reason.contains(r)),
                    _ => true,
                };
                retry |= again;
                let next = if again { "will retry" } else { "final" };
                tracing::warn!(
                    "epoch {epoch}: {what} of the result for {node} refused ({next}): {e}"
                );
            }
        }
    }
    retry
}

//! A node's validation history folded per epoch: what the validators revealed about it, the
//! score the round finalized, and the fault reports about answers it signed in that epoch
//! with their verdicts and slashes.

use std::collections::{BTreeMap, HashMap};

use alloy::primitives::U256;
use serde::Serialize;

use super::{HistoryEvent, NodeEvent};

/// One epoch of a node's validation history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EpochSummary {
    pub epoch: u64,
    /// Validators that committed a result about the node, and that revealed it.
    pub committed: u32,
    pub revealed: u32,
    /// Challenges passed and failed, summed over the revealed results.
    pub passed: u64,
    pub failed: u64,
    /// The stake-weighted score the round finalized, when a quorum revealed.
    pub score_bps: Option<u32>,
    /// Fault reports about answers signed in this epoch: filed, convicted, rejected.
    pub reports: u32,
    pub guilty: u32,
    pub rejected: u32,
    /// Stake slashed by this epoch's convictions.
    pub slashed: U256,
}

/// The epochs of `history` (a node's events, oldest first), in epoch order.
pub fn epochs(history: &[HistoryEvent]) -> Vec<EpochSummary> {
    let mut by_epoch: BTreeMap<u64, EpochSummary> = BTreeMap::new();
    let mut report_epochs: HashMap<U256, u64> = HashMap::new();
    fn at(by_epoch: &mut BTreeMap<u64, EpochSummary>, epoch: u64) -> &mut EpochSummary {
        by_epoch.entry(epoch).or_insert_with(|| EpochSummary { epoch, ..Default::default() })
    }
    for event in history {
        match &event.event {
            NodeEvent::ResultCommitted(e) => at(&mut by_epoch, e.epoch).committed += 1,
            NodeEvent::ResultRevealed(e) => {
                let summary = at(&mut by_epoch, e.epoch);
                summary.revealed += 1;
                summary.passed += u64::from(e.passed);
                summary.failed += u64::from(e.failed);
            }
            NodeEvent::ResultFinalized(e) => {
                at(&mut by_epoch, e.epoch).score_bps = Some(e.scoreBps)
            }
            NodeEvent::FaultReported(e) => {
                report_epochs.insert(e.reportId, e.epoch);
                at(&mut by_epoch, e.epoch).reports += 1;
            }
            NodeEvent::FaultFinalized(e) => {
                // A verdict always follows its report in the history.
                if let Some(&epoch) = report_epochs.get(&e.reportId) {
                    let summary = at(&mut by_epoch, epoch);
                    if e.guilty {
                        summary.guilty += 1;
                        summary.slashed += e.slashed;
                    } else {
                        summary.rejected += 1;
                    }
                }
            }
            _ => {}
        }
    }
    by_epoch.into_values().collect()
}

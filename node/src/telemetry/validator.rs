//! A validator's metrics: challenge sets committed, challenge sessions sent, answers judged
//! right or wrong, fault reports filed and votes cast. What the chain made of them (reputation,
//! slashes) is the auditor's to read from the chain, not the validator's to claim.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// How a challenge session ended, for [`ValidatorMetrics::session`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// Every step sent and judged.
    Completed,
    /// Cut short (a node failed to answer, or the route broke): the steps before were judged.
    Stopped,
    /// Not sent: too late in the epoch, or no staked nodes covered every block.
    LeftOut,
}

/// The validator's registry and the handles that record into it; cheap to clone.
#[derive(Clone)]
pub struct ValidatorMetrics {
    exposition: super::Exposition,
    epoch: Gauge,
    challenge_sets: Family<OutcomeLabels, Counter>,
    sessions: Family<OutcomeLabels, Counter>,
    answers: Family<OutcomeLabels, Counter>,
    reports: Family<OutcomeLabels, Counter>,
    votes: Family<OutcomeLabels, Counter>,
}

impl ValidatorMetrics {
    /// `network`: the libp2p metrics (`Network::metrics`) to expose after these.
    pub fn new(network: Option<Arc<Registry>>) -> Self {
        let mut registry = Registry::with_prefix("infergrid_validator");
        let epoch = Gauge::default();
        registry.register("epoch", "The epoch being challenged", epoch.clone());
        let mut family = |name: &str, help: &str| {
            let family = Family::<OutcomeLabels, Counter>::default();
            registry.register(name, help, family.clone());
            family
        };
        let challenge_sets = family(
            "challenge_sets",
            "Secret challenge sets built for an epoch: `committed` (root on-chain before the \
             epoch) or `failed` (not built, or its root refused)",
        );
        let sessions = family(
            "challenge_sessions",
            "Challenge sessions, sent as paid traffic: `completed`, `stopped` early, or \
             `left_out`",
        );
        let answers = family(
            "answers_judged",
            "Node answers to challenges, judged against the precomputed ones: `right`, `wrong` \
             (outside the tolerance, or a lazy answer) or `unsigned` (no valid attestation)",
        );
        let reports = family(
            "fault_reports",
            "Fault reports against wrong answers: `filed` on-chain or `refused`",
        );
        let votes = family(
            "fault_votes",
            "Votes cast on others' fault reports after re-executing their evidence: `guilty` \
             or `innocent`",
        );
        Self {
            exposition: super::Exposition::new(registry, network),
            epoch,
            challenge_sets,
            sessions,
            answers,
            reports,
            votes,
        }
    }

    fn count(family: &Family<OutcomeLabels, Counter>, outcome: &'static str, by: u64) {
        family.get_or_create(&OutcomeLabels { outcome }).inc_by(by);
    }

    pub fn challenging(&self, epoch: u64) {
        self.epoch.set(i64::try_from(epoch).unwrap_or(i64::MAX));
    }

    pub fn challenge_set(&self, committed: bool) {
        Self::count(&self.challenge_sets, if committed { "committed" } else { "failed" }, 1);
    }

    pub fn session(&self, outcome: SessionEnd) {
        let outcome = match outcome {
            SessionEnd::Completed => "completed",
            SessionEnd::Stopped => "stopped",
            SessionEnd::LeftOut => "left_out",
        };
        Self::count(&self.sessions, outcome, 1);
    }

    /// One session's answers: `right`, `wrong` and `unsigned` of them.
    pub fn judged(&self, right: usize, wrong: usize, unsigned: usize) {
        for (outcome, n) in [("right", right), ("wrong", wrong), ("unsigned", unsigned)] {
            Self::count(&self.answers, outcome, n as u64);
        }
    }

    pub fn report(&self, filed: bool) {
        Self::count(&self.reports, if filed { "filed" } else { "refused" }, 1);
    }

    pub fn vote(&self, guilty: bool) {
        Self::count(&self.votes, if guilty { "guilty" } else { "innocent" }, 1);
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        self.exposition.encode()
    }
}

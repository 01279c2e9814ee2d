//! Which blocks a node should serve (`--blocks auto`): the contiguous span that raises the
//! swarm's throughput most, as Petals chooses. A pipeline through every block runs at the
//! pace of its least-served block, so the span is chosen to lift the smallest per-block
//! throughput, then the span with the least throughput already.

use std::collections::HashMap;

use alloy::primitives::{Address, B256};
use libp2p::PeerId;

use crate::chain::{ChainError, Registry};

/// Throughput serving each block, from the other nodes: tokens/s they announced, or the
/// typical one for a node that announced nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct Coverage(pub Vec<f64>);

/// How much better a move must make the swarm before a node serving a span moves: less, and
/// two nodes could keep swapping spans as each one's move changes the other's view.
pub const MOVE_GAIN: f64 = 1.2;

impl Coverage {
    /// The start of the `span`-block span that, given `own` throughput, leaves the swarm's
    /// least-served block best served; ties go to the span with the least throughput, then
    /// the first.
    pub fn best_start(&self, span: usize, own: f64) -> usize {
        let starts = 0..=self.0.len().saturating_sub(span);
        let score = |start: usize| {
            let served: f64 = self.0[start..start + span].iter().sum();
            (self.bottleneck_with(start, span, own), -served)
        };
        starts
            .map(|start| (score(start), start))
            .fold(None, |best: Option<((f64, f64), usize)>, (score, start)| match best {
                Some((b, _)) if b >= score => best,
                _ => Some((score, start)),
            })
            .map_or(0, |(_, start)| start)
    }

    /// The least-served block's throughput with `own` added to blocks `start..start+span`.
    pub fn bottleneck_with(&self, start: usize, span: usize, own: f64) -> f64 {
        let with = |(block, t): (usize, &f64)| {
            if (start..start + span).contains(&block) { t + own } else { *t }
        };
        self.0.iter().enumerate().map(with).fold(f64::INFINITY, f64::min)
    }

    /// Whether moving from `current` to the best span is worth it: it must raise the
    /// least-served block's throughput by [`MOVE_GAIN`].
    pub fn worth_moving(&self, current: usize, span: usize, own: f64) -> Option<usize> {
        let best = self.best_start(span, own);
        let now = self.bottleneck_with(current, span, own);
        let then = self.bottleneck_with(best, span, own);
        (best != current && then > now * MOVE_GAIN).then_some(best)
    }
}

/// The coverage of `blocks` blocks of `model` by the active nodes other than `me`, from the
/// announcements heard (`heard`: tokens/s per peer, 0 for a node that has not measured one
/// yet). A node heard counts with the tokens/s it announced, or the median of those
/// announced (1 when none did); a node registered but not heard is taken to be offline and
/// counts nothing, unless nobody was heard at all (then every active node counts the
/// median). Returns it with that typical throughput, which a node that has not run yet takes
/// as its own.
pub async fn coverage(
    registry: &Registry,
    model: B256,
    blocks: usize,
    me: Address,
    heard: &HashMap<PeerId, f64>,
) -> Result<(Coverage, f64), ChainError> {
    let mut known: Vec<f64> = heard.values().copied().filter(|t| *t > 0.0).collect();
    known.sort_by(f64::total_cmp);
    let typical = known.get(known.len() / 2).copied().unwrap_or(1.0);
    let mut per_block = vec![0.0; blocks];
    let mut weights: HashMap<Address, f64> = HashMap::new();
    for (block, served) in per_block.iter_mut().enumerate() {
        for operator in registry.active_nodes(model, block as u32).await? {
            if operator == me {
                continue;
            }
            let weight = match weights.get(&operator) {
                Some(weight) => *weight,
                None => {
                    let node = registry.node(operator).await?;
                    let peer = PeerId::from_bytes(&node.peerId).ok();
                    let weight = match peer.and_then(|p| heard.get(&p).copied()) {
                        Some(announced) if announced > 0.0 => announced,
                        Some(_) => typical,
                        None if heard.is_empty() => typical,
                        None => 0.0,
                    };
                    *weights.entry(operator).or_insert(weight)
                }
            };
            *served += weight;
        }
    }
    Ok((Coverage(per_block), typical))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_served_blocks_are_chosen() {
        let coverage = Coverage(vec![2.0, 1.0, 0.0, 3.0]);
        assert_eq!(coverage.best_start(1, 1.0), 2);
        // Two blocks: 1-2 lifts the bottleneck (block 2) and is the least served pair.
        assert_eq!(coverage.best_start(2, 1.0), 1);
        // A span as long as the model.
        assert_eq!(coverage.best_start(4, 1.0), 0);
        // Throughput, not node count: a block served by one fast node is well served.
        let weighted = Coverage(vec![10.0, 1.0, 1.5]);
        assert_eq!(weighted.best_start(1, 1.0), 1);
    }

    #[test]
    fn a_node_moves_only_for_a_real_gain() {
        // Serving block 0 while block 2 has nobody: moving lifts the bottleneck from 0.
        let empty = Coverage(vec![1.0, 1.0, 0.0]);
        assert_eq!(empty.worth_moving(0, 1, 1.0), Some(2));
        // Already on the least-served block: stay.
        assert_eq!(empty.worth_moving(2, 1, 1.0), None);
        // A slightly better place is not worth the churn.
        let close = Coverage(vec![1.0, 1.05, 1.1]);
        assert_eq!(close.worth_moving(2, 1, 1.0), None);
    }
}

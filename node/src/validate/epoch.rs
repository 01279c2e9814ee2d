use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The `Validation` contract's epochs: epoch `e` is
/// `[genesis + e · duration, genesis + (e + 1) · duration)`, in unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochClock {
    /// The contract's deployment time.
    pub genesis: u64,
    /// Seconds per epoch; the contract refuses 0.
    pub duration: u64,
}

impl EpochClock {
    /// The epoch at `unix_secs`; a time before genesis (a skewed local clock) reads as 0, as
    /// the contract's first epoch.
    pub fn epoch_at(&self, unix_secs: u64) -> u64 {
        unix_secs.saturating_sub(self.genesis) / self.duration
    }
}

/// The chain's clock as seen from this machine: the wall clock plus an offset measured between
/// block timestamps and the wall clock. Epochs are judged on-chain by `block.timestamp`, which
/// can run far from the wall clock (a dev chain whose time was moved, a skewed host); an answer
/// signed for the wrong epoch cannot be reported, so the node signs by the chain's time.
///
/// A block's timestamp is a lower bound of the chain's time — the latest block may be old when
/// nothing was mined for a while (anvil mines on demand; an RPC endpoint that stalled serves a
/// stale head) — so the offset keeps the largest one measured: a stale head never turns the
/// clock back.
#[derive(Debug, Clone)]
pub struct ChainClock(Arc<AtomicI64>);

/// The offset before the first measurement: none, the wall clock.
const UNSYNCED: i64 = i64::MIN;

impl Default for ChainClock {
    fn default() -> Self {
        Self(Arc::new(AtomicI64::new(UNSYNCED)))
    }
}

impl ChainClock {
    /// Unix seconds on the chain now: the wall clock plus the largest measured offset.
    pub fn now(&self) -> u64 {
        let offset = match self.0.load(Ordering::Relaxed) {
            UNSYNCED => 0,
            offset => offset,
        };
        u64::try_from(wall_clock_secs().saturating_add(offset)).unwrap_or(0)
    }

    /// Records that the latest block carries `block_timestamp` now.
    pub fn sync(&self, block_timestamp: u64) {
        let chain = i64::try_from(block_timestamp).unwrap_or(i64::MAX);
        self.0.fetch_max(chain.saturating_sub(wall_clock_secs()), Ordering::Relaxed);
    }
}

fn wall_clock_secs() -> i64 {
    let elapsed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_start_at_genesis_and_last_one_duration() {
        let clock = EpochClock { genesis: 1_000, duration: 3_600 };
        assert_eq!(clock.epoch_at(1_000), 0);
        assert_eq!(clock.epoch_at(4_599), 0);
        assert_eq!(clock.epoch_at(4_600), 1);
        assert_eq!(clock.epoch_at(1_000 + 7 * 3_600 + 5), 7);
        assert_eq!(clock.epoch_at(0), 0, "before genesis");
    }

    #[test]
    fn the_chain_clock_follows_the_blocks_and_a_stale_head_never_turns_it_back() {
        let time = ChainClock::default();
        let wall = u64::try_from(wall_clock_secs()).expect("after 1970");
        assert!((wall..=wall + 1).contains(&time.now()), "the wall clock before any block");
        time.sync(wall - 7_200);
        // A second may tick between the reads.
        assert!((wall - 7_200..=wall - 7_198).contains(&time.now()), "two hours behind");
        time.sync(wall - 9_000);
        assert!(
            (wall - 7_200..=wall - 7_198).contains(&time.now()),
            "an older head changes nothing"
        );
        time.sync(wall + 3_600);
        assert!((wall + 3_600..=wall + 3_602).contains(&time.now()), "an hour ahead");
    }
}

//! How many chain reads a peer may cause. A voucher for a channel this node has not seen (or
//! above the deposit it knows) costs an RPC round trip before it can be judged, so a peer
//! inventing channel ids could use the node to flood its RPC endpoint. Each peer draws from a
//! bucket of lookups that refills slowly: an honest payer needs one per channel and one per
//! top-up, far below the refill.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// Lookups a peer may make at once.
pub const LOOKUP_BURST: u32 = 8;
/// One more lookup becomes available this often.
pub const LOOKUP_REFILL: Duration = Duration::from_secs(2);
/// Peers tracked before those with a full bucket again are forgotten.
const TRACKED_PEERS: usize = 4096;

/// Per-peer token buckets of chain lookups.
#[derive(Debug)]
pub struct LookupBudget {
    burst: f64,
    refill: Duration,
    buckets: Mutex<HashMap<PeerId, (f64, Instant)>>,
}

impl Default for LookupBudget {
    fn default() -> Self {
        Self::new(LOOKUP_BURST, LOOKUP_REFILL)
    }
}

impl LookupBudget {
    pub fn new(burst: u32, refill: Duration) -> Self {
        Self { burst: f64::from(burst.max(1)), refill, buckets: Mutex::default() }
    }

    /// Whether `peer` has a lookup left, or how long until it has one.
    pub fn check(&self, peer: PeerId) -> Result<(), Duration> {
        self.check_at(peer, Instant::now())
    }

    /// Takes one lookup from `peer`'s bucket, which may go empty (never below).
    pub fn charge(&self, peer: PeerId) {
        self.charge_at(peer, Instant::now())
    }

    fn check_at(&self, peer: PeerId, now: Instant) -> Result<(), Duration> {
        let buckets = self.buckets.lock().expect("lookup buckets");
        let level = buckets.get(&peer).map_or(self.burst, |bucket| self.level(*bucket, now));
        if level < 1.0 {
            return Err(self.refill.mul_f64(1.0 - level));
        }
        Ok(())
    }

    fn charge_at(&self, peer: PeerId, now: Instant) {
        let mut buckets = self.buckets.lock().expect("lookup buckets");
        if buckets.len() >= TRACKED_PEERS && !buckets.contains_key(&peer) {
            buckets.retain(|_, bucket| self.level(*bucket, now) < self.burst);
        }
        let bucket = buckets.entry(peer).or_insert((self.burst, now));
        *bucket = ((self.level(*bucket, now) - 1.0).max(0.0), now);
    }

    /// [`LookupBudget::check`], then [`LookupBudget::charge`].
    #[cfg(test)]
    fn take_at(&self, peer: PeerId, now: Instant) -> Result<(), Duration> {
        self.check_at(peer, now)?;
        self.charge_at(peer, now);
        Ok(())
    }

    /// The bucket's level at `now`, refilled since it was last drawn from.
    fn level(&self, (level, at): (f64, Instant), now: Instant) -> f64 {
        let refilled = now.saturating_duration_since(at).as_secs_f64() / self.refill.as_secs_f64();
        (level + refilled).min(self.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_lookup_per_refill_per_peer() {
        let budget = LookupBudget::new(3, Duration::from_secs(2));
        let (flooder, payer) = (PeerId::random(), PeerId::random());
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(budget.take_at(flooder, start), Ok(()));
        }
        assert_eq!(budget.take_at(flooder, start), Err(Duration::from_secs(2)));
        // Another peer is not held up by the flooder.
        assert_eq!(budget.take_at(payer, start), Ok(()));
        // Half a refill later, half a lookup is back: a second more to wait.
        let later = start + Duration::from_secs(1);
        assert_eq!(budget.take_at(flooder, later), Err(Duration::from_secs(1)));
        assert_eq!(budget.take_at(flooder, start + Duration::from_secs(2)), Ok(()));
        // Long idle refills to the burst, no more.
        let idle = start + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(budget.take_at(flooder, idle), Ok(()));
        }
        assert!(budget.take_at(flooder, idle).is_err());
    }

    #[test]
    fn peers_with_full_buckets_are_forgotten_when_too_many_are_tracked() {
        let budget = LookupBudget::new(2, Duration::from_secs(1));
        let start = Instant::now();
        let flooder = PeerId::random();
        budget.take_at(flooder, start).unwrap();
        budget.take_at(flooder, start).unwrap();
        for _ in 0..TRACKED_PEERS {
            budget.take_at(PeerId::random(), start + Duration::from_secs(10)).unwrap();
        }
        // The flooder's bucket refilled and it was forgotten; the peers drawing on theirs
        // were not.
        let buckets = budget.buckets.lock().unwrap();
        assert!(!buckets.contains_key(&flooder));
        assert_eq!(buckets.len(), TRACKED_PEERS);
        drop(buckets);
        assert_eq!(budget.take_at(flooder, start + Duration::from_secs(10)), Ok(()));
    }
}

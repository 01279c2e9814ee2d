//! What one node lets its peers use, checked before any compute: steps waiting for the
//! engine (shed with `Overloaded` beyond a bound, instead of queueing without end) and, per
//! peer, sessions and KV-cache tokens with an idle expiry — so one peer's cheap prefills
//! cannot fill the cache and evict everyone else's sessions (the cache's own LRU is global).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bounds on what a node serves at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// Steps computing or waiting for the engine; one more is refused `Overloaded`.
    pub max_queued_steps: usize,
    /// Sessions one peer may hold on this node.
    pub sessions_per_peer: usize,
    /// KV-cache tokens (per block) one peer's sessions may hold together.
    pub tokens_per_peer: usize,
    /// A session unused this long is forgotten and its cache freed.
    pub idle_ttl: Duration,
}

impl Default for ServeLimits {
    /// Half of the default cache ([`crate::engine::CacheLimits`]) per peer: a second peer
    /// always finds room.
    fn default() -> Self {
        Self {
            max_queued_steps: 128,
            sessions_per_peer: 128,
            tokens_per_peer: 32_768,
            idle_ttl: Duration::from_secs(600),
        }
    }
}

/// Why a step was refused before compute.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("node busy: {0} steps already waiting for the engine; retry or route elsewhere")]
    Busy(usize),
    #[error(
        "peer quota: {limit} sessions already open here for this peer; close some, or wait for idle ones to expire"
    )]
    Sessions { limit: usize },
    #[error(
        "peer quota: this step would hold {needed} KV-cache tokens for this peer; the most is {limit}"
    )]
    Tokens { needed: usize, limit: usize },
}

/// One held session: its tokens after its last step, and when that was.
#[derive(Debug, Clone, Copy)]
struct Held {
    tokens: usize,
    last_used: Instant,
}

/// Admits steps within [`ServeLimits`].
#[derive(Debug)]
pub struct LoadGuard {
    limits: ServeLimits,
    steps: Arc<Semaphore>,
    peers: Mutex<HashMap<PeerId, HashMap<u64, Held>>>,
}

impl Default for LoadGuard {
    fn default() -> Self {
        Self::new(ServeLimits::default())
    }
}

impl LoadGuard {
    pub fn new(limits: ServeLimits) -> Self {
        Self {
            limits,
            steps: Arc::new(Semaphore::new(limits.max_queued_steps)),
            peers: Mutex::default(),
        }
    }

    /// A slot for one step until the permit drops, or [`Refusal::Busy`].
    pub fn step_slot(&self) -> Result<OwnedSemaphorePermit, Refusal> {
        self.steps
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Busy(self.limits.max_queued_steps))
    }

    /// Books `session` of `peer` at `tokens` after this step, or refuses when that would take
    /// the peer past its quota (its other sessions unused for the idle TTL do not count).
    pub fn reserve(
        &self,
        peer: PeerId,
        session: u64,
        tokens: usize,
        now: Instant,
    ) -> Result<(), Refusal> {
        let limits = self.limits;
        if tokens > limits.tokens_per_peer {
            return Err(Refusal::Tokens { needed: tokens, limit: limits.tokens_per_peer });
        }
        let mut peers = self.peers.lock().expect("quota lock");
        let held = peers.entry(peer).or_default();
        let live = |h: &Held| now.duration_since(h.last_used) < limits.idle_ttl;
        let others = held.iter().filter(|(s, h)| **s != session && live(h));
        let (count, others_tokens) = others.fold((0, 0), |(n, t), (_, h)| (n + 1, t + h.tokens));
        if !held.contains_key(&session) && count >= limits.sessions_per_peer {
            return Err(Refusal::Sessions { limit: limits.sessions_per_peer });
        }
        if others_tokens + tokens > limits.tokens_per_peer {
            return Err(Refusal::Tokens {
                needed: others_tokens + tokens,
                limit: limits.tokens_per_peer,
            });
        }
        held.insert(session, Held { tokens, last_used: now });
        Ok(())
    }

    /// Forgets a closed session.
    pub fn release(&self, peer: &PeerId, session: u64) {
        let mut peers = self.peers.lock().expect("quota lock");
        if let Some(held) = peers.get_mut(peer) {
            held.remove(&session);
            if held.is_empty() {
                peers.remove(peer);
            }
        }
    }

    /// Forgets every session idle for the TTL; returns them, for their caches to be freed.
    pub fn expire(&self, now: Instant) -> Vec<u64> {
        let ttl = self.limits.idle_ttl;
        let mut expired = Vec::new();
        let mut peers = self.peers.lock().expect("quota lock");
        peers.retain(|_, held| {
            held.retain(|session, h| {
                let live = now.duration_since(h.last_used) < ttl;
                if !live {
                    expired.push(*session);
                }
                live
            });
            !held.is_empty()
        });
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(sessions: usize, tokens: usize) -> LoadGuard {
        LoadGuard::new(ServeLimits {
            max_queued_steps: 2,
            sessions_per_peer: sessions,
            tokens_per_peer: tokens,
            idle_ttl: Duration::from_secs(60),
        })
    }

    #[test]
    fn a_peer_is_held_to_its_own_sessions_and_tokens() {
        let (hog, other) = (PeerId::random(), PeerId::random());
        let guard = guard(2, 100);
        let now = Instant::now();
        guard.reserve(hog, 1, 40, now).unwrap();
        guard.reserve(hog, 2, 40, now).unwrap();
        assert_eq!(guard.reserve(hog, 3, 1, now), Err(Refusal::Sessions { limit: 2 }));
        // Growing a held session counts its new size, not old + new.
        guard.reserve(hog, 2, 60, now).unwrap();
        assert_eq!(
            guard.reserve(hog, 1, 41, now),
            Err(Refusal::Tokens { needed: 101, limit: 100 })
        );
        assert_eq!(
            guard.reserve(hog, 1, 101, now),
            Err(Refusal::Tokens { needed: 101, limit: 100 })
        );
        // Another peer is untouched by the first one's use.
        guard.reserve(other, 1, 100, now).unwrap();
        guard.release(&hog, 1);
        guard.reserve(hog, 3, 40, now).unwrap();
    }

    #[test]
    fn idle_sessions_expire_and_stop_counting() {
        let peer = PeerId::random();
        let guard = guard(1, 100);
        let start = Instant::now();
        guard.reserve(peer, 1, 10, start).unwrap();
        assert!(guard.reserve(peer, 2, 10, start).is_err());
        let later = start + Duration::from_secs(61);
        guard.reserve(peer, 2, 10, later).unwrap();
        assert_eq!(guard.expire(later), vec![1]);
        assert!(guard.expire(later).is_empty());
    }

    #[test]
    fn steps_beyond_the_queue_bound_are_shed() {
        let guard = guard(1, 1);
        let (a, b) = (guard.step_slot().unwrap(), guard.step_slot().unwrap());
        assert_eq!(guard.step_slot().unwrap_err(), Refusal::Busy(2));
        drop(a);
        assert!(guard.step_slot().is_ok());
        drop(b);
    }
}

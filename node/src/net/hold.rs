//! Requests held while a peer's relayed connections drain. libp2p's request-response picks
//! among a peer's connections in turn, so once a hole-punched direct connection exists, new
//! requests would still take the relay half the time until the relayed connection closes;
//! and it can only close with nothing in flight. Under steady load something always is, so
//! new requests to the peer wait (briefly) for the requests in flight to be answered and
//! the relayed connections to close, then go out on the direct one.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use libp2p::swarm::ConnectionId;

/// Longest new requests wait for the requests in flight to drain. Past it they are sent on
/// whatever connections the peer has, and that peer's requests are not held again until its
/// next direct connection or close: a long answer on the relay must not stall every request
/// after it.
pub const MOST_HELD: Duration = Duration::from_secs(2);
/// Longest requests wait once the relayed connections are closing (closing is local and
/// quick; this bounds the wait should a close never be reported).
pub const MOST_CLOSING: Duration = Duration::from_secs(10);

struct Hold<T> {
    since: Instant,
    items: Vec<T>,
    /// The relayed connections being closed: the requests wait for them all to close (one
    /// still listed could be picked, and a request sent on it would be cut off).
    closing: HashSet<ConnectionId>,
}

/// The held requests of every peer.
pub(super) struct Holds<T> {
    held: HashMap<PeerId, Hold<T>>,
    /// Peers whose requests in flight did not drain within [`MOST_HELD`].
    undrained: HashSet<PeerId>,
}

impl<T> Default for Holds<T> {
    fn default() -> Self {
        Self { held: HashMap::new(), undrained: HashSet::new() }
    }
}

impl<T> Holds<T> {
    fn entry(&mut self, peer: PeerId, now: Instant) -> &mut Hold<T> {
        self.held.entry(peer).or_insert_with(|| Hold {
            since: now,
            items: Vec::new(),
            closing: HashSet::new(),
        })
    }

    /// Holds `item` for `peer` (whose relayed connections are to be let go) unless that
    /// peer's requests did not drain in time before and nothing is closing; gives it back
    /// when not held.
    pub fn hold(&mut self, peer: PeerId, item: T, now: Instant) -> Option<T> {
        if self.undrained.contains(&peer) && !self.is_closing(&peer) {
            return Some(item);
        }
        self.entry(peer, now).items.push(item);
        None
    }

    /// Whether some of `peer`'s relayed connections are being closed.
    pub fn is_closing(&self, peer: &PeerId) -> bool {
        self.held.get(peer).is_some_and(|h| !h.closing.is_empty())
    }

    /// `connections` of `peer` are being closed: its requests wait for them, held or not
    /// before.
    pub fn closing(&mut self, peer: PeerId, connections: Vec<ConnectionId>, now: Instant) {
        self.undrained.remove(&peer);
        self.entry(peer, now).closing.extend(connections);
    }

    /// `connection` of `peer` closed.
    pub fn closed(&mut self, peer: &PeerId, connection: ConnectionId) {
        if let Some(hold) = self.held.get_mut(peer) {
            hold.closing.remove(&connection);
        }
    }

    /// The requests held for `peer`, to send now.
    pub fn release(&mut self, peer: &PeerId) -> Vec<T> {
        self.held.remove(peer).map(|h| h.items).unwrap_or_default()
    }

    /// The requests held too long at `now`, by peer, to send on any connection; a peer whose
    /// requests in flight did not drain is not held for again (see [`Holds::direct_again`]).
    pub fn overdue(&mut self, now: Instant) -> Vec<(PeerId, Vec<T>)> {
        let late = |h: &Hold<T>| {
            let waited = now.saturating_duration_since(h.since);
            waited >= if h.closing.is_empty() { MOST_HELD } else { MOST_CLOSING }
        };
        let peers: Vec<PeerId> =
            self.held.iter().filter(|(_, h)| late(h)).map(|(p, _)| *p).collect();
        peers
            .into_iter()
            .map(|peer| {
                let hold = self.held.remove(&peer).expect("listed");
                if hold.closing.is_empty() && !hold.items.is_empty() {
                    self.undrained.insert(peer);
                }
                (peer, hold.items)
            })
            .collect()
    }

    /// A new direct connection to `peer` (or none left): its requests may be held again.
    pub fn direct_again(&mut self, peer: &PeerId) {
        self.undrained.remove(peer);
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(id: usize) -> ConnectionId {
        ConnectionId::new_unchecked(id)
    }

    #[test]
    fn held_requests_wait_for_every_close() {
        let (mut holds, peer, now) = (Holds::default(), PeerId::random(), Instant::now());
        assert_eq!(holds.hold(peer, 1, now), None);
        assert_eq!(holds.hold(peer, 2, now), None);
        assert!(!holds.is_closing(&peer));
        holds.closing(peer, vec![connection(1), connection(2)], now);
        assert_eq!(holds.hold(peer, 3, now), None, "held while closing");
        assert!(holds.overdue(now + MOST_HELD).is_empty(), "closing: released on the close");
        holds.closed(&peer, connection(1));
        assert!(holds.is_closing(&peer), "one still closing");
        holds.closed(&peer, connection(2));
        assert!(!holds.is_closing(&peer));
        assert_eq!(holds.release(&peer), [1, 2, 3]);
        assert!(holds.is_empty());
    }

    #[test]
    fn requests_that_do_not_drain_are_released_and_not_held_again() {
        let (mut holds, peer, now) = (Holds::default(), PeerId::random(), Instant::now());
        let other = PeerId::random();
        assert_eq!(holds.hold(peer, 1, now), None);
        assert_eq!(holds.hold(other, 7, now + MOST_HELD / 2), None);
        assert!(holds.overdue(now + MOST_HELD / 2).is_empty());
        assert_eq!(holds.overdue(now + MOST_HELD), vec![(peer, vec![1])]);
        assert_eq!(holds.hold(peer, 2, now + MOST_HELD), Some(2), "not held again");
        holds.direct_again(&peer);
        assert_eq!(
            holds.hold(peer, 3, now + MOST_HELD),
            None,
            "held again after a new direct connection"
        );
        assert_eq!(holds.overdue(now + MOST_HELD * 3 / 2), vec![(other, vec![7])]);
    }

    #[test]
    fn a_close_holds_requests_even_for_a_peer_that_did_not_drain() {
        let (mut holds, peer, now) = (Holds::default(), PeerId::random(), Instant::now());
        holds.hold(peer, 1, now);
        assert_eq!(holds.overdue(now + MOST_HELD).len(), 1);
        assert_eq!(holds.hold(peer, 2, now + MOST_HELD), Some(2));
        // Idle at last: the relayed connection is closed; what comes next waits for it.
        holds.closing(peer, vec![connection(1)], now + MOST_HELD);
        assert_eq!(holds.hold(peer, 3, now + MOST_HELD), None);
        holds.closed(&peer, connection(1));
        assert_eq!(holds.release(&peer), [3]);
    }

    #[test]
    fn a_close_never_reported_still_releases() {
        let (mut holds, peer, now) = (Holds::default(), PeerId::random(), Instant::now());
        holds.hold(peer, 1, now);
        holds.closing(peer, vec![connection(1)], now);
        assert_eq!(holds.overdue(now + MOST_CLOSING), vec![(peer, vec![1])]);
        assert_eq!(holds.hold(peer, 2, now + MOST_CLOSING), None, "a closing hold gave up nothing");
    }
}

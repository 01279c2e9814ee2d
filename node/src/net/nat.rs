//! Reachability behind NAT (`wire.md`, "Addresses and relays"): AutoNAT tells a peer whether
//! others can dial it; a peer they cannot reserves a slot on a circuit relay (v2) and is
//! reached through it; DCUtR then punches a hole so that the two ends go direct; and a public
//! peer may run the relay service, for registered nodes only.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId, autonat, relay};
use serde::Serialize;
use tokio::sync::watch;

/// Relays a peer behind NAT keeps a reservation on at once: one spare, so that losing a relay
/// does not leave it unreachable while it reserves on another.
pub const RESERVATIONS: usize = 2;

/// The peers a relay serves: registered nodes, kept current by whoever reads the registry.
/// Nobody else may reserve, so a relay reaches the swarm's nodes only and is no free proxy.
#[derive(Debug, Clone, Default)]
pub struct RegisteredPeers(Arc<RwLock<HashSet<PeerId>>>);

impl RegisteredPeers {
    /// Replaces the set.
    pub fn set(&self, peers: HashSet<PeerId>) {
        *self.0.write().expect("registered peers") = peers;
    }

    pub fn contains(&self, peer: &PeerId) -> bool {
        self.0.read().expect("registered peers").contains(peer)
    }
}

/// What a relay lets through. libp2p's defaults (2 minutes and 128 KiB a circuit) suit a
/// hole-punching handshake, not inference: a decode stream runs for minutes and moves
/// megabytes.
#[derive(Debug, Clone)]
pub struct RelayLimits {
    /// Reservations held at once, all peers together.
    pub reservations: usize,
    /// Circuits open at once, all peers together.
    pub circuits: usize,
    /// Circuits open at once from or to one peer.
    pub circuits_per_peer: usize,
    /// How long one circuit may stay open.
    pub circuit_duration: Duration,
    /// Bytes one circuit may carry (each direction).
    pub circuit_bytes: u64,
    /// New circuits one source peer may open per minute.
    pub circuits_per_minute: u32,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            reservations: 256,
            circuits: 512,
            circuits_per_peer: 32,
            circuit_duration: Duration::from_secs(3600),
            circuit_bytes: 4 << 30,
            circuits_per_minute: 120,
        }
    }
}

/// The relay service a peer offers: to whom, within which limits.
#[derive(Debug, Clone)]
pub struct RelayService {
    pub registered: RegisteredPeers,
    pub limits: RelayLimits,
}

/// Whether a reservation may be made: only by a registered node.
struct RegisteredOnly(RegisteredPeers);

impl relay::RateLimiter for RegisteredOnly {
    fn try_next(&mut self, peer: PeerId, _addr: &Multiaddr, _now: Instant) -> bool {
        self.0.contains(&peer)
    }
}

/// The relay behaviour's configuration for `service`.
pub(super) fn relay_config(service: &RelayService) -> relay::Config {
    let limits = &service.limits;
    let per_minute = NonZeroU32::new(limits.circuits_per_minute.max(1)).expect("at least 1");
    let mut config = relay::Config {
        max_reservations: limits.reservations,
        max_reservations_per_peer: 4,
        reservation_duration: Duration::from_secs(3600),
        reservation_rate_limiters: vec![Box::new(RegisteredOnly(service.registered.clone()))],
        max_circuits: limits.circuits,
        max_circuits_per_peer: limits.circuits_per_peer,
        max_circuit_duration: limits.circuit_duration,
        max_circuit_bytes: limits.circuit_bytes,
        circuit_src_rate_limiters: Vec::new(),
    };
    config = config.circuit_src_per_peer(per_minute, Duration::from_secs(60));
    config
}

/// AutoNAT as a client (asking connected peers to dial it back) and a server (dialing others
/// back). Private addresses count: a swarm on one LAN, or tests in network namespaces, use
/// them, and a dial-back to an address nobody routes simply fails.
pub(super) fn autonat_config() -> autonat::v1::Config {
    autonat::v1::Config {
        boot_delay: Duration::from_secs(2),
        retry_interval: Duration::from_secs(10),
        refresh_interval: Duration::from_secs(60),
        throttle_server_period: Duration::from_secs(1),
        confidence_max: 1,
        only_global_ips: false,
        timeout: Duration::from_secs(10),
        ..Default::default()
    }
}

/// How a peer can be reached, as it knows so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// No probe has answered yet.
    #[default]
    Unknown,
    /// Others dialed it back at its own addresses.
    Public,
    /// Others could not: it needs a relay.
    Private,
}

/// This peer's reachability: what AutoNAT found, and its addresses through relays.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reachability {
    pub status: Status,
    /// `/…/p2p/RELAY/p2p-circuit/p2p/SELF`, one per reservation held.
    pub relayed: Vec<Multiaddr>,
}

/// How this peer is connected to another: directly, or only through a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Path {
    Direct,
    Relayed,
}

/// The connections to each peer and whether each runs through a relay.
#[derive(Debug, Default)]
pub struct Paths(Mutex<HashMap<PeerId, HashMap<ConnectionId, bool>>>);

impl Paths {
    /// Direct when any connection to `peer` is, relayed when all are, `None` when none is open.
    pub fn get(&self, peer: &PeerId) -> Option<Path> {
        let paths = self.0.lock().expect("paths");
        let connections = paths.get(peer).filter(|c| !c.is_empty())?;
        Some(if connections.values().all(|relayed| *relayed) {
            Path::Relayed
        } else {
            Path::Direct
        })
    }

    /// Every connected peer's path.
    pub fn all(&self) -> Vec<(PeerId, Path)> {
        let peers: Vec<PeerId> = self.0.lock().expect("paths").keys().copied().collect();
        peers.into_iter().filter_map(|p| Some((p, self.get(&p)?))).collect()
    }

    pub(super) fn opened(&self, peer: PeerId, connection: ConnectionId, relayed: bool) {
        self.0.lock().expect("paths").entry(peer).or_default().insert(connection, relayed);
    }

    pub(super) fn closed(&self, peer: PeerId, connection: ConnectionId) {
        let mut paths = self.0.lock().expect("paths");
        if let Some(connections) = paths.get_mut(&peer) {
            connections.remove(&connection);
            if connections.is_empty() {
                paths.remove(&peer);
            }
        }
    }

    /// The relayed connections to `peer`, once a direct one exists: they can be let go.
    pub(super) fn superseded(&self, peer: &PeerId) -> Vec<ConnectionId> {
        let paths = self.0.lock().expect("paths");
        let Some(connections) = paths.get(peer) else { return Vec::new() };
        if connections.values().all(|relayed| *relayed) {
            return Vec::new();
        }
        connections.iter().filter(|(_, relayed)| **relayed).map(|(id, _)| *id).collect()
    }
}

/// A relay's address as a reservation target: `…/p2p/RELAY/p2p-circuit`.
pub fn circuit_via(relay: &Multiaddr) -> Option<Multiaddr> {
    super::peer_of(relay)?;
    Some(relay.clone().with(Protocol::P2pCircuit))
}

/// Whether `addr` runs through a relay.
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// The reservations of a peer behind NAT: which relays it uses, and what it tells the node.
pub(super) struct Reservations {
    relays: Vec<Multiaddr>,
    /// Relays tried in turn: the next reservation goes to `relays[next % len]`.
    next: usize,
    /// Reserve without waiting for AutoNAT (`--reachability private`).
    pub(super) forced: bool,
    /// Relayed listen addresses held (without the trailing `/p2p/SELF`).
    held: Vec<Multiaddr>,
    /// Reservations asked for and not yet answered.
    pending: usize,
    local: PeerId,
    pub(super) state: watch::Sender<Reachability>,
}

impl Reservations {
    pub(super) fn new(relays: Vec<Multiaddr>, forced: bool, local: PeerId) -> Self {
        let status = if forced { Status::Private } else { Status::Unknown };
        let (state, _) = watch::channel(Reachability { status, relayed: Vec::new() });
        Self { relays, next: 0, forced, held: Vec::new(), pending: 0, local, state }
    }

    /// Whether more reservations are wanted now.
    pub(super) fn wanted(&self) -> bool {
        let private = self.state.borrow().status == Status::Private;
        private && !self.relays.is_empty() && self.held.len() + self.pending < RESERVATIONS
    }

    /// The next relay circuit to listen on.
    pub(super) fn next_target(&mut self) -> Option<Multiaddr> {
        let tries = self.relays.len();
        for _ in 0..tries {
            let relay = &self.relays[self.next % self.relays.len()];
            self.next += 1;
            let taken = self.held.iter().any(|h| h.to_string().starts_with(&relay.to_string()));
            if !taken && let Some(circuit) = circuit_via(relay) {
                self.pending += 1;
                return Some(circuit);
            }
        }
        None
    }

    /// AutoNAT's verdict; a forced private status stays.
    pub(super) fn on_status(&mut self, status: Status) {
        if !self.forced {
            self.state.send_modify(|r| r.status = status);
        }
    }

    /// A listen address was added: a relayed one is a reservation held.
    pub(super) fn on_listening(&mut self, addr: &Multiaddr) {
        if !is_relayed(addr) || self.held.contains(addr) {
            return;
        }
        self.pending = self.pending.saturating_sub(1);
        self.held.push(addr.clone());
        self.publish();
    }

    /// A relayed listener closed or failed to start: the reservation is gone.
    pub(super) fn on_lost(&mut self, addrs: &[Multiaddr], failed_to_start: bool) {
        if failed_to_start {
            self.pending = self.pending.saturating_sub(1);
        }
        let before = self.held.len();
        self.held.retain(|h| !addrs.contains(h));
        if self.held.len() != before {
            self.publish();
        }
    }

    fn publish(&self) {
        let local = self.local;
        let relayed = self.held.iter().map(|a| a.clone().with(Protocol::P2p(local))).collect();
        self.state.send_modify(|r| r.relayed = relayed);
    }
}

#[cfg(test)]
mod tests {
    use libp2p::relay::RateLimiter;

    use super::*;

    fn relay(port: u16) -> Multiaddr {
        let peer = PeerId::random();
        format!("/ip4/10.77.0.1/tcp/{port}/p2p/{peer}").parse().unwrap()
    }

    #[test]
    fn only_registered_peers_may_reserve() {
        let registered = RegisteredPeers::default();
        let (node, stranger) = (PeerId::random(), PeerId::random());
        registered.set(HashSet::from([node]));
        let mut limiter = RegisteredOnly(registered.clone());
        let addr: Multiaddr = "/ip4/10.77.0.11/tcp/4001".parse().unwrap();
        assert!(limiter.try_next(node, &addr, Instant::now()));
        assert!(!limiter.try_next(stranger, &addr, Instant::now()));
        registered.set(HashSet::new());
        assert!(!limiter.try_next(node, &addr, Instant::now()), "deregistered since");
    }

    #[test]
    fn a_private_peer_reserves_on_two_relays_and_publishes_its_relayed_addresses() {
        let local = PeerId::random();
        let (a, b, c) = (relay(4001), relay(4002), relay(4003));
        let mut reservations =
            Reservations::new(vec![a.clone(), b.clone(), c.clone()], false, local);
        assert!(!reservations.wanted(), "no reservation before AutoNAT says private");
        reservations.on_status(Status::Public);
        assert!(!reservations.wanted());
        reservations.on_status(Status::Private);
        let first = reservations.next_target().unwrap();
        let second = reservations.next_target().unwrap();
        assert_eq!(
            (first.clone(), second.clone()),
            (circuit_via(&a).unwrap(), circuit_via(&b).unwrap())
        );
        assert!(!reservations.wanted(), "two asked for");

        let watch = reservations.state.subscribe();
        reservations.on_listening(&first);
        assert_eq!(watch.borrow().relayed, vec![first.clone().with(Protocol::P2p(local))]);
        // The first relay goes away: its address is withdrawn and a third relay is wanted.
        reservations.on_listening(&second);
        reservations.on_lost(std::slice::from_ref(&first), false);
        assert_eq!(watch.borrow().relayed, vec![second.clone().with(Protocol::P2p(local))]);
        assert!(reservations.wanted());
        assert_eq!(reservations.next_target().unwrap(), circuit_via(&c).unwrap());
    }

    #[test]
    fn a_forced_private_peer_ignores_autonat() {
        let mut reservations = Reservations::new(vec![relay(4001)], true, PeerId::random());
        reservations.on_status(Status::Public);
        assert_eq!(reservations.state.borrow().status, Status::Private);
        assert!(reservations.wanted());
    }

    #[test]
    fn paths_are_direct_once_any_connection_is() {
        let paths = Paths::default();
        let peer = PeerId::random();
        let (relayed, direct) = (ConnectionId::new_unchecked(1), ConnectionId::new_unchecked(2));
        assert_eq!(paths.get(&peer), None);
        paths.opened(peer, relayed, true);
        assert_eq!(paths.get(&peer), Some(Path::Relayed));
        assert!(paths.superseded(&peer).is_empty());
        paths.opened(peer, direct, false);
        assert_eq!(paths.get(&peer), Some(Path::Direct));
        assert_eq!(paths.superseded(&peer), vec![relayed]);
        paths.closed(peer, relayed);
        paths.closed(peer, direct);
        assert_eq!(paths.get(&peer), None);
    }
}

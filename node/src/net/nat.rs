//! Reachability behind NAT (`wire.md`, "Addresses and relays"): AutoNAT tells a peer whether
//! others can dial it; a peer they cannot reserves a slot on a circuit relay (v2) and is
//! reached through it; DCUtR then punches a hole so that the two ends go direct; and a public
//! peer may run the relay service, for registered nodes only.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use libp2p::core::transport::ListenerId;
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
    let config = relay::Config {
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
    // Per source address too: peer ids cost nothing, addresses do.
    config
        .circuit_src_per_peer(per_minute, Duration::from_secs(60))
        .circuit_src_per_ip(per_minute, Duration::from_secs(60))
}

/// How long one connection attempt may take (the transport's timeout, set in `build_swarm`).
/// An AutoNAT dial-back to a peer behind a NAT that drops unasked packets, as home routers
/// do, fails only when it runs out.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Addresses an AutoNAT server dials back for one probe, one after another.
const DIAL_BACKS: usize = 4;

/// AutoNAT as a server (dialing others back) and, when `probe`, as a client asking connected
/// peers to dial it back: only a peer that would act on the verdict (one with relays to
/// reserve on, or a relay without a known address) probes, since every dial-back costs the
/// server a connection. Private addresses count: a swarm on one LAN, or tests in network
/// namespaces, use them, and a dial-back to an address nobody routes simply fails.
pub(super) fn autonat_config(probe: bool) -> autonat::v1::Config {
    autonat::v1::Config {
        boot_delay: Duration::from_secs(2),
        retry_interval: Duration::from_secs(5),
        refresh_interval: Duration::from_secs(60),
        throttle_server_period: Duration::from_secs(1),
        // From no verdict, the first answer decides; a verdict held flips only after 4
        // contrary answers, so one odd dial-back does not move the node's registration.
        confidence_max: 3,
        only_global_ips: false,
        use_connected: probe,
        // A probe's request must outlive the server's dial-backs, on both ends (the server's
        // side of the stream times out too): a NAT that drops a dial-back fails it only at
        // DIAL_TIMEOUT, the addresses are dialed in turn, and the answer (DialError, the one
        // that says "private") is lost with a stream timed out first. With a request timeout
        // no longer than one dial, a peer behind NAT could go without a verdict, so without
        // a relay reservation or a registered address, and silently.
        max_peer_addresses: DIAL_BACKS,
        timeout: DIAL_TIMEOUT * (DIAL_BACKS as u32 + 1),
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
    /// While public: the address AutoNAT saw others dial it at.
    pub public: Option<Multiaddr>,
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
pub struct Paths(Mutex<HashMap<PeerId, HashMap<ConnectionId, Link>>>);

/// One connection, as [`Paths`] keeps it.
#[derive(Debug, Clone, Copy)]
struct Link {
    relayed: bool,
    /// This peer dialed it: only the dialer lets a relayed connection go.
    dialed: bool,
}

impl Paths {
    /// Direct when any connection to `peer` is, relayed when all are, `None` when none is open.
    pub fn get(&self, peer: &PeerId) -> Option<Path> {
        let paths = self.0.lock().expect("paths");
        let connections = paths.get(peer).filter(|c| !c.is_empty())?;
        Some(if connections.values().all(|link| link.relayed) {
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

    pub(super) fn opened(
        &self,
        peer: PeerId,
        connection: ConnectionId,
        relayed: bool,
        dialed: bool,
    ) {
        let link = Link { relayed, dialed };
        self.0.lock().expect("paths").entry(peer).or_default().insert(connection, link);
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

    /// Whether `peer` has a direct connection and relayed ones too: requests should wait for
    /// the relayed ones to go (`hold`).
    pub(super) fn draining(&self, peer: &PeerId) -> bool {
        let paths = self.0.lock().expect("paths");
        paths.get(peer).is_some_and(|c| {
            c.values().any(|link| link.relayed) && c.values().any(|link| !link.relayed)
        })
    }

    /// Relayed connections open, all peers together.
    pub fn relayed_connections(&self) -> usize {
        let paths = self.0.lock().expect("paths");
        paths.values().flat_map(|c| c.values()).filter(|link| link.relayed).count()
    }

    /// The relayed connections to `peer` that this peer dialed, once a direct one exists:
    /// they can be let go (the other side lets go of those it dialed).
    pub(super) fn superseded(&self, peer: &PeerId) -> Vec<ConnectionId> {
        let paths = self.0.lock().expect("paths");
        let Some(connections) = paths.get(peer) else { return Vec::new() };
        if connections.values().all(|link| link.relayed) {
            return Vec::new();
        }
        connections.iter().filter(|(_, l)| l.relayed && l.dialed).map(|(id, _)| *id).collect()
    }
}

/// The first wait before asking a relay that refused (or could not be reached) again.
pub const RESERVE_RETRY_FIRST: Duration = Duration::from_secs(5);
/// The longest wait between asking a relay that keeps refusing.
pub const RESERVE_RETRY_MOST: Duration = Duration::from_secs(300);
/// How long a reservation must have been held for its loss not to count as a failure.
pub const RESERVE_STEADY: Duration = Duration::from_secs(60);

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
    /// Relays tried in turn: the next reservation goes to the next relay not in use.
    next: usize,
    /// Reserve without waiting for AutoNAT (`--reachability private`).
    pub(super) forced: bool,
    /// Each relayed listener: the relay it reserves on, and its address once it holds one.
    listeners: HashMap<ListenerId, (Multiaddr, Option<Multiaddr>)>,
    /// Relays that refused a reservation or could not be reached, by peer id: failures in a
    /// row, and when to ask again (backing off, so a relay that refuses is not asked every
    /// few seconds forever).
    failed: HashMap<PeerId, (u32, Instant)>,
    /// When each held reservation was granted.
    granted: HashMap<ListenerId, Instant>,
    local: PeerId,
    pub(super) state: watch::Sender<Reachability>,
}

impl Reservations {
    pub(super) fn new(relays: Vec<Multiaddr>, forced: bool, local: PeerId) -> Self {
        let status = if forced { Status::Private } else { Status::Unknown };
        let (state, _) = watch::channel(Reachability { status, ..Reachability::default() });
        // One reservation per relay: the same relay under two addresses would have its two
        // reservations displace each other.
        let mut seen = HashSet::new();
        let relays = relays
            .into_iter()
            .filter(|r| super::peer_of(r).is_some_and(|p| seen.insert(p)))
            .collect();
        Self {
            relays,
            next: 0,
            forced,
            listeners: HashMap::new(),
            failed: HashMap::new(),
            granted: HashMap::new(),
            local,
            state,
        }
    }

    /// The next relay to reserve a slot on, while more reservations are wanted (this peer is
    /// not reachable, and holds or awaits fewer than [`RESERVATIONS`]) and one is not backing
    /// off at `now`; its circuit address.
    pub(super) fn next_target(&mut self, now: Instant) -> Option<(Multiaddr, Multiaddr)> {
        let private = self.state.borrow().status == Status::Private;
        if !private || self.listeners.len() >= RESERVATIONS {
            return None;
        }
        for _ in 0..self.relays.len() {
            let relay = self.relays[self.next % self.relays.len()].clone();
            self.next += 1;
            let peer = super::peer_of(&relay);
            let in_use = self.listeners.values().any(|(r, _)| super::peer_of(r) == peer);
            let waiting =
                peer.and_then(|p| self.failed.get(&p)).is_some_and(|(_, again)| *again > now);
            if !in_use
                && !waiting
                && let Some(circuit) = circuit_via(&relay)
            {
                return Some((relay, circuit));
            }
        }
        None
    }

    /// Whether this peer waits on AutoNAT before it may reserve: it has relays, is not forced
    /// private, and no probe has answered yet.
    pub(super) fn awaiting_verdict(&self) -> bool {
        !self.forced && !self.relays.is_empty() && self.state.borrow().status == Status::Unknown
    }

    /// A reservation asked of `relay` through `listener`.
    pub(super) fn asked(&mut self, listener: ListenerId, relay: Multiaddr) {
        self.listeners.insert(listener, (relay, None));
    }

    /// AutoNAT's verdict, with the address others dialed when public; a forced private
    /// status stays.
    pub(super) fn on_status(&mut self, status: Status, public: Option<Multiaddr>) {
        if !self.forced {
            self.state.send_modify(|r| {
                r.status = status;
                r.public = public;
            });
        }
    }

    /// `listener` listens at `now`: for a relayed listener, a reservation held. Its address
    /// is the one it was asked at (`--relay`'s, which gateways can dial), whatever the relay
    /// reports.
    pub(super) fn on_listening(&mut self, listener: ListenerId, now: Instant) {
        if let Some((relay, held)) = self.listeners.get_mut(&listener)
            && held.is_none()
        {
            *held = circuit_via(relay);
            self.granted.insert(listener, now);
            self.publish();
        }
    }

    /// `listener` closed (or never started) at `now`. A reservation held a while
    /// ([`RESERVE_STEADY`]) is asked for again at once. One never granted (refused, or the
    /// relay unreachable), or lost soon after it was, is asked for again after a wait that
    /// doubles with each such failure in a row, up to [`RESERVE_RETRY_MOST`]: a relay that
    /// refuses, or grants and drops, is not asked at network speed.
    pub(super) fn on_closed(&mut self, listener: ListenerId, now: Instant) {
        let Some((relay, held)) = self.listeners.remove(&listener) else { return };
        let granted = self.granted.remove(&listener);
        if held.is_some() {
            self.publish();
        }
        let Some(peer) = super::peer_of(&relay) else { return };
        if granted.is_some_and(|at| now.saturating_duration_since(at) >= RESERVE_STEADY) {
            self.failed.remove(&peer);
            return;
        }
        let (failures, _) = self.failed.get(&peer).copied().unwrap_or((0, now));
        let wait =
            RESERVE_RETRY_FIRST.saturating_mul(1 << failures.min(16)).min(RESERVE_RETRY_MOST);
        self.failed.insert(peer, (failures + 1, now + wait));
    }

    fn publish(&self) {
        let local = self.local;
        let mut relayed: Vec<Multiaddr> = self
            .listeners
            .values()
            .filter_map(|(_, held)| held.clone())
            .map(|addr| addr.with(Protocol::P2p(local)))
            .collect();
        // A stable order: the node registers this list, and the same set must compare equal.
        relayed.sort_by_key(|a| a.to_string());
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
    fn a_probe_outlives_the_dial_backs_it_asks_for() {
        // Else dial-backs dropped by a NAT are answered after the request timed out.
        let config = autonat_config(true);
        assert!(config.timeout > DIAL_TIMEOUT * config.max_peer_addresses as u32, "{config:?}");
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
        let now = Instant::now();
        let local = PeerId::random();
        let (a, b, c) = (relay(4001), relay(4002), relay(4003));
        let mut reservations =
            Reservations::new(vec![a.clone(), b.clone(), c.clone()], false, local);
        assert_eq!(reservations.next_target(now), None, "nothing before AutoNAT says private");
        reservations.on_status(Status::Public, Some("/ip4/10.77.0.11/tcp/4001".parse().unwrap()));
        assert_eq!(reservations.next_target(now), None);
        reservations.on_status(Status::Private, None);
        let ids = [ListenerId::next(), ListenerId::next()];
        assert_eq!(reservations.next_target(now), Some((a.clone(), circuit_via(&a).unwrap())));
        reservations.asked(ids[0], a.clone());
        assert_eq!(reservations.next_target(now), Some((b.clone(), circuit_via(&b).unwrap())));
        reservations.asked(ids[1], b.clone());
        assert_eq!(reservations.next_target(now), None, "two asked for, none held yet");

        let watch = reservations.state.subscribe();
        let through = |relay: &Multiaddr| circuit_via(relay).unwrap().with(Protocol::P2p(local));
        reservations.on_listening(ids[0], now);
        assert_eq!(watch.borrow().relayed, vec![through(&a)]);
        reservations.on_listening(ids[1], now);
        let mut both = vec![through(&a), through(&b)];
        both.sort_by_key(|a| a.to_string());
        assert_eq!(watch.borrow().relayed, both, "sorted, so the same set compares equal");
        // The first relay goes away: its address is withdrawn and the third relay is next.
        reservations.on_closed(ids[0], now);
        assert_eq!(watch.borrow().relayed, vec![through(&b)]);
        assert_eq!(reservations.next_target(now), Some((c.clone(), circuit_via(&c).unwrap())));
    }

    #[test]
    fn a_relay_named_twice_gets_one_reservation() {
        let now = Instant::now();
        let a = relay(4001);
        let peer = super::super::peer_of(&a).unwrap();
        let same: Multiaddr = format!("/ip4/10.77.0.9/tcp/4001/p2p/{peer}").parse().unwrap();
        let mut reservations = Reservations::new(vec![a.clone(), same], true, PeerId::random());
        assert!(reservations.next_target(now).is_some());
        reservations.asked(ListenerId::next(), a);
        assert_eq!(reservations.next_target(now), None, "the same relay under another address");
    }

    #[test]
    fn one_relay_gets_one_reservation() {
        let now = Instant::now();
        let a = relay(4001);
        let mut reservations = Reservations::new(vec![a.clone()], true, PeerId::random());
        assert!(reservations.next_target(now).is_some());
        reservations.asked(ListenerId::next(), a);
        assert_eq!(reservations.next_target(now), None, "no second reservation on the same relay");
    }

    #[test]
    fn a_forced_private_peer_ignores_autonat() {
        let now = Instant::now();
        let mut reservations = Reservations::new(vec![relay(4001)], true, PeerId::random());
        reservations.on_status(Status::Public, None);
        assert_eq!(reservations.state.borrow().status, Status::Private);
        assert!(reservations.next_target(now).is_some());
    }

    #[test]
    fn a_relay_that_refuses_is_asked_again_later_and_later() {
        let a = relay(4001);
        let mut reservations = Reservations::new(vec![a.clone()], true, PeerId::random());
        let mut now = Instant::now();
        let mut waits = Vec::new();
        for _ in 0..8 {
            assert!(reservations.next_target(now).is_some(), "asked once the wait is over");
            let listener = ListenerId::next();
            reservations.asked(listener, a.clone());
            reservations.on_closed(listener, now); // refused
            let mut wait = Duration::ZERO;
            while reservations.next_target(now + wait).is_none() {
                wait += Duration::from_secs(1);
            }
            waits.push(wait.as_secs());
            now += wait;
        }
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 300, 300]);

        // Granted and soon lost: one more failure (300 s, the most).
        let listener = ListenerId::next();
        reservations.asked(listener, a.clone());
        reservations.on_listening(listener, now);
        reservations.on_closed(listener, now + Duration::from_secs(1));
        assert!(reservations.next_target(now + Duration::from_secs(290)).is_none());
        now += Duration::from_secs(301);
        // Held a while: the failures are forgotten, and the lost one is asked again at once.
        let listener = ListenerId::next();
        reservations.asked(listener, a.clone());
        reservations.on_listening(listener, now);
        now += RESERVE_STEADY;
        reservations.on_closed(listener, now);
        assert!(reservations.next_target(now).is_some());
        let listener = ListenerId::next();
        reservations.asked(listener, a);
        reservations.on_closed(listener, now);
        assert!(reservations.next_target(now + Duration::from_secs(4)).is_none());
        assert!(reservations.next_target(now + Duration::from_secs(5)).is_some(), "5 s again");
    }

    #[test]
    fn paths_are_direct_once_any_connection_is() {
        let paths = Paths::default();
        let peer = PeerId::random();
        let (relayed, direct) = (ConnectionId::new_unchecked(1), ConnectionId::new_unchecked(2));
        assert_eq!(paths.get(&peer), None);
        paths.opened(peer, relayed, true, true);
        assert_eq!(paths.get(&peer), Some(Path::Relayed));
        assert!(paths.superseded(&peer).is_empty());
        paths.opened(peer, direct, false, false);
        assert_eq!(paths.get(&peer), Some(Path::Direct));
        assert_eq!(paths.superseded(&peer), vec![relayed]);
        assert!(paths.draining(&peer));
        // A relayed connection the other side dialed is the other side's to let go; until it
        // does, requests wait all the same.
        let inbound = ConnectionId::new_unchecked(3);
        paths.opened(peer, inbound, true, false);
        assert_eq!(paths.superseded(&peer), vec![relayed]);
        assert_eq!(paths.relayed_connections(), 2);
        paths.closed(peer, relayed);
        assert!(paths.superseded(&peer).is_empty());
        assert!(paths.draining(&peer), "the inbound relayed connection is still open");
        paths.closed(peer, inbound);
        assert!(!paths.draining(&peer));
        paths.opened(peer, relayed, true, true);
        paths.closed(peer, relayed);
        paths.closed(peer, direct);
        assert_eq!(paths.get(&peer), None);
    }
}

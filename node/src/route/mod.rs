//! Route planning: the cheapest chain of peers that covers every block of a model.
//!
//! Block boundaries `0..=N` are the graph's vertices; a peer serving blocks `f..=l` offers an
//! edge from every boundary `b` in `f..=l` to every boundary `e` in `b+1..=l+1` (it can run any
//! contiguous part of its span). Dijkstra finds the cheapest path from 0 to N.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// A peer that can run part of the route, with what the gateway knows about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub peer: PeerId,
    pub first_block: u16,
    pub last_block: u16,
    /// Ping round trip (moving average), if measured.
    pub rtt_ms: Option<f64>,
    /// Announced milliseconds per decode step through its whole span.
    pub compute_ms: Option<f64>,
    /// Sessions it is serving.
    pub active_sessions: usize,
    /// KV-cache tokens it can still take.
    pub free_cache_tokens: Option<usize>,
    /// On-chain reputation in basis points (`Validation.reputationOf`; 5000 is neutral), if read.
    pub reputation_bps: Option<u32>,
    /// Registered price in wei for one token through its whole span, if known.
    pub price_wei_per_token: Option<f64>,
    /// Reached only through a relay (`wire.md`, "Addresses and relays").
    pub relayed: bool,
}

/// One hop of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hop {
    pub peer: PeerId,
    pub first_block: u16,
    pub last_block: u16,
}

/// Cost weights, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CostModel {
    /// Assumed RTT for a peer not yet pinged.
    pub unknown_rtt_ms: f64,
    /// Assumed compute per block for a peer that has not announced.
    pub unknown_compute_ms_per_block: f64,
    /// Added per hop, so contiguous blocks on one peer win over equal-cost splits.
    pub hop_penalty_ms: f64,
    /// Added per active session on the peer.
    pub session_penalty_ms: f64,
    /// Added when the peer announced no free KV-cache room for a new session.
    pub full_cache_penalty_ms: f64,
    /// Added in proportion to missing reputation: the whole of it for a peer at 0, half for
    /// a neutral (unscored) one, none at 10000. Enough to prefer a proven peer among
    /// comparable ones, not to send traffic across the world for it.
    pub distrust_penalty_ms: f64,
    /// Added for a peer reached only through a relay, beyond its measured RTT (which already
    /// includes the relay's detour): a relay's capacity is shared and its circuits are
    /// limited, so a direct peer of similar latency is preferred.
    pub relay_penalty_ms: f64,
    /// What one millisecond less per token is worth, in wei: a hop's price counts as
    /// `price / wei_per_ms` milliseconds, so the route is the cheapest, latency breaking ties
    /// among comparable prices.
    pub wei_per_ms: f64,
}

impl Default for CostModel {
    fn default() -> Self {
        Self {
            unknown_rtt_ms: 50.0,
            unknown_compute_ms_per_block: 10.0,
            hop_penalty_ms: 1.0,
            session_penalty_ms: 0.5,
            full_cache_penalty_ms: 1_000.0,
            distrust_penalty_ms: 20.0,
            relay_penalty_ms: 5.0,
            wei_per_ms: DEFAULT_WEI_PER_MS,
        }
    }
}

/// Wei one millisecond per token is worth by default: 0.0000001 BTT, so a price difference of
/// 0.000001 BTT per token outweighs 10 ms of latency.
pub const DEFAULT_WEI_PER_MS: f64 = 1e11;

/// The reputation of a node validators have not scored yet (`Validation.reputationOf`).
pub const NEUTRAL_REPUTATION_BPS: u32 = 5_000;

impl CostModel {
    /// The cost of running `blocks_used` of candidate `c`'s blocks for a session that needs
    /// `needed_tokens` of cache: the planner's edge weight.
    pub fn edge(&self, c: &Candidate, blocks_used: u16, needed_tokens: usize) -> f64 {
        let span = (c.last_block - c.first_block + 1) as f64;
        let compute = match c.compute_ms {
            Some(ms) => ms * blocks_used as f64 / span,
            None => self.unknown_compute_ms_per_block * blocks_used as f64,
        };
        let full = c.free_cache_tokens.is_some_and(|free| free < needed_tokens);
        let reputation = f64::from(c.reputation_bps.unwrap_or(NEUTRAL_REPUTATION_BPS).min(10_000));
        let price = c.price_wei_per_token.unwrap_or(0.0) * blocks_used as f64 / span;
        c.rtt_ms.unwrap_or(self.unknown_rtt_ms) / 2.0
            + compute
            + self.hop_penalty_ms
            + self.session_penalty_ms * c.active_sessions as f64
            + if full { self.full_cache_penalty_ms } else { 0.0 }
            + self.distrust_penalty_ms * (1.0 - reputation / 10_000.0)
            + if c.relayed { self.relay_penalty_ms } else { 0.0 }
            + price / self.wei_per_ms.max(f64::MIN_POSITIVE)
    }
}

#[derive(PartialEq)]
struct Frontier(f64, u16);
impl Eq for Frontier {}
impl Ord for Frontier {
    fn cmp(&self, other: &Self) -> Ordering {
        other.0.total_cmp(&self.0).then(other.1.cmp(&self.1))
    }
}
impl PartialOrd for Frontier {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The cheapest route from boundary `from` to boundary `to` (exclusive end: blocks
/// `from..to`) over candidates not in `banned`, or `None` when some block has no usable peer.
pub fn plan(
    candidates: &[Candidate],
    from: u16,
    to: u16,
    banned: &HashSet<PeerId>,
    cost: &CostModel,
    needed_tokens: usize,
) -> Option<Vec<Hop>> {
    let usable: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| !banned.contains(&c.peer) && c.first_block <= c.last_block)
        .collect();
    let mut best: HashMap<u16, (f64, Option<(u16, Hop)>)> = HashMap::from([(from, (0.0, None))]);
    let mut heap = BinaryHeap::from([Frontier(0.0, from)]);
    while let Some(Frontier(dist, at)) = heap.pop() {
        if at == to {
            break;
        }
        if best.get(&at).is_some_and(|(d, _)| *d < dist) {
            continue;
        }
        for c in usable.iter().filter(|c| c.first_block <= at && at <= c.last_block) {
            for end in at + 1..=(c.last_block + 1).min(to) {
                let next = dist + cost.edge(c, end - at, needed_tokens);
                if best.get(&end).is_none_or(|(d, _)| next < *d) {
                    let hop = Hop { peer: c.peer, first_block: at, last_block: end - 1 };
                    best.insert(end, (next, Some((at, hop))));
                    heap.push(Frontier(next, end));
                }
            }
        }
    }
    let mut hops = Vec::new();
    let mut at = to;
    while at != from {
        let (_, Some((prev, hop))) = best.get(&at)? else { return None };
        hops.push(*hop);
        at = *prev;
    }
    hops.reverse();
    Some(hops)
}

/// Blocks in `from..to` that no usable candidate (not banned, well-formed) serves: [`plan`]
/// finds a route exactly when there are none.
pub fn unserved(
    candidates: &[Candidate],
    from: u16,
    to: u16,
    banned: &HashSet<PeerId>,
) -> Vec<u16> {
    (from..to)
        .filter(|&block| {
            !candidates.iter().any(|c| {
                !banned.contains(&c.peer) && c.first_block <= block && block <= c.last_block
            })
        })
        .collect()
}

/// Peers that failed recently, banned with exponential backoff, and peers banned for good;
/// and, apart, peers speaking another protocol version, left out of routes but not banned.
#[derive(Debug, Default)]
pub struct Bans {
    entries: HashMap<PeerId, (Instant, u32)>,
    forbidden: HashSet<PeerId>,
    incompatible: HashMap<PeerId, Instant>,
}

impl Bans {
    const BASE: Duration = Duration::from_secs(2);
    const MAX_EXPONENT: u32 = 8;
    /// How long a peer speaking another protocol version is left out of routes before it is
    /// tried again (it may have upgraded).
    const INCOMPATIBLE_FOR: Duration = Duration::from_secs(600);

    /// Records a failure: the ban doubles with each consecutive one. Failures while the peer
    /// is banned already are the same outage seen by other concurrent sessions, not new
    /// strikes: one blip seen by many sessions must not ban a node for minutes.
    pub fn fail(&mut self, peer: PeerId) {
        let now = Instant::now();
        if self.entries.get(&peer).is_some_and(|(until, _)| *until > now) {
            return;
        }
        let strikes = self.entries.get(&peer).map_or(0, |(_, s)| (s + 1).min(Self::MAX_EXPONENT));
        self.entries.insert(peer, (now + Self::BASE * 2u32.pow(strikes), strikes));
    }

    /// Forgets failures after a success.
    pub fn succeed(&mut self, peer: &PeerId) {
        self.entries.remove(peer);
    }

    /// Bans a peer for the rest of this run: it answered with something no honest node
    /// sends (a malformed or unsigned answer), which no backoff would cure.
    pub fn forbid(&mut self, peer: PeerId) {
        self.forbidden.insert(peer);
    }

    /// Leaves a peer that speaks another protocol version out of routes for a while. Not a
    /// ban: it is not counted as one, and its failure count is untouched.
    pub fn incompatible(&mut self, peer: PeerId) {
        self.incompatible.insert(peer, Instant::now() + Self::INCOMPATIBLE_FOR);
    }

    /// Peers still banned now.
    pub fn banned(&self) -> HashSet<PeerId> {
        let now = Instant::now();
        let recent = self.entries.iter().filter(|(_, (until, _))| *until > now).map(|(p, _)| *p);
        recent.chain(self.forbidden.iter().copied()).collect()
    }

    /// Peers routes leave out now: the banned and those speaking another version.
    pub fn excluded(&self) -> HashSet<PeerId> {
        let now = Instant::now();
        let incompatible =
            self.incompatible.iter().filter(|(_, until)| **until > now).map(|(p, _)| *p);
        self.banned().into_iter().chain(incompatible).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> PeerId {
        libp2p::identity::Keypair::ed25519_from_bytes([n; 32]).unwrap().public().to_peer_id()
    }

    #[test]
    fn a_direct_peer_wins_over_an_equal_relayed_one() {
        let relayed = Candidate { relayed: true, ..cand(1, 0, 0, 10.0, 5.0) };
        let direct = cand(2, 0, 0, 10.0, 5.0);
        let cost = CostModel::default();
        let route = plan(&[relayed.clone(), direct], 0, 1, &HashSet::new(), &cost, 1).unwrap();
        assert_eq!(route[0].peer, peer(2));
        // Relayed and much faster still wins: the penalty is a preference, not a ban.
        let slow = cand(2, 0, 0, 40.0, 5.0);
        let route = plan(&[relayed, slow], 0, 1, &HashSet::new(), &cost, 1).unwrap();
        assert_eq!(route[0].peer, peer(1));
    }

    fn cand(n: u8, first: u16, last: u16, rtt: f64, compute: f64) -> Candidate {
        Candidate {
            peer: peer(n),
            first_block: first,
            last_block: last,
            rtt_ms: Some(rtt),
            compute_ms: Some(compute),
            active_sessions: 0,
            free_cache_tokens: None,
            reputation_bps: None,
            price_wei_per_token: None,
            relayed: false,
        }
    }

    #[test]
    fn picks_the_cheapest_cover_and_prefers_fewer_hops() {
        let cost = CostModel::default();
        // One peer covering everything vs three single-block peers of equal total cost.
        let all = cand(1, 0, 2, 2.0, 3.0);
        let singles = [cand(2, 0, 0, 0.0, 1.0), cand(3, 1, 1, 0.0, 1.0), cand(4, 2, 2, 0.0, 1.0)];
        let mut cands = vec![all.clone()];
        cands.extend(singles.clone());
        let route = plan(&cands, 0, 3, &HashSet::new(), &cost, 16).unwrap();
        assert_eq!(route, vec![Hop { peer: peer(1), first_block: 0, last_block: 2 }]);

        // A slow whole-model peer loses to fast single-block peers.
        let slow = cand(1, 0, 2, 200.0, 300.0);
        let route = plan(
            &[slow, singles[0].clone(), singles[1].clone(), singles[2].clone()],
            0,
            3,
            &HashSet::new(),
            &cost,
            16,
        )
        .unwrap();
        assert_eq!(
            route.iter().map(|h| h.peer).collect::<Vec<_>>(),
            vec![peer(2), peer(3), peer(4)]
        );
    }

    #[test]
    fn uses_part_of_a_span_and_avoids_banned_peers() {
        let cost = CostModel::default();
        let cands = [cand(1, 0, 1, 1.0, 2.0), cand(2, 1, 2, 1.0, 2.0), cand(3, 2, 2, 100.0, 100.0)];
        let route = plan(&cands, 0, 3, &HashSet::new(), &cost, 16).unwrap();
        let covered: Vec<(u16, u16)> =
            route.iter().map(|h| (h.first_block, h.last_block)).collect();
        assert_eq!(covered.first().unwrap().0, 0);
        assert_eq!(covered.last().unwrap().1, 2);
        assert!(covered.windows(2).all(|w| w[0].1 + 1 == w[1].0), "contiguous: {covered:?}");

        let banned = HashSet::from([peer(2)]);
        let route = plan(&cands, 0, 3, &banned, &cost, 16).unwrap();
        assert_eq!(route.iter().map(|h| h.peer).collect::<Vec<_>>(), vec![peer(1), peer(3)]);
        // Re-planning from a middle boundary only covers the rest.
        let tail = plan(&cands, 2, 3, &HashSet::new(), &cost, 16).unwrap();
        assert_eq!(tail.len(), 1);
        assert_eq!((tail[0].first_block, tail[0].last_block), (2, 2));
        // No peer for block 2 left: no route.
        assert!(plan(&cands, 0, 3, &HashSet::from([peer(2), peer(3)]), &cost, 16).is_none());
    }

    #[test]
    fn full_caches_are_avoided_and_bans_back_off() {
        let mut full = cand(1, 0, 0, 1.0, 1.0);
        full.free_cache_tokens = Some(4);
        let roomy = cand(2, 0, 0, 20.0, 20.0);
        let route = plan(&[full, roomy], 0, 1, &HashSet::new(), &CostModel::default(), 64).unwrap();
        assert_eq!(route[0].peer, peer(2));

        let mut bans = Bans::default();
        bans.fail(peer(1));
        assert!(bans.banned().contains(&peer(1)));
        // Concurrent sessions failing on the same outage add no strikes while it is banned.
        let until = bans.entries[&peer(1)];
        bans.fail(peer(1));
        bans.fail(peer(1));
        assert_eq!(bans.entries[&peer(1)], until);
        // A failure after the ban ran out doubles it.
        bans.entries.insert(peer(1), (Instant::now(), 0));
        bans.fail(peer(1));
        assert_eq!(bans.entries[&peer(1)].1, 1);
        bans.succeed(&peer(1));
        assert!(bans.banned().is_empty());
        // A forbidden peer stays banned, whatever succeeds afterwards.
        bans.forbid(peer(3));
        bans.succeed(&peer(3));
        assert_eq!(bans.banned(), HashSet::from([peer(3)]));
    }

    #[test]
    fn reputation_breaks_ties_but_not_distance() {
        let cost = CostModel::default();
        let (mut proven, mut convicted) = (cand(1, 0, 0, 10.0, 5.0), cand(2, 0, 0, 10.0, 5.0));
        proven.reputation_bps = Some(9_000);
        convicted.reputation_bps = Some(0);
        let unscored = cand(3, 0, 0, 10.0, 5.0);
        let pick =
            |cands: &[Candidate]| plan(cands, 0, 1, &HashSet::new(), &cost, 16).unwrap()[0].peer;
        assert_eq!(pick(&[convicted.clone(), proven.clone()]), peer(1));
        assert_eq!(pick(&[convicted.clone(), unscored.clone()]), peer(3));
        assert_eq!(pick(&[unscored, proven.clone()]), peer(1));
        // A proven peer 200 ms away loses to a neutral one next door.
        let far = Candidate { rtt_ms: Some(400.0), ..proven };
        assert_eq!(pick(&[far, cand(4, 0, 0, 10.0, 5.0)]), peer(4));
    }

    #[test]
    fn price_outweighs_small_latency_differences_not_large_ones() {
        let cost = CostModel::default();
        let priced = |n, rtt, wei: f64| Candidate {
            price_wei_per_token: Some(wei),
            ..cand(n, 0, 1, rtt, 5.0)
        };
        let pick =
            |cands: &[Candidate]| plan(cands, 0, 2, &HashSet::new(), &cost, 16).unwrap()[0].peer;
        // 0.000003 BTT a token cheaper is worth 30 ms: it beats a peer 10 ms closer...
        assert_eq!(pick(&[priced(1, 20.0, 5e12), priced(2, 40.0, 2e12)]), peer(2));
        // ...not one 100 ms closer.
        assert_eq!(pick(&[priced(1, 20.0, 5e12), priced(2, 220.0, 2e12)]), peer(1));
        // A hop using half a peer's span pays half its price.
        let half = cost.edge(&priced(3, 0.0, 4e12), 1, 16);
        let whole = cost.edge(&priced(3, 0.0, 4e12), 2, 16);
        assert!((whole - half - (2e12 / DEFAULT_WEI_PER_MS + 5.0 / 2.0)).abs() < 1e-9);
    }
}

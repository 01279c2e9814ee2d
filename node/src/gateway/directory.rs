use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use alloy::primitives::{Address, B256};
use libp2p::{Multiaddr, PeerId};

use crate::chain::{ChainError, Registry, ValidationClient};
use crate::net::nat::Path;
use crate::net::{Announcement, Network};
use crate::pay::NodeTerms;
use crate::pay::meter::Tariff;
use crate::route::Candidate;

/// Each routable peer's operator and price, as registered.
pub type TermsBook = Arc<Mutex<HashMap<PeerId, NodeTerms>>>;

/// The peers a gateway may route to: exactly the nodes registered on-chain as active for the
/// model (staked, not jailed) with at least the minimum reputation, with their reputation,
/// measured RTT and last announced load.
#[derive(Clone)]
pub struct Directory {
    registry: Registry,
    validation: ValidationClient,
    min_reputation_bps: u32,
    model_id: B256,
    num_blocks: u16,
    candidates: Arc<Mutex<Vec<Candidate>>>,
    terms: TermsBook,
    announcements: Arc<Mutex<HashMap<PeerId, Announcement>>>,
}

impl Directory {
    pub fn new(
        registry: Registry,
        validation: ValidationClient,
        model_id: B256,
        num_blocks: u16,
    ) -> Self {
        Self {
            registry,
            validation,
            min_reputation_bps: 0,
            model_id,
            num_blocks,
            candidates: Arc::default(),
            terms: Arc::default(),
            announcements: Arc::default(),
        }
    }

    /// Leaves out nodes whose on-chain reputation is below `bps` (a convicted node reads 0,
    /// an unscored one 5000).
    pub fn with_min_reputation(mut self, bps: u32) -> Self {
        self.min_reputation_bps = bps;
        self
    }

    /// The live candidate list the route planner reads.
    pub fn candidates(&self) -> Arc<Mutex<Vec<Candidate>>> {
        self.candidates.clone()
    }

    /// The live operator and price of every candidate, which the gateway pays by.
    pub fn terms(&self) -> TermsBook {
        self.terms.clone()
    }

    /// Records a node's announcement, if it is registered for the model (as of the last
    /// refresh): anyone can publish on the topic, and made-up peer ids must not grow the map.
    pub fn announce(&self, from: PeerId, announcement: Announcement) {
        if self.terms.lock().expect("terms").contains_key(&from) {
            self.announcements.lock().expect("announcements").insert(from, announcement);
        }
    }

    /// Re-reads the registry every `every` from now on, in a task of its own, so that nodes
    /// staked, jailed or re-scored after start-up are seen. A failed read is logged as
    /// `role` and retried at the next tick; the directory keeps its last view meanwhile.
    pub fn keep_fresh(&self, net: Network, every: std::time::Duration, role: &'static str) {
        let directory = self.clone();
        tokio::spawn(async move {
            let mut refresh = tokio::time::interval(every);
            refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            refresh.tick().await; // the first tick is immediate; the caller just read it
            loop {
                refresh.tick().await;
                if let Err(e) = directory.refresh(&net).await {
                    tracing::warn!("{role}: registry refresh failed (retrying): {e}");
                }
            }
        });
    }

    /// Re-reads the registry, dials new nodes and rebuilds the candidates. Returns how many.
    pub async fn refresh(&self, net: &Network) -> Result<usize, ChainError> {
        let mut operators: Vec<Address> = Vec::new();
        for block in 0..self.num_blocks {
            for operator in self.registry.active_nodes(self.model_id, block as u32).await? {
                if !operators.contains(&operator) {
                    operators.push(operator);
                }
            }
        }
        let mut fresh = Vec::new();
        let mut terms = HashMap::new();
        for operator in operators {
            let reputation = self.validation.reputation_of(operator).await?;
            if reputation < self.min_reputation_bps {
                continue;
            }
            let node = self.registry.node(operator).await?;
            let Ok(peer) = PeerId::from_bytes(&node.peerId) else { continue };
            for addr in node.multiaddrs.iter().filter_map(|a| a.parse::<Multiaddr>().ok()) {
                let _ = net.dial(peer, addr).await;
            }
            let tariff = Tariff {
                price_per_token: node.pricePerToken,
                span_blocks: u16::try_from(
                    u64::from(node.lastBlock) - u64::from(node.firstBlock) + 1,
                )
                .unwrap_or(u16::MAX),
            };
            terms.insert(peer, NodeTerms { operator, tariff });
            let announced = self.announcements.lock().expect("announcements").get(&peer).cloned();
            fresh.push(Candidate {
                peer,
                first_block: node.firstBlock as u16,
                last_block: (node.lastBlock as u16).min(self.num_blocks.saturating_sub(1)),
                rtt_ms: net.rtts().get(&peer),
                compute_ms: announced
                    .as_ref()
                    .map(|a| a.compute_ms_per_token)
                    .filter(|ms| *ms > 0.0),
                active_sessions: announced.as_ref().map_or(0, |a| a.active_sessions),
                free_cache_tokens: announced.as_ref().map(|a| a.free_cache_tokens),
                reputation_bps: Some(reputation),
                price_wei_per_token: Some(
                    u128::try_from(node.pricePerToken).map_or(f64::MAX, |wei| wei as f64),
                ),
                relayed: net.paths().get(&peer) == Some(Path::Relayed),
            });
        }
        let count = fresh.len();
        *self.candidates.lock().expect("candidates") = fresh;
        // Announcements of nodes no longer registered are dropped with them.
        self.announcements
            .lock()
            .expect("announcements")
            .retain(|peer, _| terms.contains_key(peer));
        let mut known = self.terms.lock().expect("terms");
        for (peer, now) in &terms {
            if known.get(peer).is_some_and(|before| before.tariff != now.tariff) {
                tracing::info!(
                    %peer, operator = %now.operator, price_per_token = %now.tariff.price_per_token,
                    span_blocks = now.tariff.span_blocks,
                    "a node's registered terms changed: its channel follows when its node moves"
                );
            }
        }
        *known = terms;
        Ok(count)
    }
}

//! A node's metrics: steps by kind and outcome, engine time, vouchers received, redemptions;
//! and, read at scrape time, sessions, KV cache use and what its channels owe and paid.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use alloy::primitives::U256;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::wei;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    /// `prefill`, `decode` or `close`.
    kind: String,
    /// `ok`, or the refusal's error code (`payment_required`, `overloaded`, …).
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BlockLabels {
    block: u16,
}

/// How a step ended, for [`NodeMetrics::step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome<'a> {
    Answered,
    Refused(&'a str),
}

/// Every channel's figures summed, as the node's ledger and book hold them now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelFigures {
    pub channels: usize,
    pub metered: u64,
    pub owed: U256,
    pub vouched: U256,
    pub redeemed: U256,
}

type WeiGauge = Gauge<f64, AtomicU64>;

/// The node's registry and the handles that record into it; cheap to clone.
#[derive(Clone)]
pub struct NodeMetrics {
    exposition: super::Exposition,
    steps: Family<StepLabels, Counter>,
    step_seconds: Histogram,
    batch_steps: Histogram,
    vouchers_received: Counter,
    redemptions: Counter,
    redeemed_by_node: Counter<f64, AtomicU64>,
    redemption_gas: Counter,
    sessions_active: Gauge,
    peers_connected: Gauge,
    kv_tokens_used: Family<BlockLabels, Gauge>,
    kv_tokens_free: Family<BlockLabels, Gauge>,
    channels: Gauge,
    metered: Gauge,
    owed: WeiGauge,
    vouched: WeiGauge,
    redeemed: WeiGauge,
}

impl NodeMetrics {
    /// `network`: the libp2p metrics (`Network::metrics`) to expose after these.
    pub fn new(network: Option<Arc<Registry>>) -> Self {
        let mut registry = Registry::with_prefix("infergrid_node");
        let steps = Family::<StepLabels, Counter>::default();
        registry.register("steps", "Steps received, by kind and outcome", steps.clone());
        let step_seconds = super::latency_histogram();
        registry.register_with_unit(
            "step",
            "Answered steps, from admission to the signed answer (engine and batching included)",
            Unit::Seconds,
            step_seconds.clone(),
        );
        let batch_steps = Histogram::new(exponential_buckets(1.0, 2.0, 7));
        registry.register(
            "batch_steps",
            "Decode steps per engine call (sessions stepping together run in one call)",
            batch_steps.clone(),
        );
        let vouchers_received = Counter::default();
        registry.register(
            "vouchers_received",
            "Vouchers that came with steps and were accepted",
            vouchers_received.clone(),
        );
        let redemptions = Counter::default();
        registry.register("redemptions", "redeemBatch transactions mined", redemptions.clone());
        let redeemed_by_node = Counter::<f64, AtomicU64>::default();
        registry.register(
            "redeemed_by_this_run_wei",
            "What this run's redemptions paid the operator",
            redeemed_by_node.clone(),
        );
        let redemption_gas = Counter::default();
        registry.register("redemption_gas", "Gas used by redemptions", redemption_gas.clone());
        let sessions_active = Gauge::default();
        registry.register(
            "sessions_active",
            "Sessions with a KV cache here",
            sessions_active.clone(),
        );
        let peers_connected = Gauge::default();
        registry.register(
            "peers_connected",
            "libp2p peers with an open connection",
            peers_connected.clone(),
        );
        let kv_tokens_used = Family::<BlockLabels, Gauge>::default();
        registry.register(
            "kv_cache_tokens_used",
            "KV cache positions held, by block (a batch kept for its sessions counts whole, padding included)",
            kv_tokens_used.clone(),
        );
        let kv_tokens_free = Family::<BlockLabels, Gauge>::default();
        registry.register(
            "kv_cache_tokens_free",
            "KV cache tokens free before eviction, by block",
            kv_tokens_free.clone(),
        );
        let channels = Gauge::default();
        registry.register("channels", "Payment channels that paid this node", channels.clone());
        let metered = Gauge::default();
        registry.register(
            "metered_block_tokens",
            "Block-tokens served, over every channel (ledger and this run)",
            metered.clone(),
        );
        let owed = WeiGauge::default();
        registry.register(
            "owed_wei",
            "What the metered block-tokens cost, over every channel",
            owed.clone(),
        );
        let vouched = WeiGauge::default();
        registry.register(
            "vouched_wei",
            "The latest vouchers' amounts, over every channel",
            vouched.clone(),
        );
        let redeemed = WeiGauge::default();
        registry.register(
            "redeemed_wei",
            "What the channels paid this node on-chain, over every channel",
            redeemed.clone(),
        );
        Self {
            exposition: super::Exposition::new(registry, network),
            steps,
            step_seconds,
            batch_steps,
            vouchers_received,
            redemptions,
            redeemed_by_node,
            redemption_gas,
            sessions_active,
            peers_connected,
            kv_tokens_used,
            kv_tokens_free,
            channels,
            metered,
            owed,
            vouched,
            redeemed,
        }
    }

    /// A step of `kind` ended with `outcome`, `took` from admission (answered steps only).
    pub fn step(&self, kind: &str, outcome: StepOutcome, took: Duration) {
        let outcome = match outcome {
            StepOutcome::Answered => {
                self.step_seconds.observe(took.as_secs_f64());
                "ok"
            }
            StepOutcome::Refused(code) => code,
        };
        self.steps.get_or_create(&StepLabels { kind: kind.into(), outcome: outcome.into() }).inc();
    }

    /// The batcher ran `steps` decode steps in one engine call.
    pub fn batch(&self, steps: usize) {
        self.batch_steps.observe(steps as f64);
    }

    pub fn voucher_received(&self) {
        self.vouchers_received.inc();
    }

    pub fn redemption(&self, value: U256, gas_used: u64) {
        self.redemptions.inc();
        self.redeemed_by_node.inc_by(wei(value));
        self.redemption_gas.inc_by(gas_used);
    }

    /// The text exposition of every metric, with the scrape-time gauges read first:
    /// `sessions`, connected `peers`, each block's KV tokens `(block, used, free)` and the
    /// channels' figures.
    pub fn encode(
        &self,
        sessions: usize,
        peers: usize,
        kv: &[(u16, usize, usize)],
        figures: ChannelFigures,
    ) -> String {
        self.sessions_active.set(sessions as i64);
        self.peers_connected.set(peers as i64);
        for &(block, used, free) in kv {
            self.kv_tokens_used.get_or_create(&BlockLabels { block }).set(used as i64);
            self.kv_tokens_free.get_or_create(&BlockLabels { block }).set(free as i64);
        }
        self.channels.set(figures.channels as i64);
        self.metered.set(figures.metered as i64);
        self.owed.set(wei(figures.owed));
        self.vouched.set(wei(figures.vouched));
        self.redeemed.set(wei(figures.redeemed));
        self.exposition.encode()
    }
}

//! What a gateway and a node report to Prometheus (`GET /metrics`, text exposition format).
//!
//! Each role owns one [`prometheus_client`] registry with the metrics it records as things
//! happen (requests, tokens, latencies, steps, redemptions) and gauges it reads at scrape
//! time from the state that already holds them (sessions, KV cache, what each channel owes):
//! a gauge kept in step by hand drifts, one read from the source does not. Metric names are
//! `infergrid_gateway_*` and `infergrid_node_*`; no label names a session or a request, so
//! their number stays bounded. Wei amounts are float64 (the format's only number type):
//! exact up to 2^53 wei (0.009 BTT), within a part in 2^53 beyond.

mod gateway;
mod node;

pub use gateway::{GatewayMetrics, NodeTab};
pub use node::{ChannelFigures, NodeMetrics, StepOutcome};

use alloy::primitives::U256;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The content type of the text exposition format, version 0.0.4, which every Prometheus
/// scraper reads.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Latency buckets from 1 ms to about 33 s, doubling: one histogram shape for every latency
/// measured, from a loopback hop to a long prefill.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// An amount of wei as the float64 Prometheus carries.
fn wei(amount: U256) -> f64 {
    f64::from(amount)
}

/// The text exposition of `registry`.
fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)
        .expect("writing to a String cannot fail");
    text
}

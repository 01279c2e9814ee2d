//! Logs ([`init_logs`]), and what a gateway, a node and a validator report to Prometheus
//! (`GET /metrics`, text exposition format).
//!
//! Each role owns one [`prometheus_client`] registry with the metrics it records as things
//! happen (requests, tokens, latencies, steps, redemptions) and gauges it reads at scrape
//! time from the state that already holds them (sessions, KV cache, what each channel owes):
//! a gauge kept in step by hand drifts, one read from the source does not. The exposition is
//! OpenMetrics text ([`CONTENT_TYPE`]). Metric names are
//! `infergrid_gateway_*`, `infergrid_node_*` and `infergrid_validator_*`, followed by
//! libp2p's own (`libp2p_*`, from `libp2p-metrics`); no label names a session or a request, so
//! their number stays bounded. Wei amounts are float64 (the format's only number type):
//! exact up to 2^53 wei (0.009 BTT), within a part in 2^53 beyond.

mod gateway;
mod logs;
mod node;
mod validator;

pub use gateway::{GatewayMetrics, GatewayNow, NodeTab};
pub use logs::{DEFAULT_FILTER, LogFormat, init as init_logs};
pub use node::{ChannelFigures, NodeMetrics, StepOutcome};
pub use validator::{SessionEnd, ValidatorMetrics};

use std::sync::Arc;

use alloy::primitives::U256;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The content type of what [`prometheus_client`]'s text encoder writes: OpenMetrics 1.0
/// (`# UNIT` lines, `# EOF`), which Prometheus negotiates and parses as such.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency buckets from 1 ms to about 33 s, doubling: one histogram shape for every latency
/// measured, from a loopback hop to a long prefill.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// An amount of wei as the float64 Prometheus carries.
fn wei(amount: U256) -> f64 {
    f64::from(amount)
}

/// A role's registry and the network's libp2p metrics (`Network::metrics`), exposed as one
/// document: the role's families, then libp2p's, one `# EOF`.
#[derive(Clone)]
struct Exposition {
    own: Arc<Registry>,
    network: Option<Arc<Registry>>,
}

impl Exposition {
    fn new(own: Registry, network: Option<Arc<Registry>>) -> Self {
        Self { own: Arc::new(own), network }
    }

    /// The text exposition of both registries.
    fn encode(&self) -> String {
        use prometheus_client::encoding::text;
        const INFALLIBLE: &str = "writing to a String cannot fail";
        let mut exposition = String::new();
        for registry in std::iter::once(&self.own).chain(&self.network) {
            text::encode_registry(&mut exposition, registry).expect(INFALLIBLE);
        }
        text::encode_eof(&mut exposition).expect(INFALLIBLE);
        exposition
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use alloy::primitives::{Address, U256};

    use super::*;

    /// Both expositions after one of everything, so that every family has a series.
    fn expositions() -> String {
        let gateway = GatewayMetrics::new(None);
        gateway.request("/v1/completions", 200);
        gateway.generation(5, 3);
        gateway.first_token(Duration::from_millis(20));
        gateway.next_token(Duration::from_millis(5));
        gateway.hop(0, 1, Duration::from_millis(3));
        gateway.failover(false);
        let tab = NodeTab {
            operator: Address::repeat_byte(1),
            metered: 7,
            owed: U256::from(7_000),
            signed: U256::from(9_007_199_254_740_993u64),
        };
        let node = NodeMetrics::new(None);
        node.step("decode", StepOutcome::Answered, Duration::from_millis(2));
        node.step("prefill", StepOutcome::Refused("payment_required"), Duration::ZERO);
        node.voucher_received();
        node.batch(6);
        node.redemption(U256::from(7_000), 90_000);
        let figures = ChannelFigures { channels: 1, metered: 7, ..Default::default() };
        let now =
            GatewayNow { sessions_active: 2, peers_banned: 1, peers_connected: 3, tabs: vec![tab] };
        gateway.voucher_signed();
        let validator = ValidatorMetrics::new(None);
        validator.challenging(4);
        validator.challenge_set(true);
        validator.session(SessionEnd::Completed);
        validator.judged(7, 1, 0);
        validator.report(true);
        validator.vote(true);
        gateway.encode(&now) + &node.encode(1, 3, &[(0, 12, 100)], figures) + &validator.encode()
    }

    #[test]
    fn figures_are_exposed_under_their_names() {
        let text = expositions();
        for line in [
            r#"infergrid_gateway_requests_total{endpoint="/v1/completions",status="200"} 1"#,
            "infergrid_gateway_completion_tokens_total 3",
            "infergrid_gateway_time_to_first_token_seconds_count 1",
            "infergrid_gateway_failovers_unrecovered_total 1",
            "infergrid_gateway_sessions_active 2",
            "infergrid_gateway_peers_connected 3",
            "infergrid_gateway_vouchers_signed_total 1",
            "infergrid_node_peers_connected 3",
            r#"infergrid_gateway_node_owed_wei{operator="0x0101010101010101010101010101010101010101"} 7000.0"#,
            r#"infergrid_node_steps_total{kind="prefill",outcome="payment_required"} 1"#,
            "infergrid_node_step_seconds_count 1",
            "infergrid_node_batch_steps_sum 6.0",
            r#"infergrid_node_batch_steps_bucket{le="4.0"} 0"#,
            r#"infergrid_node_batch_steps_bucket{le="8.0"} 1"#,
            "infergrid_node_redemption_gas_total 90000",
            r#"infergrid_node_kv_cache_tokens_free{block="0"} 100"#,
            "infergrid_validator_epoch 4",
            r#"infergrid_validator_challenge_sets_total{outcome="committed"} 1"#,
            r#"infergrid_validator_answers_judged_total{outcome="right"} 7"#,
            r#"infergrid_validator_answers_judged_total{outcome="wrong"} 1"#,
            r#"infergrid_validator_fault_votes_total{outcome="guilty"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
        }
        // Beyond 2^53 wei, the nearest float64.
        assert!(text.contains("9007199254740992.0"), "{text}");
    }

    /// A role's registry and the network's make one document: both sets of families, one
    /// `# EOF`, last.
    #[test]
    fn the_network_metrics_join_the_exposition() {
        let mut network = Registry::default();
        let _recorder = libp2p::metrics::Metrics::new(&mut network);
        let text =
            NodeMetrics::new(Some(Arc::new(network))).encode(0, 0, &[], ChannelFigures::default());
        assert!(text.contains("# TYPE infergrid_node_step_seconds histogram"), "{text}");
        assert!(text.contains("# TYPE libp2p_swarm_dial_attempt counter"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn the_grafana_dashboard_only_charts_metrics_that_exist() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../../scripts/grafana/infergrid.json")).unwrap();
        let text = expositions();
        let exposed: std::collections::HashSet<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        let panels = dashboard["panels"].as_array().unwrap();
        let mut charted = 0;
        for target in panels.iter().flat_map(|p| p["targets"].as_array().unwrap()) {
            let expr = target["expr"].as_str().unwrap();
            for (at, _) in expr.match_indices("infergrid_") {
                let name: String = expr[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(exposed.contains(name.as_str()), "{name} (in {expr}) is not exposed");
                charted += 1;
            }
        }
        assert!(charted >= 18, "{charted}");
    }
}

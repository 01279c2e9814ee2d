//! A node's own HTTP endpoint (`infergrid node --http ADDR`): `/metrics` for Prometheus,
//! `/healthz`, and `/status` with its sessions, KV cache and live ledger — what an operator
//! otherwise could only read from the ledger file once the node stopped — and how it is
//! reached: AutoNAT's verdict, its relayed addresses, each peer's path.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use libp2p::PeerId;
use serde_json::json;

use super::BlockServer;
use crate::pay::{ChannelStanding, Collector};
use crate::telemetry::{CONTENT_TYPE, ChannelFigures};

/// What the endpoint reads: the server, its payment collector, and the node's standing
/// on-chain as its watcher last saw it (`Some(why)` while gateways do not route here).
pub struct NodeView {
    pub peer: PeerId,
    pub net: crate::net::Network,
    pub server: Arc<BlockServer>,
    pub collector: Arc<Collector>,
    pub inactive: Arc<Mutex<Option<String>>>,
}

impl NodeView {
    /// Sessions cached, and each block's (index, KV tokens used, free).
    fn cache(&self) -> (usize, Vec<(u16, usize, usize)>) {
        let blocks = &self.server.blocks;
        let sessions = blocks.first().map_or(0, |b| b.cache_usage().0);
        let kv = blocks
            .iter()
            .enumerate()
            .map(|(i, b)| {
                (self.server.first_block + i as u16, b.cache_usage().1, b.free_cache_tokens())
            })
            .collect();
        (sessions, kv)
    }
}

pub fn router(view: Arc<NodeView>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(health))
        .route("/status", get(status))
        .with_state(view)
}

fn totals(standings: &[ChannelStanding]) -> ChannelFigures {
    standings.iter().fold(
        ChannelFigures { channels: standings.len(), ..Default::default() },
        |sum, s| ChannelFigures {
            metered: sum.metered + s.metered,
            owed: sum.owed + s.owed,
            vouched: sum.vouched + s.vouched,
            redeemed: sum.redeemed + s.redeemed,
            ..sum
        },
    )
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, format!("reading {what}: {e}\n")).into_response()
}

async fn metrics(State(view): State<Arc<NodeView>>) -> Response {
    let standings = match view.collector.standings().await {
        Ok(standings) => standings,
        Err(e) => return unavailable("the ledger", e),
    };
    let (sessions, kv) = view.cache();
    let peers = view.net.connected_peers();
    let text = view.server.metrics.encode(sessions, peers, &kv, totals(&standings));
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

/// `200` while the node serves; `status` says `inactive`, with why, while the chain keeps
/// gateways away (stake below the minimum, jailed).
async fn health(State(view): State<Arc<NodeView>>) -> Response {
    let inactive = view.inactive.lock().expect("standing").clone();
    let status = if inactive.is_some() { "inactive" } else { "ok" };
    axum::Json(json!({"status": status, "inactive": inactive, "peer": view.peer.to_string()}))
        .into_response()
}

async fn status(State(view): State<Arc<NodeView>>) -> Response {
    let standings = match view.collector.standings().await {
        Ok(standings) => standings,
        Err(e) => return unavailable("the ledger", e),
    };
    let (sessions, kv) = view.cache();
    let total = totals(&standings);
    let server = &view.server;
    let reachability = view.net.reachability().borrow().clone();
    let paths = view.net.paths();
    // Amounts in wei as decimal strings: exact, unlike JSON numbers.
    axum::Json(json!({
        "peer": view.peer.to_string(),
        "operator": view.collector.operator().to_string(),
        "model_id": format!("0x{}", hex::encode(server.model_id)),
        "blocks": {"first": server.first_block, "last": server.first_block as usize + server.blocks.len() - 1},
        "inactive": view.inactive.lock().expect("standing").clone(),
        "sessions": sessions,
        "kv_cache": kv.iter().map(|(block, used, free)| json!({"block": block, "used_tokens": used, "free_tokens": free})).collect::<Vec<_>>(),
        "decode_ms_per_token": server.decode_ms.get(),
        // AutoNAT's verdict (public, private, unknown), the address others dialed it at while
        // public, and its addresses through relays while private.
        "reachability": {
            "status": reachability.status,
            "public": reachability.public.map(|a| a.to_string()),
            "relayed": reachability.relayed.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        },
        // Per connected peer: "direct", or "relayed" while reached only through a relay.
        "paths": paths.all().into_iter().map(|(peer, path)| (peer.to_string(), json!(path)))
            .collect::<serde_json::Map<_, _>>(),
        "relayed_connections": paths.relayed_connections(),
        "channels": standings.iter().map(|s| json!({
            "channel": s.channel.to_string(), "payer": s.payer.to_string(),
            "metered_block_tokens": s.metered, "owed": s.owed.to_string(),
            "vouched": s.vouched.to_string(), "redeemed": s.redeemed.to_string(),
        })).collect::<Vec<_>>(),
        "totals": {
            "metered_block_tokens": total.metered, "owed": total.owed.to_string(),
            "vouched": total.vouched.to_string(), "redeemed": total.redeemed.to_string(),
        },
    }))
    .into_response()
}

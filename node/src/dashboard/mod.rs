//! The auditor's dashboard: every operator's stake, blocks, price, reputation, challenges,
//! faults, slashes and jail; each node's reputation over the epochs and its event history;
//! and, under a gateway, its live route and health. Served by `infergrid dashboard` and by
//! the gateway at `/dashboard`.
//!
//! Pages are rendered on the server from one [`Auditor`] pinned to one block, so every figure
//! on a page is as of the block it names (`cast call --block N` reproduces it). They need
//! nothing from the network: no script, no font, no stylesheet but their own inline one;
//! charts are inline SVG; a `refresh` header reloads them.

mod render;

use std::sync::Arc;

use alloy::primitives::Address;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use crate::chain::Deployment;
use crate::chain::audit::{AuditError, Auditor};
use crate::gateway::RoutingStatus;

/// Seconds between a page's reloads.
pub const REFRESH_SECS: u64 = 10;

/// Where the dashboard reads from: the chain, and the gateway it is served by, if any.
pub struct DashboardSource {
    pub rpc_url: String,
    pub deployment: Deployment,
    pub gateway: Option<Arc<dyn RoutingStatus>>,
}

/// `/dashboard` and `/dashboard/node/{operator}`.
pub fn router<S>(source: Arc<DashboardSource>) -> Router<S> {
    Router::new()
        .route("/dashboard", get(overview))
        .route("/dashboard/node/{operator}", get(node))
        .with_state(source)
}

fn page(html: String) -> Response {
    (
        [(header::REFRESH, REFRESH_SECS.to_string()), (header::CACHE_CONTROL, "no-store".into())],
        Html(html),
    )
        .into_response()
}

fn failed(e: AuditError) -> Response {
    let html = render::error_page(&e.to_string());
    (StatusCode::BAD_GATEWAY, [(header::REFRESH, REFRESH_SECS.to_string())], Html(html))
        .into_response()
}

async fn overview(State(source): State<Arc<DashboardSource>>) -> Response {
    let auditor = match Auditor::connect(&source.rpc_url, &source.deployment).await {
        Ok(auditor) => auditor,
        Err(e) => return failed(e),
    };
    let nodes = match auditor.nodes().await {
        Ok(nodes) => nodes,
        Err(e) => return failed(e),
    };
    let gateway = source.gateway.as_ref().map(|g| render::GatewayView {
        unserved: g.unserved_blocks(),
        banned: g.banned_peers(),
        report: g.route_report().lock().expect("route report").clone(),
    });
    page(render::overview(&source.deployment, &auditor, &nodes, gateway.as_ref()))
}

async fn node(
    State(source): State<Arc<DashboardSource>>,
    Path(operator): Path<String>,
) -> Response {
    let Ok(operator) = operator.parse::<Address>() else {
        let html = render::error_page(&format!("{operator:?} is not an address"));
        return (StatusCode::NOT_FOUND, Html(html)).into_response();
    };
    let auditor = match Auditor::connect(&source.rpc_url, &source.deployment).await {
        Ok(auditor) => auditor,
        Err(e) => return failed(e),
    };
    let (node, history) =
        match futures::try_join!(auditor.node(operator), auditor.history(operator)) {
            Ok(found) => found,
            Err(e @ AuditError::NotRegistered { .. }) => {
                return (StatusCode::NOT_FOUND, Html(render::error_page(&e.to_string())))
                    .into_response();
            }
            Err(e) => return failed(e),
        };
    page(render::node_page(&source.deployment, &node, &history))
}

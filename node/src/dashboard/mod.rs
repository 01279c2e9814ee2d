//! The auditor's dashboard: every operator's stake, blocks, price, reputation, challenges,
//! faults, slashes and jail; the validators' stake and record; the payment channels and the
//! vouchers redeemed on them; each node's reputation over the epochs and its event history;
//! and, under a gateway, its live route and health. Served by `infergrid dashboard` and by
//! the gateway at `/dashboard`.
//!
//! Pages are rendered on the server from one [`Auditor`] pinned to one block, so every figure
//! on a page is as of the block it names (`cast call --block N` reproduces it). They need
//! nothing from the network: no script, no font, no stylesheet but their own inline one;
//! charts are inline SVG; a `refresh` header reloads them.

mod payments;
mod render;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alloy::primitives::Address;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use tokio::sync::{Semaphore, SemaphorePermit};

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

/// Pages rendered at once, at most: each costs the RPC endpoint a round of calls, and the
/// page is open to anyone who can reach the gateway.
const CONCURRENT_RENDERS: usize = 4;

/// How long a rendered overview is served again before the chain is read anew: a page
/// reloaded by many browsers, or a flood of requests, reads the chain once per interval.
const OVERVIEW_REUSE: Duration = Duration::from_secs(2);

struct Dashboard {
    source: DashboardSource,
    renders: Semaphore,
    overview: Mutex<Option<(Instant, String)>>,
    redemptions: Mutex<payments::RedemptionTally>,
}

impl Dashboard {
    /// A render slot and an auditor pinned to the latest block; `503` with `Retry-After`
    /// while every slot is taken, or the error page when the chain cannot be read.
    #[allow(clippy::result_large_err)]
    async fn reader(&self) -> Result<(SemaphorePermit<'_>, Auditor), Response> {
        let slot = self.renders.try_acquire().map_err(|_| {
            let busy = render::error_page("the dashboard is busy; it reloads shortly");
            (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "1")], Html(busy))
                .into_response()
        })?;
        let auditor = Auditor::connect(&self.source.rpc_url, &self.source.deployment)
            .await
            .map_err(failed)?;
        Ok((slot, auditor))
    }
}

/// `/dashboard` and `/dashboard/node/{operator}`.
pub fn router<S>(source: DashboardSource) -> Router<S> {
    let dashboard = Dashboard {
        source,
        renders: Semaphore::new(CONCURRENT_RENDERS),
        overview: Mutex::new(None),
        redemptions: Mutex::default(),
    };
    Router::new()
        .route("/dashboard", get(overview))
        .route("/dashboard/node/{operator}", get(node))
        .with_state(Arc::new(dashboard))
}

fn page(html: String) -> Response {
    (
        [(header::REFRESH, REFRESH_SECS.to_string()), (header::CACHE_CONTROL, "no-store".into())],
        Html(html),
    )
        .into_response()
}

/// The chain could not be read: the details go to the log, not to the page, since they may
/// name the RPC endpoint (and a key in its URL).
fn failed(e: AuditError) -> Response {
    tracing::warn!("dashboard: reading the chain failed: {e}");
    let html = render::error_page("the chain could not be read; retrying");
    (StatusCode::BAD_GATEWAY, [(header::REFRESH, REFRESH_SECS.to_string())], Html(html))
        .into_response()
}

async fn overview(State(dashboard): State<Arc<Dashboard>>) -> Response {
    if let Some((at, html)) = dashboard.overview.lock().expect("overview").as_ref()
        && at.elapsed() < OVERVIEW_REUSE
    {
        return page(html.clone());
    }
    let (_slot, auditor) = match dashboard.reader().await {
        Ok(reader) => reader,
        Err(answer) => return answer,
    };
    let source = &dashboard.source;
    let mut tally = dashboard.redemptions.lock().expect("redemptions").clone();
    if tally.is_ahead_of(auditor.block()) {
        tally = Default::default();
    }
    let read = futures::try_join!(
        auditor.nodes(),
        auditor.validators(),
        auditor.channels(payments::CHANNELS_SHOWN),
        auditor.redemptions_from(tally.next_block()),
    );
    let (nodes, validators, (opened, channels), new_redemptions) = match read {
        Ok(read) => read,
        Err(e) => return failed(e),
    };
    let (redemptions, kept) = tally.advance(&new_redemptions, auditor.block());
    {
        // Renders run side by side: the tally that has counted further is kept.
        let mut stored = dashboard.redemptions.lock().expect("redemptions");
        if kept.next_block() > stored.next_block() || stored.is_ahead_of(auditor.block()) {
            *stored = kept;
        }
    }
    let payments = payments::Payments { opened, channels, redemptions, now: auditor.block_time() };
    let gateway = source.gateway.as_ref().map(|g| render::GatewayView {
        unserved: g.unserved_blocks(),
        banned: g.banned_peers(),
        report: g.route_report().lock().expect("route report").clone(),
    });
    let html = render::overview(
        &source.deployment,
        &auditor,
        &nodes,
        &validators,
        &payments,
        gateway.as_ref(),
    );
    *dashboard.overview.lock().expect("overview") = Some((Instant::now(), html.clone()));
    page(html)
}

async fn node(State(dashboard): State<Arc<Dashboard>>, Path(operator): Path<String>) -> Response {
    let Ok(operator) = operator.parse::<Address>() else {
        let html = render::error_page(&format!("{operator:?} is not an address"));
        return (StatusCode::NOT_FOUND, Html(html)).into_response();
    };
    let (_slot, auditor) = match dashboard.reader().await {
        Ok(reader) => reader,
        Err(answer) => return answer,
    };
    let source = &dashboard.source;
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

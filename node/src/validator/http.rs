//! A validator's HTTP endpoint (`infergrid validator run --http ADDR`): `/metrics` for
//! Prometheus (challenges sent, answers judged, reports, votes, libp2p) and `/healthz`.

use std::sync::Arc;

use alloy::primitives::Address;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::telemetry::{CONTENT_TYPE, ValidatorMetrics};

/// What the endpoint reads.
pub struct ValidatorView {
    /// The staked validator address.
    pub validator: Address,
    pub metrics: ValidatorMetrics,
}

pub fn router(view: Arc<ValidatorView>) -> Router {
    Router::new().route("/metrics", get(metrics)).route("/healthz", get(health)).with_state(view)
}

async fn metrics(State(view): State<Arc<ValidatorView>>) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], view.metrics.encode()).into_response()
}

/// `200` while the validator runs.
async fn health(State(view): State<Arc<ValidatorView>>) -> Response {
    axum::Json(json!({"status": "ok", "validator": view.validator.to_string()})).into_response()
}

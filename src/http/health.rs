//! The daemon's operator endpoints: `/healthz`, `/readyz`, `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::adapters::bus::Bus;
use crate::adapters::engine::Engine;
use crate::metrics::Metrics;

/// The handles the operator endpoints need.
#[derive(Clone)]
pub struct Health {
    /// Redis, pinged by `/readyz`.
    pub bus: Bus,
    /// Docker, pinged by `/readyz`.
    pub engine: Engine,
    /// The registry `/metrics` encodes.
    pub metrics: Arc<Metrics>,
}

impl Health {
    /// Whether Redis and Docker both answer now.
    pub async fn ready(&self) -> bool {
        let redis = tokio::time::timeout(Duration::from_secs(2), self.bus.ping()).await;
        let docker = tokio::time::timeout(Duration::from_secs(2), self.engine.ping()).await;
        matches!(redis, Ok(Ok(()))) && matches!(docker, Ok(Ok(())))
    }
}

/// The router of the operator endpoints.
pub fn router(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(health))
}

async fn readyz(State(h): State<Arc<Health>>) -> impl IntoResponse {
    if h.ready().await {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: Redis or Docker unreachable\n",
        )
    }
}

async fn metrics(State(h): State<Arc<Health>>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        h.metrics.encode(),
    )
}

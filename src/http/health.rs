//! The daemon's operator endpoints: `/healthz`, `/readyz`, `/metrics`,
//! and the artifact store read-only (`/v1/artifacts/<request_id>` lists a
//! request's artifacts, `/v1/artifacts/<request_id>/<name>` serves one).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::adapters::artifacts::{ArtifactError, Artifacts};
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
    /// The artifact store `/v1/artifacts/` reads.
    pub artifacts: Artifacts,
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
        .route("/v1/artifacts/{request_id}", get(artifact_list))
        .route("/v1/artifacts/{request_id}/{*name}", get(artifact))
        .with_state(Arc::new(health))
}

fn store_error(e: ArtifactError) -> axum::response::Response {
    let status = match e {
        ArtifactError::NotFound { .. } => StatusCode::NOT_FOUND,
        ArtifactError::BadName(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::BAD_GATEWAY,
    };
    (status, format!("{e}\n")).into_response()
}

async fn artifact_list(
    State(h): State<Arc<Health>>,
    Path(request_id): Path<String>,
) -> axum::response::Response {
    match h.artifacts.list(&request_id).await {
        Ok(list) => axum::Json(serde_json::json!({"request_id": request_id, "artifacts": list}))
            .into_response(),
        Err(e) => store_error(e),
    }
}

async fn artifact(
    State(h): State<Arc<Health>>,
    Path((request_id, name)): Path<(String, String)>,
) -> axum::response::Response {
    match h.artifacts.get(&request_id, &name).await {
        // Agent-made content: never rendered or sniffed as a page here.
        Ok(bytes) => {
            let text = name.ends_with(".log") || name.ends_with(".diff");
            (
                [
                    (
                        axum::http::header::CONTENT_TYPE,
                        if text {
                            "text/plain; charset=utf-8"
                        } else {
                            "application/octet-stream"
                        },
                    ),
                    (axum::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                    (axum::http::header::CONTENT_SECURITY_POLICY, "sandbox"),
                ],
                bytes,
            )
                .into_response()
        }
        Err(e) => store_error(e),
    }
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

//! The daemon's HTTP servers: the operator endpoints (`health`:
//! `/healthz`, `/readyz`, `/metrics`), the workers' `gateway` (the API
//! the in-container `orchestrator` CLI calls, key-checked per worker) and
//! the `api` (requests, events, workers, presets, pools, artifacts and the
//! dashboard, for producers, scripts and people; docs/api.md).

pub mod api;
pub mod gateway;
pub mod health;

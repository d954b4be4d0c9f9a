//! The daemon's HTTP servers: the operator endpoints (`health`:
//! `/healthz`, `/readyz`, `/metrics`) and the workers' `gateway` (the API
//! the in-container `orchestrator` CLI calls, key-checked per worker).

pub mod gateway;
pub mod health;

//! workers-spawner: runs CLI coding agents in isolated Docker containers on
//! demand, driven by Redis streams. See `ARCHITECTURE.md` for the map.
//!
//! The layers, each depending only on those before it:
//! `model` (pure) → `settings`, `metrics` → `adapters` (all I/O) → `http`
//! → `worker` (one task's life) → `supervisor` (intake, pools, sessions,
//! adoption) → `cli` (the subcommands). The in-container `orchestrator`
//! CLI is a crate of its own (`crates/orchestrator`).

pub mod adapters;
pub mod cli;
pub mod http;
pub mod metrics;
pub mod model;
pub mod settings;
pub mod supervisor;
pub mod worker;

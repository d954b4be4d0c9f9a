//! workers-spawner: runs CLI coding agents in isolated Docker containers on
//! demand, driven by Redis streams. See `ARCHITECTURE.md` for the map.

pub mod bus;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod delivery;
pub mod diagnose;
pub mod docker;
pub mod firewall;
pub mod gateway;
pub mod http;
pub mod image_ref;
pub mod images;
pub mod loader;
pub mod metrics;
pub mod policy;
pub mod pool;
pub mod prepare;
pub mod protocol;
pub mod redact;
pub mod render;
pub mod session;
pub mod settings;
pub mod sink;
pub mod spec;
pub mod watcher;
pub mod worker;

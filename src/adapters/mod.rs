//! The adapters: one module per outside system, and the only code that
//! does I/O on the daemon's behalf.
//!
//! - `bus`: Redis (streams, result marks, run marks, keys), nothing else;
//! - `egress`: the workers' egress sockets and the network beyond them;
//! - `engine`: the Docker Engine API (bollard), never the `docker` CLI;
//! - `images`: preparing and caching the images workers run on (Docker);
//! - `loader` / `watcher`: the catalog directories and their changes;
//! - `firewall`: the host's iptables rules around the workers' bridges;
//! - `sink`: where events and results go (Redis, or a terminal);
//! - `git`: the `git` CLI on the daemon's host (mirrors, checkouts, changes);
//! - `artifacts`: the artifact store (a local folder or an S3 bucket).

pub mod artifacts;
pub mod bus;
pub mod egress;
pub mod engine;
pub mod firewall;
pub mod git;
pub mod images;
pub mod loader;
pub mod sink;
pub mod watcher;

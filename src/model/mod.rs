//! The model: what the daemon knows and decides, without doing any I/O.
//!
//! Nothing under `model` reads a file, a socket, the clock's timers or the
//! environment (the daemon's environment reaches `spec` as a lookup
//! function); everything here is unit-tested with plain values. The I/O
//! lives in `crate::adapters`, and the supervisor sits between the two.

pub mod access;
pub mod catalog;
pub mod config;
pub mod container;
pub mod conversation;
pub mod delivery;
pub mod diagnose;
pub mod docker_host;
pub mod egress;
pub mod image_ref;
pub mod outcome;
pub mod policy;
pub mod prepare;
pub mod protocol;
pub mod redact;
pub mod render;
pub mod retry;
pub mod spec;
pub mod tools;
pub mod triage;
pub mod worker_key;
pub mod workspace;

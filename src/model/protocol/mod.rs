//! Wire types of `PROTOCOL.md`: spawn requests, control commands, results
//! and events, plus the bounded parser that turns a raw stream entry into a
//! request.
//!
//! This module does no I/O. Parsing never panics: every malformed entry
//! becomes a [`RequestError`] that names the offending field and, when the
//! entry carried a usable `request_id`, keeps it so a result can be sent.

mod control;
mod event;
mod request;
mod result;
mod scan;
mod timestamp;

#[cfg(test)]
mod tests;

pub use control::{parse_control, ControlCommand};
pub use event::{Event, EventType};
pub use request::{
    is_valid_request_id, is_valid_token, json_depth, parse_spawn_request, InputLimits,
    RequestError, SpawnRequest, Task,
};
pub use result::{ErrorInfo, FileView, ResultRecord, Status, Timings, WorkerInfo};
pub use scan::{scan_entry, EntryScan, PARSER_MAX_DEPTH};
pub use timestamp::{normalize_rfc3339, now_rfc3339, rfc3339_millis};

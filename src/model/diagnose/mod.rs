//! Messages a person can act on for a broken preset.
//!
//! Every JSON Schema violation becomes one sentence that names the field,
//! says what is wrong with the value in words and what would be valid
//! (with a `did you mean` for near misses); JSON syntax errors get their
//! line, column and the likely slip; and [`config_warnings`] /
//! [`catalog_warnings`] point out contradictions the schema cannot see.
//!
//! Errors are what the daemon refuses to load; warnings are for a file that
//! loads and runs but not the way its author most likely meant (see
//! docs/operations.md, "Validating presets").
//!
//! This module does no I/O.

mod render_problem;
mod site;
mod syntax;
mod violation;
mod warnings;
mod words;

#[cfg(test)]
mod tests;

pub use render_problem::render_problem;
pub use syntax::json_error;
pub use violation::describe;
pub use warnings::{catalog_warnings, config_warnings, pool_budget, Context};
pub use words::{literal, near_miss, value_words};

//! Warnings: contradictions inside a valid preset, or between the presets
//! of a catalog, that the schema cannot see.

use std::collections::BTreeMap;

use super::words::did_you_mean;
use crate::model::catalog::{Catalog, CatalogIssue};
use crate::model::config::{EnvValue, FieldError, WorkerConfig};

/// What the checks know about the daemon the presets are for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context {
    /// The daemon's `max_concurrent`, when known.
    pub max_concurrent: Option<usize>,
}

/// Pool containers the daemon keeps ready in all: half of `max_concurrent`
/// (the rest is left to cold starts, see `refill_pools`).
pub fn pool_budget(max_concurrent: usize) -> usize {
    max_concurrent / 2
}

fn warn(field: &str, message: String) -> FieldError {
    FieldError {
        field: field.to_string(),
        message,
    }
}

/// Words that mark an env name as holding a secret.
const SECRET_WORDS: [&str; 8] = [
    "KEY",
    "APIKEY",
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "CREDENTIALS",
    "PAT",
];

/// Contradictions inside one valid config that the schema cannot see.
pub fn config_warnings(c: &WorkerConfig, ctx: &Context) -> Vec<FieldError> {
    let mut out = Vec::new();
    let l = &c.limits;
    if l.ttl_sec < l.timeout_sec {
        out.push(warn(
            "limits.ttl_sec",
            format!(
                "limits.ttl_sec ({}) is shorter than limits.timeout_sec ({}): a session's container lives only ttl_sec, so a task in a session is stopped before its timeout",
                l.ttl_sec, l.timeout_sec
            ),
        ));
    }
    if c.pool.size > 0 && l.ttl_sec <= l.timeout_sec {
        out.push(warn(
            "pool.size",
            format!(
                "pool.size is {} but limits.ttl_sec ({}) is not longer than limits.timeout_sec ({}): a pool container takes a request only while it has a whole timeout_sec of life left, so this pool never serves one (make ttl_sec longer than timeout_sec)",
                c.pool.size, l.ttl_sec, l.timeout_sec
            ),
        ));
    }
    if let Some(max) = ctx.max_concurrent {
        let budget = pool_budget(max);
        if c.pool.size as usize > budget {
            out.push(warn(
                "pool.size",
                format!(
                    "pool.size ({}) is more than the daemon keeps ready: pools hold at most half of max_concurrent ({max} / 2 = {budget}) containers in all, so at most {budget} of these are kept",
                    c.pool.size
                ),
            ));
        }
    }
    if let (Some(net), false) = (&c.network, c.has_internet) {
        out.push(warn(
            "network",
            format!(
                "network {net:?} is attached while has_internet is false: has_internet only chooses the daemon's own network, so if {net:?} has a route out the worker reaches the internet through it"
            ),
        ));
    }
    let exact = c.agent.command.iter().filter(|a| *a == "{prompt}").count();
    if exact == 1 {
        for (i, a) in c.agent.command.iter().enumerate() {
            if a != "{prompt}" && a.contains("{prompt}") {
                out.push(warn(
                    &format!("agent.command.{i}"),
                    format!(
                        "agent.command[{i}] {a:?} contains {{prompt}} inside a longer string: only the element that is exactly \"{{prompt}}\" is replaced by the prompt, this one is passed as written"
                    ),
                ));
            }
        }
    }
    for (name, value) in &c.env {
        let EnvValue::Plain(text) = value else {
            continue;
        };
        let upper = name.to_ascii_uppercase();
        if !text.is_empty() && upper.split('_').any(|w| SECRET_WORDS.contains(&w)) {
            out.push(warn(
                &format!("env.{name}"),
                format!(
                    "env.{name} is written in the preset as plain text: if it is a secret, put it in the daemon's environment and write {{\"from_env\": \"{name}\"}} (then it is kept out of events, results and logs)"
                ),
            ));
        }
    }
    out
}

/// Roles and locales the templates know, from names like
/// `claude-code/po.ru.md.tera`.
fn template_roles_and_locales(catalog: &Catalog) -> (Vec<String>, Vec<String>) {
    let mut roles = Vec::new();
    let mut locales = Vec::new();
    for name in &catalog.template_names {
        let Some(stem) = name
            .rsplit('/')
            .next()
            .and_then(|f| f.strip_suffix(".md.tera"))
        else {
            continue;
        };
        let (role, locale) = match stem.split_once('.') {
            Some((r, l)) => (r, Some(l)),
            None => (stem, None),
        };
        if role != "default" && !roles.iter().any(|r| r == role) {
            roles.push(role.to_string());
        }
        if let Some(l) = locale {
            if !locales.iter().any(|x| x == l) {
                locales.push(l.to_string());
            }
        }
    }
    roles.sort();
    locales.sort();
    (roles, locales)
}

/// Warnings for every preset of `catalog` (file keys `presets/<id>.json`):
/// [`config_warnings`], a `role` or `locale` no template knows, and pools
/// that together want more than the daemon keeps ready.
pub fn catalog_warnings(catalog: &Catalog, ctx: &Context) -> Vec<CatalogIssue> {
    let (roles, locales) = template_roles_and_locales(catalog);
    // Without templates (an unreadable directory, reported on its own) no
    // role or locale could have one.
    let templates = !catalog.template_names.is_empty();
    let mut out = Vec::new();
    for (id, preset) in &catalog.presets {
        let c = &preset.config;
        let mut ws = config_warnings(c, ctx);
        let used = crate::model::render::pick_template(catalog, c);
        if let Some(role) = c.role.as_ref().filter(|_| templates) {
            if !roles.contains(role) {
                let known: Vec<&str> = roles.iter().map(String::as_str).collect();
                let list = if known.is_empty() {
                    String::new()
                } else {
                    format!("; roles with templates: {}", known.join(", "))
                };
                ws.push(warn(
                    "role",
                    format!(
                        "role {role:?} has no instruction template for any agent type (no <type>/{role}.md.tera), so the instructions come from {used}{list}{}",
                        did_you_mean(role, &known)
                    ),
                ));
            }
        }
        if let Some(locale) = c.locale.as_ref().filter(|_| templates) {
            if !locales.contains(locale) {
                ws.push(warn(
                    "locale",
                    format!(
                        "locale {locale:?} has no instruction template for any agent type (no <type>/<role>.{locale}.md.tera), so the instructions come from {used}"
                    ),
                ));
            }
        }
        out.extend(ws.into_iter().map(|w| CatalogIssue {
            file: format!("presets/{id}.json"),
            field: Some(w.field),
            message: w.message,
        }));
    }
    if let Some(max) = ctx.max_concurrent {
        let budget = pool_budget(max);
        let pools: BTreeMap<&str, u32> = catalog
            .presets
            .iter()
            .filter(|(_, p)| p.config.pool.size > 0)
            .map(|(id, p)| (id.as_str(), p.config.pool.size))
            .collect();
        let total: u64 = pools.values().map(|n| u64::from(*n)).sum();
        if pools.len() > 1 && total > budget as u64 {
            let each: Vec<String> = pools.iter().map(|(id, n)| format!("{id}: {n}")).collect();
            out.push(CatalogIssue {
                file: "presets/".to_string(),
                field: Some("pool.size".into()),
                message: format!(
                    "pool.size of the presets adds up to {total} containers ({}), but the daemon keeps at most half of max_concurrent ({max} / 2 = {budget}) ready in all",
                    each.join(", ")
                ),
            });
        }
    }
    out
}

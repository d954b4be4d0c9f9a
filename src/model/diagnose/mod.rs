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

use std::collections::BTreeMap;

use jsonschema::error::{ValidationError, ValidationErrorKind};
use serde_json::Value;

use crate::model::catalog::{Catalog, CatalogIssue};
use crate::model::config::{EnvValue, FieldError, Tool, WorkerConfig};

/// Where a violation sits: the instance path and the schema governing it.
struct Site<'s> {
    /// Instance path segments (`["limits", "memory"]`).
    segments: Vec<String>,
    /// The same path with every array index and free-form key as `*`
    /// (`env.*.from_env`): the key of the field-specific sentences.
    glob: String,
    /// The (resolved) schema at that path, when the walk found one.
    schema: Option<&'s Value>,
}

impl Site<'_> {
    /// Dotted field, as results and events carry it (`allowed_tools.1`).
    fn field(&self) -> String {
        field_of(&self.segments)
    }

    /// The field as a person reads it (`agent.command[2]`).
    fn human(&self) -> String {
        human_of(&self.segments)
    }

    /// The enclosing array of an item, in words (`allowed_tools`), else the
    /// field itself: an item is best named by its value inside its list.
    fn list_or_field(&self) -> String {
        match self.segments.last() {
            Some(last) if last.parse::<usize>().is_ok() => {
                human_of(&self.segments[..self.segments.len() - 1])
            }
            _ => self.human(),
        }
    }
}

fn field_of(segments: &[String]) -> String {
    if segments.is_empty() {
        "(root)".to_string()
    } else {
        segments.join(".")
    }
}

fn human_of(segments: &[String]) -> String {
    let mut out = String::new();
    for s in segments {
        if s.parse::<usize>().is_ok() {
            out.push_str(&format!("[{s}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(s);
        }
    }
    if out.is_empty() {
        "the preset".to_string()
    } else {
        out
    }
}

/// Follows `$ref`s local to `root` (`#/$defs/slug`).
fn resolve<'s>(root: &'s Value, mut s: &'s Value) -> &'s Value {
    for _ in 0..8 {
        let Some(target) = s
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix('#'))
            .and_then(|p| root.pointer(p))
        else {
            break;
        };
        s = target;
    }
    s
}

fn site<'s>(root: &'s Value, segments: Vec<String>) -> Site<'s> {
    let mut schema = Some(resolve(root, root));
    let mut glob = Vec::new();
    for seg in &segments {
        let Some(s) = schema else {
            glob.push(seg.clone());
            continue;
        };
        if let Some(p) = s.get("properties").and_then(|p| p.get(seg)) {
            glob.push(seg.clone());
            schema = Some(resolve(root, p));
        } else if let Some(a) = s.get("additionalProperties").filter(|a| a.is_object()) {
            glob.push("*".into());
            schema = Some(resolve(root, a));
        } else if let Some(i) = s.get("items").filter(|_| seg.parse::<usize>().is_ok()) {
            glob.push("*".into());
            schema = Some(resolve(root, i));
        } else {
            glob.push(seg.clone());
            schema = None;
        }
    }
    Site {
        segments,
        glob: glob.join("."),
        schema,
    }
}

/// The schema object holding the keyword at `keyword_path` (a violation's
/// schema path such as `/properties/env/additionalProperties/oneOf/1/required`),
/// following `$ref` segments.
fn keyword_parent<'s>(root: &'s Value, keyword_path: &str) -> Option<&'s Value> {
    let segments = segments_of(keyword_path);
    let (_, parents) = segments.split_last()?;
    let mut s = root;
    for seg in parents {
        s = if seg == "$ref" {
            resolve(root, s)
        } else {
            match s {
                Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
                _ => s.get(seg)?,
            }
        };
    }
    Some(resolve(root, s))
}

fn segments_of(pointer: &str) -> Vec<String> {
    if pointer.is_empty() {
        return Vec::new();
    }
    pointer
        .trim_start_matches('/')
        .split('/')
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect()
}

fn child(segments: &[String], key: &str) -> Vec<String> {
    let mut v = segments.to_vec();
    v.push(key.to_string());
    v
}

// ------------------------------------------------------------------ values

const SHOWN_CHARS: usize = 60;

/// A value as written in JSON, shortened when long.
pub fn literal(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() <= SHOWN_CHARS {
        s
    } else {
        let mut t: String = s.chars().take(SHOWN_CHARS).collect();
        t.push('…');
        t
    }
}

/// A value in words: `the string "two"`, `the number 1.5`, `a list [...]`.
pub fn value_words(v: &Value) -> String {
    match v {
        Value::String(_) => format!("the string {}", literal(v)),
        Value::Number(_) => format!("the number {v}"),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".to_string(),
        Value::Array(a) if a.is_empty() => "an empty list".to_string(),
        Value::Array(_) => format!("the list {}", literal(v)),
        Value::Object(o) if o.is_empty() => "an empty object".to_string(),
        Value::Object(_) => format!("the object {}", literal(v)),
    }
}

fn type_words(t: &str) -> &'static str {
    match t {
        "string" => "a string",
        "number" => "a number",
        "integer" => "a whole number",
        "boolean" => "true or false",
        "array" => "a list",
        "object" => "an object",
        "null" => "null",
        _ => "a value of another type",
    }
}

/// `["claude", "-p", "{prompt}"]`: a list of strings as JSON, spaced.
fn json_list(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|s| Value::String(s.clone()).to_string())
        .collect();
    format!("[{}]", quoted.join(", "))
}

fn or_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// `600 seconds (10 minutes)` style, for the `*_sec` fields.
fn with_unit(glob: &str, n: &Value) -> String {
    if !glob.ends_with("_sec") {
        return n.to_string();
    }
    match n.as_u64() {
        Some(1) => "1 second".to_string(),
        Some(s) => format!("{s} seconds{}", duration_words(s)),
        None => format!("{n} seconds"),
    }
}

fn duration_words(s: u64) -> String {
    let (n, unit) = if s >= 86_400 && s.is_multiple_of(86_400) {
        (s / 86_400, "day")
    } else if s >= 3600 && s.is_multiple_of(3600) {
        (s / 3600, "hour")
    } else if s >= 60 && s.is_multiple_of(60) {
        (s / 60, "minute")
    } else {
        return String::new();
    };
    format!(" ({n} {unit}{})", if n == 1 { "" } else { "s" })
}

// ------------------------------------------------------------ near misses

fn normalized(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '_' && *c != '-' && *c != ' ')
        .flat_map(char::to_lowercase)
        .collect()
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(row[j]).min(row[j + 1])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

/// The candidate `word` most likely is a slip for (case, `_`/`-`, a few
/// typed letters, a missing plural `s`), if any is close enough.
pub fn near_miss<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let w = normalized(word);
    if w.is_empty() {
        return None;
    }
    let budget = match w.chars().count() {
        0..=3 => 0,
        4..=5 => 1,
        6..=8 => 2,
        _ => 3,
    };
    candidates
        .iter()
        .filter(|c| **c != word)
        .map(|c| {
            let n = normalized(c);
            // `ttl` for `ttl_sec`, `tools` for `allowed_tools`.
            let (lc, lw) = (c.to_lowercase(), word.to_lowercase());
            let whole_word = lc.starts_with(&format!("{lw}_")) || lc.ends_with(&format!("_{lw}"));
            let d = if n == w || whole_word {
                0
            } else if n.len().min(w.len()) >= 4 && (n.starts_with(&w) || w.starts_with(&n)) {
                // `limit` / `limits`, `timeout` / `timeout_sec`
                1
            } else {
                levenshtein(&w, &n)
            };
            (d, *c)
        })
        .filter(|(d, _)| *d <= budget)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn did_you_mean(word: &str, candidates: &[&str]) -> String {
    near_miss(word, candidates)
        .map(|c| format!("; did you mean \"{c}\"?"))
        .unwrap_or_default()
}

// ------------------------------------------------------- words per field

/// What a field is, for "missing" sentences.
fn field_hint(glob: &str) -> Option<&'static str> {
    Some(match glob {
        "id" => "the preset's id, the file name without .json, e.g. \"po_claude_v1\"",
        "name" => "a name for people, e.g. \"Product Owner (Claude)\"",
        "image" => "the image the worker runs, e.g. \"universal-worker-base:latest\"",
        "agent" => {
            "which agent runs and how, e.g. {\"type\": \"claude-code\", \"command\": [\"claude\", \"-p\", \"{prompt}\"]}"
        }
        "agent.type" => "the agent type (a folder of the templates directory), e.g. \"claude-code\"",
        "agent.command" => {
            "the agent's argv with one \"{prompt}\" element, e.g. [\"claude\", \"-p\", \"{prompt}\"]"
        }
        "allowed_tools" => "the tool groups the worker may use, e.g. [\"respond\"] ([] for none)",
        "limits" => {
            "the worker's limits, e.g. {\"cpu\": 1, \"memory\": \"2g\", \"timeout_sec\": 600, \"ttl_sec\": 3600}"
        }
        "limits.cpu" => "CPUs, a number such as 1 or 0.5",
        "limits.memory" => "memory, a size such as \"512m\" or \"4g\"",
        "limits.timeout_sec" => "the longest one task may run, in seconds, e.g. 600",
        "limits.ttl_sec" => {
            "the longest a session or pool container lives, in seconds, e.g. 7200"
        }
        "env.*.from_env" => "the name of a variable of the daemon's environment",
        _ => return None,
    })
}

/// A valid example for a field, for type sentences.
fn example(glob: &str) -> Option<&'static str> {
    Some(match glob {
        "limits.cpu" => "2 or 0.5",
        "limits.memory" => "\"4g\"",
        "limits.timeout_sec" => "600",
        "limits.ttl_sec" => "7200",
        "limits.pids" => "512",
        "pool.size" => "2",
        "allowed_tools" => "[\"project\", \"respond\"]",
        "agent.command" => "[\"claude\", \"-p\", \"{prompt}\"]",
        "system_packages" => "[\"git\", \"curl\"]",
        "bootstrap_commands" => "[\"npm install -g pnpm\"]",
        "security.cap_add" => "[\"NET_BIND_SERVICE\"]",
        "env" => "{\"MODE\": \"ci\", \"API_KEY\": {\"from_env\": \"API_KEY\"}}",
        "env.*" => "\"text\" or {\"from_env\": \"NAME\"}",
        _ => return None,
    })
}

// ------------------------------------------------------------ sentences

/// The sentence(s) for one violation `e` of the schema `root` (the whole
/// schema the validator was built from): one per unknown key, else one.
/// Empty when another violation of the same slip already says everything
/// (a required key missing next to its misspelling, an empty value that
/// also misses its pattern).
pub fn describe(root: &Value, e: &ValidationError<'_>) -> Vec<FieldError> {
    let walked = site(root, segments_of(e.instance_path().as_str()));
    // The schema holding the violated keyword: inside a `oneOf` that is the
    // branch, which the walk along the instance path cannot know.
    let schema = keyword_parent(root, e.schema_path().as_str()).or(walked.schema);
    let site = Site { schema, ..walked };
    let v: &Value = e.instance();
    let one = |message: String| {
        vec![FieldError {
            field: site.field(),
            message,
        }]
    };
    let f = site.human();
    let get = |k: &str| schema.and_then(|s| s.get(k));
    let min_len = get("minLength").and_then(Value::as_u64).unwrap_or(0);
    let min_items = get("minItems").and_then(Value::as_u64).unwrap_or(0);
    match e.kind() {
        ValidationErrorKind::Required { property } => {
            let Some(p) = property.as_str() else {
                return one(format!("{f}: {e}"));
            };
            let unexpected = unknown_keys(schema, v);
            let unexpected: Vec<&str> = unexpected.iter().map(String::as_str).collect();
            if unexpected.iter().any(|k| near_miss(k, &[p]).is_some()) {
                return Vec::new();
            }
            let missing = site_child(root, &site, p);
            let hint = field_hint(&missing.glob)
                .map(|h| format!(": {h}"))
                .unwrap_or_default();
            vec![FieldError {
                field: missing.field(),
                message: format!("{} is required but missing{hint}", missing.human()),
            }]
        }
        ValidationErrorKind::AdditionalProperties { unexpected } => unexpected
            .iter()
            .map(|k| {
                let key = site_child(root, &site, k);
                FieldError {
                    field: key.field(),
                    message: unknown_key_message(root, &site, schema, v, k),
                }
            })
            .collect(),
        ValidationErrorKind::Type { .. } => {
            let wanted: Vec<String> = match get("type") {
                Some(Value::String(t)) => vec![t.clone()],
                Some(Value::Array(ts)) => ts
                    .iter()
                    .filter_map(|t| t.as_str())
                    .map(String::from)
                    .collect(),
                _ => return one(format!("{f}: {e}")),
            };
            let words: Vec<String> = wanted.iter().map(|t| type_words(t).to_string()).collect();
            one(format!(
                "{f} must be {}, got {}{}",
                or_list(&words),
                value_words(v),
                type_hint(&site.glob, &wanted, v)
            ))
        }
        ValidationErrorKind::Enum { options } => {
            let opts: Vec<&str> = options
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let guess = v
                .as_str()
                .map(|s| did_you_mean(s, &opts))
                .unwrap_or_default();
            if site.glob == "allowed_tools.*" {
                let what = match v {
                    Value::String(_) => format!("unknown tool {}", literal(v)),
                    _ => format!("{} is not a tool name", value_words(v)),
                };
                one(format!(
                    "allowed_tools: {what} (known: {}{guess})",
                    opts.join(", ")
                ))
            } else {
                let shown: Vec<String> = options
                    .as_array()
                    .map(|a| a.iter().map(literal).collect())
                    .unwrap_or_default();
                one(format!(
                    "{f} must be {}, got {}{guess}",
                    or_list(&shown),
                    value_words(v)
                ))
            }
        }
        ValidationErrorKind::Constant { expected_value } => one(format!(
            "{f} must be {}, got {}",
            literal(expected_value),
            value_words(v)
        )),
        // An empty value is reported once, by its minLength / minItems.
        ValidationErrorKind::Pattern { .. } if v == "" && min_len > 0 => Vec::new(),
        ValidationErrorKind::Pattern { pattern } => one(pattern_message(&site, v, pattern)),
        ValidationErrorKind::Contains if count(v) == 0 && min_items > 0 => Vec::new(),
        ValidationErrorKind::Contains => one(contains_message(&site, v)),
        ValidationErrorKind::Minimum { limit } => one(format!(
            "{f} must be at least {}, got {v}",
            with_unit(&site.glob, limit)
        )),
        ValidationErrorKind::ExclusiveMinimum { limit } => one(format!(
            "{f} must be more than {}, got {v}",
            with_unit(&site.glob, limit)
        )),
        ValidationErrorKind::Maximum { limit } => one(format!(
            "{f} must be at most {}, got {v}",
            with_unit(&site.glob, limit)
        )),
        ValidationErrorKind::ExclusiveMaximum { limit } => one(format!(
            "{f} must be less than {}, got {v}",
            with_unit(&site.glob, limit)
        )),
        ValidationErrorKind::MultipleOf { multiple_of } => {
            one(format!("{f} must be a multiple of {multiple_of}, got {v}"))
        }
        ValidationErrorKind::MinLength { limit } => {
            if *limit == 1 {
                one(format!("{f} must not be empty"))
            } else {
                one(format!(
                    "{f} must be at least {limit} characters long, got {}",
                    literal(v)
                ))
            }
        }
        ValidationErrorKind::MaxLength { limit } => {
            let n = v.as_str().map(|s| s.chars().count()).unwrap_or(0);
            one(format!(
                "{} {} is {n} characters long; at most {limit} are allowed",
                site.list_or_field(),
                literal(v)
            ))
        }
        ValidationErrorKind::MinItems { limit } => {
            let hint = example(&site.glob)
                .map(|x| format!(", e.g. {x}"))
                .unwrap_or_default();
            if *limit == 1 {
                one(format!("{f} must not be empty{hint}"))
            } else {
                one(format!("{f} must have at least {limit} entries{hint}"))
            }
        }
        ValidationErrorKind::MaxItems { limit } | ValidationErrorKind::MaxProperties { limit } => {
            one(format!(
                "{f} has {} entries; at most {limit} are allowed",
                count(v)
            ))
        }
        ValidationErrorKind::MinProperties { limit } => one(format!(
            "{f} has {} entries; at least {limit} are needed",
            count(v)
        )),
        ValidationErrorKind::UniqueItems => {
            let dup = v.as_array().and_then(|a| {
                a.iter()
                    .enumerate()
                    .find(|(i, x)| a[..*i].contains(x))
                    .map(|(_, x)| x)
            });
            match dup {
                Some(d) => {
                    let n = v
                        .as_array()
                        .map_or(0, |a| a.iter().filter(|x| *x == d).count());
                    let times = if n == 2 {
                        "twice".to_string()
                    } else {
                        format!("{n} times")
                    };
                    one(format!(
                        "{f} lists {} {times}: list each entry once",
                        literal(d)
                    ))
                }
                None => one(format!("{f} has duplicate entries: list each entry once")),
            }
        }
        ValidationErrorKind::OneOfNotValid { context } | ValidationErrorKind::AnyOf { context } => {
            one_of_message(root, &site, v, schema, context)
        }
        ValidationErrorKind::OneOfMultipleValid { .. } => one(format!(
            "{f} {} matches more than one allowed form",
            literal(v)
        )),
        ValidationErrorKind::PropertyNames { error } => {
            let name: &Value = error.instance();
            let what = if site.glob == "env" {
                "an environment variable name"
            } else {
                "a valid name"
            };
            let message = match error.kind() {
                ValidationErrorKind::Pattern { .. } if site.glob == "env" => {
                    env_name_words(&f, name)
                }
                ValidationErrorKind::MaxLength { limit } => format!(
                    "{f}: the name {} is {} characters long; at most {limit} are allowed",
                    literal(name),
                    name.as_str().map_or(0, |s| s.chars().count())
                ),
                _ => format!("{f}: {} is not {what}", literal(name)),
            };
            one(message)
        }
        ValidationErrorKind::FalseSchema => one(format!("{f} is not allowed here")),
        ValidationErrorKind::Format { format } => {
            one(format!("{f} {} is not a valid {format}", literal(v)))
        }
        ValidationErrorKind::Not { .. } => one(format!("{f} {} is not allowed", literal(v))),
        _ => one(format!("{f}: {e}")),
    }
}

fn site_child<'s>(root: &'s Value, parent: &Site<'_>, key: &str) -> Site<'s> {
    site(root, child(&parent.segments, key))
}

fn count(v: &Value) -> usize {
    match v {
        Value::Array(a) => a.len(),
        Value::Object(o) => o.len(),
        _ => 0,
    }
}

/// Keys of `v` that its (closed) object schema does not know.
fn unknown_keys(schema: Option<&Value>, v: &Value) -> Vec<String> {
    let (Some(s), Some(o)) = (schema, v.as_object()) else {
        return Vec::new();
    };
    if s.get("additionalProperties") != Some(&Value::Bool(false)) {
        return Vec::new();
    }
    let props = s.get("properties").and_then(Value::as_object);
    o.keys()
        .filter(|k| props.is_none_or(|p| !p.contains_key(*k)))
        .cloned()
        .collect()
}

/// Every property the schema defines anywhere, as (dotted path, name).
fn all_properties(root: &Value) -> Vec<(String, String)> {
    fn walk(root: &Value, s: &Value, path: &str, out: &mut Vec<(String, String)>, depth: usize) {
        if depth > 6 {
            return;
        }
        let s = resolve(root, s);
        if let Some(props) = s.get("properties").and_then(Value::as_object) {
            for (k, sub) in props {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                out.push((p.clone(), k.clone()));
                walk(root, sub, &p, out, depth + 1);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, "", &mut out, 0);
    out
}

fn unknown_key_message(
    root: &Value,
    parent: &Site<'_>,
    schema: Option<&Value>,
    obj: &Value,
    key: &str,
) -> String {
    let key_site = site_child(root, parent, key);
    let f = key_site.human();
    let known: Vec<&str> = schema
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
        .map(|p| p.keys().map(String::as_str).collect())
        .unwrap_or_default();
    if let Some(near) = near_miss(key, &known) {
        let required = schema
            .and_then(|s| s.get("required"))
            .and_then(Value::as_array)
            .is_some_and(|r| r.iter().any(|x| x == near));
        let missing = obj.get(near).is_none();
        let note = if required && missing {
            format!(
                " ({} is required and missing)",
                site_child(root, parent, near).human()
            )
        } else {
            String::new()
        };
        return format!("{f} is not a known field; did you mean \"{near}\"?{note}");
    }
    // A key copied from another level (`timeout_sec` at the top, `command`
    // outside `agent`).
    let here = field_of(&parent.segments);
    let elsewhere: Vec<(String, String)> = all_properties(root)
        .into_iter()
        .filter(|(path, name)| {
            let parent_path = path.rsplit_once('.').map_or("(root)", |(p, _)| p);
            parent_path != here && (name == key || near_miss(key, &[name.as_str()]).is_some())
        })
        .collect();
    if let Some((path, _)) = elsewhere.first() {
        return format!("{f} is not a known field here; did you mean {path}? (move it there)");
    }
    if known.is_empty() {
        format!("{f} is not a known field")
    } else {
        format!("{f} is not a known field (known: {})", known.join(", "))
    }
}

fn type_hint(glob: &str, wanted: &[String], v: &Value) -> String {
    let wants = |t: &str| wanted.iter().any(|w| w == t);
    if let Value::String(s) = v {
        let t = s.trim();
        if (wants("integer") && t.parse::<i64>().is_ok())
            || (wants("number") && t.parse::<f64>().is_ok_and(f64::is_finite))
        {
            return format!(" (write it without quotes: {t})");
        }
        if wants("boolean") {
            return match t.to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "1" => " (write true without quotes)".to_string(),
                "false" | "no" | "off" | "0" => " (write false without quotes)".to_string(),
                _ => String::new(),
            };
        }
        if wants("array") {
            let words: Vec<String> = t.split_whitespace().map(String::from).collect();
            if words.len() > 1 && !t.contains(['"', '\'', '\\']) {
                return format!(" (a list, one entry per word: {})", json_list(&words));
            }
            return format!(" (a list, even of one: [{}])", literal(v));
        }
    }
    if wants("integer") && v.is_f64() {
        return " (no fraction)".to_string();
    }
    example(glob)
        .map(|x| format!(" (e.g. {x})"))
        .unwrap_or_default()
}

/// `4 gigs` -> `4g`, `512MB` -> `512m`: the size a person most likely meant.
fn size_guess(s: &str) -> Option<String> {
    let t: String = s
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_lowercase();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = t.split_at(split);
    num.parse::<f64>().ok()?;
    let letter = match unit.chars().next()? {
        'k' => "k",
        'm' => "m",
        'g' => "g",
        't' => return Some(format!("{}g", num.parse::<f64>().ok()? * 1024.0)),
        'b' => "",
        _ => return None,
    };
    Some(format!("{num}{letter}"))
}

fn slug_guess(s: &str) -> String {
    let mut out: String = s
        .trim()
        .chars()
        .map(|c| match c {
            'A'..='Z' => c.to_ascii_lowercase(),
            'a'..='z' | '0'..='9' | '_' | '.' | '-' => c,
            _ => '_',
        })
        .collect();
    while out.starts_with(['_', '.', '-']) {
        out.remove(0);
    }
    out
}

fn env_name_words(f: &str, name: &Value) -> String {
    let s = name.as_str().unwrap_or_default();
    let guess: String = s
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let guess = if guess.starts_with(|c: char| c.is_ascii_digit()) {
        format!("_{guess}")
    } else {
        guess
    };
    let mean = if guess != s && !guess.is_empty() {
        format!("; did you mean \"{guess}\"?")
    } else {
        String::new()
    };
    format!(
        "{f}: {} is not an environment variable name: letters, digits and \"_\", not starting with a digit{mean}",
        literal(name)
    )
}

fn pattern_message(site: &Site<'_>, v: &Value, pattern: &str) -> String {
    let f = site.human();
    let s = v.as_str().unwrap_or_default();
    let lit = literal(v);
    let guess = |g: String| {
        if g != s && !g.is_empty() {
            format!("; did you mean \"{g}\"?")
        } else {
            String::new()
        }
    };
    match site.glob.as_str() {
        "limits.memory" => {
            let mean = size_guess(s)
                .filter(|g| g != s)
                .map(|g| format!(" (did you mean \"{g}\"?)"))
                .unwrap_or_default();
            format!("{f} {lit} is not a size: write e.g. 512m or 4g{mean}")
        }
        "id" | "role" => format!(
            "{f} {lit} is not a valid {f}: lowercase letters, digits, \"_\", \".\" and \"-\", starting with a letter or digit{}",
            guess(slug_guess(s))
        ),
        "locale" => {
            let g = match s.split_once(['_', '-']) {
                Some((l, c)) => format!("{}-{}", l.to_lowercase(), c.to_uppercase()),
                None => s.to_lowercase(),
            };
            format!(
                "{f} {lit} is not a locale: a language code such as \"en\" or \"ru\", optionally with a country, \"en-US\"{}",
                guess(g)
            )
        }
        "image" => format!(
            "{f} {lit} is not an image reference: a lowercase name with an optional registry and tag or digest, e.g. \"universal-worker-base:latest\" or \"ghcr.io/acme/worker:1.2\"{}",
            guess(s.trim().to_lowercase())
        ),
        "agent.type" => format!(
            "{f} {lit} is not an agent type: lowercase letters, digits and \"-\", e.g. \"claude-code\"{}",
            guess(s.trim().to_lowercase().replace([' ', '_'], "-"))
        ),
        "system_packages.*" => {
            let split = if s.split_whitespace().count() > 1 {
                format!(
                    " (one package per entry: {})",
                    json_list(&s.split_whitespace().map(String::from).collect::<Vec<_>>())
                )
            } else {
                String::new()
            };
            format!(
                "system_packages: {lit} is not a Debian package name: lowercase letters, digits, \"+\", \".\" and \"-\"{split}"
            )
        }
        "network" => format!(
            "{f} {lit} is not a Docker network name: letters, digits, \"_\", \".\" and \"-\", starting with a letter or digit"
        ),
        "env.*.from_env" => env_name_words(&f, v),
        "security.cap_add.*" => format!(
            "security.cap_add: {lit} is not a capability name: upper-case letters and \"_\", e.g. \"NET_BIND_SERVICE\"{}",
            guess(s.trim().to_uppercase().replace(['-', ' '], "_"))
        ),
        _ => format!(
            "{} {lit} does not have the required form (it must match the regular expression {pattern})",
            site.list_or_field()
        ),
    }
}

fn contains_message(site: &Site<'_>, v: &Value) -> String {
    let f = site.human();
    let items = v.as_array().map(Vec::as_slice).unwrap_or_default();
    let wanted = site
        .schema
        .and_then(|s| s.get("contains"))
        .and_then(|c| c.get("const"));
    let min = site
        .schema
        .and_then(|s| s.get("minContains"))
        .and_then(Value::as_u64)
        .unwrap_or(1);
    let max = site
        .schema
        .and_then(|s| s.get("maxContains"))
        .and_then(Value::as_u64);
    let Some(wanted) = wanted else {
        return format!("{f} does not contain the entries it must (see the schema's \"contains\")");
    };
    let n = items.iter().filter(|x| *x == wanted).count() as u64;
    let how_often = match (min, max) {
        (1, Some(1)) => "exactly once".to_string(),
        (a, Some(b)) if a == b => format!("exactly {a} times"),
        (a, Some(b)) => format!("between {a} and {b} times"),
        (1, None) => "at least once".to_string(),
        (a, None) => format!("at least {a} times"),
    };
    if site.glob != "agent.command" {
        return format!(
            "{f} must contain the element {} {how_often}; it has it {n} time(s)",
            literal(wanted)
        );
    }
    let why = "(the prompt is passed as its own argument)";
    if n > 1 {
        return format!(
            "{f} must contain the element \"{{prompt}}\" exactly once {why}; it has it {n} times"
        );
    }
    let inside = items
        .iter()
        .filter_map(Value::as_str)
        .find(|s| s.contains("{prompt}"));
    let fix = match inside {
        Some(long) => {
            let mut fixed: Vec<String> = Vec::new();
            let splittable = !long.contains(['"', '\'', '$', ';', '|', '&']);
            for x in items.iter().filter_map(Value::as_str) {
                if x == long && splittable {
                    fixed.extend(x.split_whitespace().map(String::from));
                } else {
                    fixed.push(x.to_string());
                }
            }
            let e_g = if splittable && fixed.iter().filter(|x| *x == "{prompt}").count() == 1 {
                format!(", e.g. {}", json_list(&fixed))
            } else {
                String::new()
            };
            format!(
                ": {} holds it inside a longer string, which is passed as written; make \"{{prompt}}\" an element of its own{e_g}",
                literal(&Value::String(long.to_string()))
            )
        }
        None => {
            let mut fixed: Vec<String> = items
                .iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect();
            if fixed.is_empty() {
                fixed = vec!["claude".into(), "-p".into()];
            }
            fixed.push("{prompt}".into());
            format!(", e.g. {}", json_list(&fixed))
        }
    };
    format!("{f} must contain the element \"{{prompt}}\" exactly once {why}{fix}")
}

fn one_of_message(
    root: &Value,
    site: &Site<'_>,
    v: &Value,
    schema: Option<&Value>,
    context: &[Vec<ValidationError<'static>>],
) -> Vec<FieldError> {
    let f = site.human();
    let branches: Vec<&Value> = schema
        .and_then(|s| s.get("oneOf").or_else(|| s.get("anyOf")))
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|b| resolve(root, b)).collect())
        .unwrap_or_default();
    let type_of = |b: &Value| b.get("type").and_then(Value::as_str).map(String::from);
    let json_type = match v {
        Value::String(_) => "string",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::Bool(_) => "boolean",
        Value::Null => "null",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    // The value has the type of exactly one form: what is wrong inside it
    // is the useful part (`{"from": "X"}` -> unknown key "from").
    let same_type: Vec<usize> = branches
        .iter()
        .enumerate()
        .filter(|(_, b)| {
            type_of(b).is_some_and(|t| t == json_type || (t == "number" && json_type == "integer"))
        })
        .map(|(i, _)| i)
        .collect();
    if let [i] = same_type[..] {
        if let Some(errors) = context.get(i) {
            let inner: Vec<FieldError> = errors.iter().flat_map(|e| describe(root, e)).collect();
            if !inner.is_empty() {
                return inner;
            }
        }
    }
    let forms: Vec<String> = if site.glob == "env.*" {
        vec!["a string".into(), "{\"from_env\": \"NAME\"}".into()]
    } else {
        branches
            .iter()
            .map(|b| type_of(b).map_or("another form".to_string(), |t| type_words(&t).to_string()))
            .collect()
    };
    vec![FieldError {
        field: site.field(),
        message: format!("{f} must be {}, got {}", or_list(&forms), value_words(v)),
    }]
}

// ------------------------------------------------------------ JSON syntax

/// A JSON syntax error of `bytes`, with line, column and the likely slip:
/// `not JSON at line 4, column 1: trailing comma (JSON allows no comma
/// after the last entry of an object or list)`.
pub fn json_error(bytes: &[u8], e: &serde_json::Error) -> String {
    let full = e.to_string();
    let what = full
        .rsplit_once(" at line ")
        .map_or(full.as_str(), |(w, _)| w)
        .to_string();
    let (line, column) = (e.line(), e.column());
    let text = String::from_utf8_lossy(bytes);
    if text.trim().is_empty() {
        return "not JSON: the file is empty (a preset is one JSON object, { ... })".to_string();
    }
    let at = text
        .lines()
        .nth(line.saturating_sub(1))
        .and_then(|l| l.chars().nth(column.saturating_sub(1)));
    let hint = if text.starts_with('\u{feff}') {
        "the file starts with a byte-order mark: save it as UTF-8 without BOM".to_string()
    } else if what.starts_with("trailing comma") {
        "JSON allows no comma after the last entry of an object or list".to_string()
    } else if what.starts_with("EOF while parsing") {
        "the file ends too early: a closing }, ] or \" is missing".to_string()
    } else if what.starts_with("key must be a string") {
        match at {
            Some('\'') => "keys take double quotes, not single quotes".to_string(),
            _ => "keys take double quotes: \"name\": ...".to_string(),
        }
    } else if what.starts_with("expected `,` or `}`") || what.starts_with("expected `,` or `]`") {
        "a comma is probably missing before this point".to_string()
    } else if what.starts_with("expected `:`") {
        "a key must be followed by a colon".to_string()
    } else if what.starts_with("control character") {
        "a string holds a raw line break or tab: write \\n or \\t".to_string()
    } else if what.starts_with("invalid escape") {
        "a backslash in a string starts an escape: write \\\\ for a backslash".to_string()
    } else if what.starts_with("trailing characters") {
        "there is more after the end of the object: a preset file holds one JSON object".to_string()
    } else if what.starts_with("expected ident") {
        "true, false and null are written in lower case, without quotes".to_string()
    } else if what.starts_with("expected value") {
        match at {
            Some('/') | Some('#') => "JSON allows no comments".to_string(),
            Some('\'') => "strings take double quotes, not single quotes".to_string(),
            Some(c) if c.is_alphabetic() => {
                "a text value needs double quotes; true, false and null are lower case".to_string()
            }
            _ => String::new(),
        }
    } else {
        String::new()
    };
    let hint = if hint.is_empty() {
        String::new()
    } else {
        format!(" ({hint})")
    };
    format!("not JSON at line {line}, column {column}: {what}{hint}")
}

// ---------------------------------------------------------------- warnings

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

/// A render failure of a preset, in words (`agent.type` with the known
/// types, `allowed_tools` with the skill file looked for).
pub fn render_problem(
    catalog: &Catalog,
    config: &WorkerConfig,
    e: &crate::model::render::RenderError,
    skills_dir: &str,
    templates_dir: &str,
) -> FieldError {
    use crate::model::render::RenderError;
    match e {
        RenderError::UnknownAgentType(t) => {
            let known: Vec<&str> = catalog.layouts.keys().map(String::as_str).collect();
            let list = if known.is_empty() {
                " (the templates directory has no agent layouts at all)".to_string()
            } else {
                format!(
                    " (known agent types: {}{})",
                    known.join(", "),
                    did_you_mean(t, &known)
                )
            };
            FieldError {
                field: "agent.type".into(),
                message: format!(
                    "agent.type {t:?} is not an agent type: there is no {}{list}",
                    join_path(templates_dir, &format!("{t}/agent.json"))
                ),
            }
        }
        RenderError::MissingSkill(tool) => FieldError {
            field: "allowed_tools".into(),
            message: format!(
                "allowed_tools: tool \"{tool}\" has no skill file {} (every allowed tool needs one)",
                join_path(skills_dir, &format!("{tool}.md"))
            ),
        },
        other => FieldError {
            field: match other {
                RenderError::Template { .. } => "agent.type".into(),
                _ => "(root)".into(),
            },
            message: format!(
                "{} (agent type {:?}, tools {})",
                other,
                config.agent.kind,
                Tool::ALL
                    .iter()
                    .filter(|t| config.allowed_tools.contains(t))
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    }
}

fn join_path(dir: &str, rest: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{rest}")
    } else {
        format!("{dir}/{rest}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::catalog::CatalogSources;
    use crate::model::config::ConfigSchema;
    use serde_json::json;

    fn valid() -> Value {
        json!({
            "id": "po_claude_v1",
            "name": "Product Owner (Claude)",
            "image": "universal-worker-base:latest",
            "agent": {"type": "claude-code", "command": ["claude", "-p", "{prompt}"]},
            "allowed_tools": ["project", "deploy", "respond"],
            "has_internet": true,
            "env": {"ANTHROPIC_API_KEY": {"from_env": "ANTHROPIC_API_KEY"}, "MODE": "x"},
            "limits": {"cpu": 2.0, "memory": "4g", "timeout_sec": 600, "ttl_sec": 7200}
        })
    }

    fn set(mut v: Value, pointer: &str, new: Value) -> Value {
        match v.pointer_mut(pointer) {
            Some(slot) => *slot = new,
            None => {
                let (parent, key) = pointer.rsplit_once('/').unwrap();
                v.pointer_mut(parent).unwrap()[key] = new;
            }
        }
        v
    }

    fn drop_key(mut v: Value, pointer: &str) -> Value {
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        let obj = if parent.is_empty() {
            &mut v
        } else {
            v.pointer_mut(parent).unwrap()
        };
        obj.as_object_mut().unwrap().remove(key);
        v
    }

    /// (field, message) of every error of `v`.
    fn errors(v: &Value) -> Vec<(String, String)> {
        ConfigSchema::new()
            .validate(v)
            .unwrap_err()
            .errors
            .into_iter()
            .map(|e| (e.field, e.message))
            .collect()
    }

    /// The only error of `v`.
    fn error(v: &Value) -> (String, String) {
        let all = errors(v);
        assert_eq!(all.len(), 1, "{all:#?}");
        all.into_iter().next().unwrap()
    }

    fn message(v: &Value) -> String {
        error(v).1
    }

    #[test]
    fn a_command_without_the_prompt_says_where_it_goes() {
        let v = set(valid(), "/agent/command", json!(["claude", "-p"]));
        assert_eq!(
            error(&v),
            (
                "agent.command".into(),
                r#"agent.command must contain the element "{prompt}" exactly once (the prompt is passed as its own argument), e.g. ["claude", "-p", "{prompt}"]"#.into()
            )
        );
    }

    #[test]
    fn a_prompt_inside_a_longer_argument_is_pointed_out() {
        let v = set(valid(), "/agent/command", json!(["claude", "-p {prompt}"]));
        assert_eq!(
            message(&v),
            r#"agent.command must contain the element "{prompt}" exactly once (the prompt is passed as its own argument): "-p {prompt}" holds it inside a longer string, which is passed as written; make "{prompt}" an element of its own, e.g. ["claude", "-p", "{prompt}"]"#
        );
    }

    #[test]
    fn a_prompt_given_twice_is_counted() {
        let v = set(
            valid(),
            "/agent/command",
            json!(["a", "{prompt}", "{prompt}"]),
        );
        assert_eq!(
            message(&v),
            r#"agent.command must contain the element "{prompt}" exactly once (the prompt is passed as its own argument); it has it 2 times"#
        );
    }

    #[test]
    fn a_memory_that_is_not_a_size_says_how_to_write_one() {
        let v = set(valid(), "/limits/memory", json!("4 gigs"));
        assert_eq!(
            error(&v),
            (
                "limits.memory".into(),
                r#"limits.memory "4 gigs" is not a size: write e.g. 512m or 4g (did you mean "4g"?)"#.into()
            )
        );
        let v = set(valid(), "/limits/memory", json!("512MB"));
        assert!(
            message(&v).ends_with(r#"(did you mean "512m"?)"#),
            "{}",
            message(&v)
        );
        let v = set(valid(), "/limits/memory", json!("lots"));
        assert_eq!(
            message(&v),
            r#"limits.memory "lots" is not a size: write e.g. 512m or 4g"#
        );
    }

    #[test]
    fn an_unknown_tool_lists_the_known_ones_and_guesses() {
        let v = set(valid(), "/allowed_tools", json!(["project", "deploi"]));
        assert_eq!(
            error(&v),
            (
                "allowed_tools.1".into(),
                r#"allowed_tools: unknown tool "deploi" (known: project, deploy, engineering, infra, respond, admin; did you mean "deploy"?)"#.into()
            )
        );
        let v = set(valid(), "/allowed_tools", json!(["Respond"]));
        assert!(message(&v).ends_with(r#"did you mean "respond"?)"#));
    }

    #[test]
    fn a_duplicate_tool_is_named() {
        let v = set(
            valid(),
            "/allowed_tools",
            json!(["project", "respond", "project"]),
        );
        assert_eq!(
            error(&v),
            (
                "allowed_tools".into(),
                r#"allowed_tools lists "project" twice: list each entry once"#.into()
            )
        );
    }

    #[test]
    fn a_misspelt_key_gets_a_did_you_mean_and_no_second_missing_message() {
        let mut v = drop_key(valid(), "/limits");
        v["limit"] = json!({"cpu": 1});
        assert_eq!(
            error(&v),
            (
                "limit".into(),
                r#"limit is not a known field; did you mean "limits"? (limits is required and missing)"#.into()
            )
        );
        let mut v = drop_key(valid(), "/allowed_tools");
        v["alowed_tools"] = json!(["respond"]);
        assert_eq!(
            message(&v),
            r#"alowed_tools is not a known field; did you mean "allowed_tools"? (allowed_tools is required and missing)"#
        );
        let v = set(valid(), "/limits/timeoutSec", json!(5));
        assert_eq!(
            error(&v),
            (
                "limits.timeoutSec".into(),
                r#"limits.timeoutSec is not a known field; did you mean "timeout_sec"?"#.into()
            )
        );
    }

    #[test]
    fn a_key_at_the_wrong_level_says_where_it_belongs() {
        let v = set(valid(), "/timeout_sec", json!(600));
        assert_eq!(
            message(&v),
            "timeout_sec is not a known field here; did you mean limits.timeout_sec? (move it there)"
        );
        let v = set(valid(), "/read_only_root", json!(true));
        assert_eq!(
            message(&v),
            "read_only_root is not a known field here; did you mean security.read_only_root? (move it there)"
        );
    }

    #[test]
    fn keys_named_as_in_other_tools_get_the_full_name() {
        let mut v = drop_key(valid(), "/allowed_tools");
        v["tools"] = json!(["respond"]);
        assert_eq!(
            message(&v),
            r#"tools is not a known field; did you mean "allowed_tools"? (allowed_tools is required and missing)"#
        );
        let v = set(
            valid(),
            "/limits",
            json!({"cpu": 1, "memory": "1g", "timeout": 60, "ttl": 600}),
        );
        assert_eq!(
            errors(&v),
            vec![
                ("limits.timeout".to_string(), r#"limits.timeout is not a known field; did you mean "timeout_sec"? (limits.timeout_sec is required and missing)"#.to_string()),
                ("limits.ttl".to_string(), r#"limits.ttl is not a known field; did you mean "ttl_sec"? (limits.ttl_sec is required and missing)"#.to_string()),
            ]
        );
    }

    #[test]
    fn an_empty_value_is_reported_once() {
        assert_eq!(
            error(&set(valid(), "/image", json!(""))),
            ("image".into(), "image must not be empty".into())
        );
        assert_eq!(
            error(&set(valid(), "/agent/command", json!([]))),
            (
                "agent.command".into(),
                r#"agent.command must not be empty, e.g. ["claude", "-p", "{prompt}"]"#.into()
            )
        );
    }

    #[test]
    fn a_command_written_as_one_string_is_split_into_a_list() {
        assert_eq!(
            message(&set(valid(), "/agent/command", json!("claude -p {prompt}"))),
            r#"agent.command must be a list, got the string "claude -p {prompt}" (a list, one entry per word: ["claude", "-p", "{prompt}"])"#
        );
    }

    #[test]
    fn an_option_outside_its_list_names_the_options() {
        assert_eq!(
            message(&set(valid(), "/agent/delivery", json!("tar"))),
            r#"agent.delivery must be "stdin" or "archive", got the string "tar""#
        );
        assert_eq!(
            message(&set(valid(), "/agent/delivery", json!("Archive"))),
            r#"agent.delivery must be "stdin" or "archive", got the string "Archive"; did you mean "archive"?"#
        );
    }

    #[test]
    fn an_unknown_key_with_no_near_miss_lists_the_known_ones() {
        let v = set(valid(), "/limits/gpu", json!(1));
        assert_eq!(
            error(&v),
            (
                "limits.gpu".into(),
                "limits.gpu is not a known field (known: cpu, memory, pids, timeout_sec, ttl_sec)"
                    .into()
            )
        );
    }

    #[test]
    fn wrong_types_say_what_was_expected_and_what_came() {
        let cases = [
            (
                "/limits/cpu",
                json!("two"),
                r#"limits.cpu must be a number, got the string "two" (e.g. 2 or 0.5)"#,
            ),
            (
                "/limits/cpu",
                json!("2"),
                r#"limits.cpu must be a number, got the string "2" (write it without quotes: 2)"#,
            ),
            (
                "/has_internet",
                json!("yes"),
                r#"has_internet must be true or false, got the string "yes" (write true without quotes)"#,
            ),
            (
                "/limits/timeout_sec",
                json!(1.5),
                "limits.timeout_sec must be a whole number, got the number 1.5 (no fraction)",
            ),
            (
                "/system_packages",
                json!("git"),
                r#"system_packages must be a list, got the string "git" (a list, even of one: ["git"])"#,
            ),
            (
                "/network",
                json!(5),
                "network must be a string or null, got the number 5",
            ),
            (
                "/limits/memory",
                json!(4),
                r#"limits.memory must be a string, got the number 4 (e.g. "4g")"#,
            ),
            (
                "/agent",
                json!("claude"),
                r#"agent must be an object, got the string "claude""#,
            ),
        ];
        for (pointer, value, want) in cases {
            assert_eq!(message(&set(valid(), pointer, value)), want, "{pointer}");
        }
        assert_eq!(
            message(&json!([])),
            "the preset must be an object, got an empty list"
        );
    }

    #[test]
    fn a_missing_required_field_says_what_it_is() {
        assert_eq!(
            error(&drop_key(valid(), "/limits/ttl_sec")),
            (
                "limits.ttl_sec".into(),
                "limits.ttl_sec is required but missing: the longest a session or pool container lives, in seconds, e.g. 7200".into()
            )
        );
        assert_eq!(
            message(&drop_key(valid(), "/agent")),
            r#"agent is required but missing: which agent runs and how, e.g. {"type": "claude-code", "command": ["claude", "-p", "{prompt}"]}"#
        );
        assert_eq!(
            message(&drop_key(valid(), "/agent/type")),
            r#"agent.type is required but missing: the agent type (a folder of the templates directory), e.g. "claude-code""#
        );
    }

    #[test]
    fn numbers_out_of_range_give_the_bound_in_words() {
        let cases = [
            (
                "/limits/timeout_sec",
                json!(0),
                "limits.timeout_sec must be at least 1 second, got 0",
            ),
            (
                "/limits/ttl_sec",
                json!(9_999_999),
                "limits.ttl_sec must be at most 2592000 seconds (30 days), got 9999999",
            ),
            (
                "/limits/cpu",
                json!(0),
                "limits.cpu must be at least 0.01, got 0",
            ),
            (
                "/pool",
                json!({"size": 100}),
                "pool.size must be at most 64, got 100",
            ),
            (
                "/limits/pids",
                json!(3),
                "limits.pids must be at least 16, got 3",
            ),
        ];
        for (pointer, value, want) in cases {
            assert_eq!(message(&set(valid(), pointer, value)), want, "{pointer}");
        }
    }

    #[test]
    fn values_of_the_wrong_form_say_the_form_in_words() {
        let cases = [
            (
                "/id",
                json!("PO Claude"),
                r#"id "PO Claude" is not a valid id: lowercase letters, digits, "_", "." and "-", starting with a letter or digit; did you mean "po_claude"?"#,
            ),
            (
                "/locale",
                json!("en_US"),
                r#"locale "en_US" is not a locale: a language code such as "en" or "ru", optionally with a country, "en-US"; did you mean "en-US"?"#,
            ),
            (
                "/image",
                json!("Ubuntu:22.04"),
                r#"image "Ubuntu:22.04" is not an image reference: a lowercase name with an optional registry and tag or digest, e.g. "universal-worker-base:latest" or "ghcr.io/acme/worker:1.2"; did you mean "ubuntu:22.04"?"#,
            ),
            (
                "/agent/type",
                json!("Claude Code"),
                r#"agent.type "Claude Code" is not an agent type: lowercase letters, digits and "-", e.g. "claude-code"; did you mean "claude-code"?"#,
            ),
            (
                "/system_packages",
                json!(["git curl"]),
                r#"system_packages: "git curl" is not a Debian package name: lowercase letters, digits, "+", "." and "-" (one package per entry: ["git", "curl"])"#,
            ),
            (
                "/security",
                json!({"cap_add": ["net_admin"]}),
                r#"security.cap_add: "net_admin" is not a capability name: upper-case letters and "_", e.g. "NET_BIND_SERVICE"; did you mean "NET_ADMIN"?"#,
            ),
            (
                "/env",
                json!({"MY-VAR": "x"}),
                r#"env: "MY-VAR" is not an environment variable name: letters, digits and "_", not starting with a digit; did you mean "MY_VAR"?"#,
            ),
            (
                "/env",
                json!({"K": {"from_env": "1KEY"}}),
                r#"env.K.from_env: "1KEY" is not an environment variable name: letters, digits and "_", not starting with a digit; did you mean "_1KEY"?"#,
            ),
        ];
        for (pointer, value, want) in cases {
            assert_eq!(message(&set(valid(), pointer, value)), want, "{pointer}");
        }
        assert_eq!(error(&set(valid(), "/env", json!({"1BAD": "x"}))).0, "env");
    }

    #[test]
    fn env_values_say_both_allowed_forms() {
        assert_eq!(
            error(&set(valid(), "/env", json!({"A": 1}))),
            (
                "env.A".into(),
                r#"env.A must be a string or {"from_env": "NAME"}, got the number 1"#.into()
            )
        );
        assert_eq!(
            error(&set(valid(), "/env", json!({"A": {"from_env": 5}}))),
            (
                "env.A.from_env".into(),
                "env.A.from_env must be a string, got the number 5".into()
            )
        );
        assert_eq!(
            error(&set(valid(), "/env", json!({"A": {"from": "B"}}))),
            (
                "env.A.from".into(),
                r#"env.A.from is not a known field; did you mean "from_env"? (env.A.from_env is required and missing)"#.into()
            )
        );
    }

    #[test]
    fn lengths_and_counts_are_stated() {
        assert_eq!(
            message(&set(valid(), "/name", json!(""))),
            "name must not be empty"
        );
        let long = "x".repeat(2001);
        let m = message(&set(valid(), "/description", json!(long)));
        assert!(
            m.starts_with("description \"xxxx")
                && m.ends_with("is 2001 characters long; at most 2000 are allowed"),
            "{m}"
        );
        let many: Vec<String> = (0..65).map(|i| format!("p{i}")).collect();
        assert_eq!(
            message(&set(valid(), "/system_packages", json!(many))),
            "system_packages has 65 entries; at most 64 are allowed"
        );
    }

    #[test]
    fn rules_beyond_the_schema_name_their_field() {
        assert_eq!(
            error(&set(valid(), "/limits/memory", json!("1k"))),
            (
                "limits.memory".into(),
                r#"limits.memory "1k" is below Docker's minimum of 6m"#.into()
            )
        );
        assert_eq!(
            message(&set(valid(), "/env", json!({"ORCHESTRATOR_API_KEY": "x"}))),
            "env.ORCHESTRATOR_API_KEY: names starting with ORCHESTRATOR_ are reserved for the daemon, which sets them itself; choose another name"
        );
        let m = message(&set(valid(), "/image", json!("x:")));
        assert!(
            m.starts_with(r#"image "x:" is not a valid image reference: "#),
            "{m}"
        );
    }

    /// Errors of `instance` against a schema of the test's own, as a
    /// later schema rule (a new floor, a new pattern) would give them.
    fn errors_against(schema: Value, instance: Value) -> Vec<String> {
        let validator = jsonschema::draft202012::new(&schema).unwrap();
        validator
            .iter_errors(&instance)
            .flat_map(|e| describe(&schema, &e))
            .map(|e| e.message)
            .collect()
    }

    #[test]
    fn rules_without_a_sentence_of_their_own_still_read_well() {
        let schema = json!({
            "type": "object",
            "properties": {
                "limits": {"type": "object", "properties": {
                    "timeout_sec": {"type": "integer", "minimum": 10},
                    "cpu": {"type": "number", "exclusiveMinimum": 0.1},
                    "tag": {"type": "string", "pattern": "^v[0-9]+$"}
                }},
                "list": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]+$"}},
                "mode": {"const": "fast"},
                "names": {"type": "object", "propertyNames": {"pattern": "^[a-z]+$"}}
            }
        });
        let got = errors_against(
            schema,
            json!({
                "limits": {"timeout_sec": 5, "cpu": 0.05, "tag": "1.0"},
                "list": ["ok", "NOT"],
                "mode": "slow",
                "names": {"Bad": 1}
            }),
        );
        let want = [
            "limits.timeout_sec must be at least 10 seconds, got 5",
            "limits.cpu must be more than 0.1, got 0.05",
            r#"limits.tag "1.0" does not have the required form (it must match the regular expression ^v[0-9]+$)"#,
            r#"list "NOT" does not have the required form (it must match the regular expression ^[a-z]+$)"#,
            r#"mode must be "fast", got the string "slow""#,
            r#"names: "Bad" is not a valid name"#,
        ];
        for w in want {
            assert!(got.iter().any(|g| g == w), "missing {w:?} in {got:#?}");
        }
        assert_eq!(got.len(), want.len(), "{got:#?}");
    }

    #[test]
    fn json_syntax_errors_give_line_column_and_the_likely_slip() {
        let cases: [(&str, &str); 9] = [
            ("{\n  \"id\": \"a\",\n}\n", "not JSON at line 3, column 1: trailing comma (JSON allows no comma after the last entry of an object or list)"),
            ("", "not JSON: the file is empty (a preset is one JSON object, { ... })"),
            ("{\n  // the id\n  \"id\": \"a\"\n}", "not JSON at line 2, column 3: key must be a string (keys take double quotes: \"name\": ...)"),
            ("{\"id\": // the id\n \"a\"}", "not JSON at line 1, column 8: expected value (JSON allows no comments)"),
            ("{'id': 'a'}", "not JSON at line 1, column 2: key must be a string (keys take double quotes, not single quotes)"),
            ("{\"id\": \"a\"\n \"name\": \"b\"}", "not JSON at line 2, column 2: expected `,` or `}` (a comma is probably missing before this point)"),
            ("{\"has_internet\": yes}", "not JSON at line 1, column 18: expected value (a text value needs double quotes; true, false and null are lower case)"),
            ("{\"id\": \"a\"", "not JSON at line 1, column 10: EOF while parsing an object (the file ends too early: a closing }, ] or \" is missing)"),
            ("\u{feff}{\"id\": \"a\"}", "not JSON at line 1, column 1: expected value (the file starts with a byte-order mark: save it as UTF-8 without BOM)"),
        ];
        for (text, want) in cases {
            let e = serde_json::from_slice::<Value>(text.as_bytes()).unwrap_err();
            assert_eq!(json_error(text.as_bytes(), &e), want, "{text:?}");
        }
    }

    #[test]
    fn near_misses_allow_case_separators_plurals_and_typos() {
        let c = ["allowed_tools", "limits", "timeout_sec", "has_internet"];
        assert_eq!(near_miss("alowed_tools", &c), Some("allowed_tools"));
        assert_eq!(near_miss("limit", &c), Some("limits"));
        assert_eq!(near_miss("timeoutSec", &c), Some("timeout_sec"));
        assert_eq!(near_miss("HAS-INTERNET", &c), Some("has_internet"));
        assert_eq!(near_miss("colour", &c), None);
        assert_eq!(
            near_miss("ttl", &["timeout_sec", "ttl_sec"]),
            Some("ttl_sec")
        );
        assert_eq!(
            near_miss("gpu", &["cpu"]),
            None,
            "short words need more than a letter"
        );
        assert_eq!(near_miss("limits", &c), None, "an exact name is no slip");
    }

    fn config(v: Value) -> WorkerConfig {
        ConfigSchema::new().validate(&v).unwrap()
    }

    fn warnings(v: Value, max_concurrent: Option<usize>) -> Vec<(String, String)> {
        config_warnings(&config(v), &Context { max_concurrent })
            .into_iter()
            .map(|w| (w.field, w.message))
            .collect()
    }

    #[test]
    fn a_sound_preset_has_no_warnings() {
        assert_eq!(warnings(valid(), Some(16)), vec![]);
    }

    #[test]
    fn a_ttl_shorter_than_the_timeout_is_a_warning_naming_both() {
        let v = set(valid(), "/limits/ttl_sec", json!(300));
        assert_eq!(
            warnings(v, None),
            vec![(
                "limits.ttl_sec".into(),
                "limits.ttl_sec (300) is shorter than limits.timeout_sec (600): a session's container lives only ttl_sec, so a task in a session is stopped before its timeout".into()
            )]
        );
    }

    #[test]
    fn a_pool_that_can_never_serve_is_a_warning() {
        let v = set(valid(), "/limits/ttl_sec", json!(600));
        let v = set(v, "/pool", json!({"size": 2}));
        assert_eq!(
            warnings(v, None),
            vec![(
                "pool.size".into(),
                "pool.size is 2 but limits.ttl_sec (600) is not longer than limits.timeout_sec (600): a pool container takes a request only while it has a whole timeout_sec of life left, so this pool never serves one (make ttl_sec longer than timeout_sec)".into()
            )]
        );
    }

    #[test]
    fn a_pool_larger_than_the_daemon_keeps_is_a_warning() {
        let v = set(valid(), "/pool", json!({"size": 10}));
        assert_eq!(warnings(v.clone(), None), vec![]);
        assert_eq!(warnings(v.clone(), Some(20)), vec![]);
        assert_eq!(
            warnings(v, Some(16)),
            vec![(
                "pool.size".into(),
                "pool.size (10) is more than the daemon keeps ready: pools hold at most half of max_concurrent (16 / 2 = 8) containers in all, so at most 8 of these are kept".into()
            )]
        );
    }

    #[test]
    fn a_network_without_internet_is_a_warning() {
        let v = set(valid(), "/has_internet", json!(false));
        let v = set(v, "/network", json!("corp"));
        assert_eq!(
            warnings(v, None),
            vec![(
                "network".into(),
                r#"network "corp" is attached while has_internet is false: has_internet only chooses the daemon's own network, so if "corp" has a route out the worker reaches the internet through it"#.into()
            )]
        );
    }

    #[test]
    fn a_prompt_placeholder_inside_another_argument_is_a_warning() {
        let v = set(
            valid(),
            "/agent/command",
            json!(["claude", "--name={prompt}", "-p", "{prompt}"]),
        );
        assert_eq!(
            warnings(v, None),
            vec![(
                "agent.command.1".into(),
                r#"agent.command[1] "--name={prompt}" contains {prompt} inside a longer string: only the element that is exactly "{prompt}" is replaced by the prompt, this one is passed as written"#.into()
            )]
        );
    }

    #[test]
    fn a_secret_written_into_the_preset_is_a_warning() {
        let v = set(
            valid(),
            "/env",
            json!({"GITHUB_TOKEN": "ghp_x", "MODE": "ci", "API_KEY": {"from_env": "K"}}),
        );
        assert_eq!(
            warnings(v, None),
            vec![(
                "env.GITHUB_TOKEN".into(),
                r#"env.GITHUB_TOKEN is written in the preset as plain text: if it is a secret, put it in the daemon's environment and write {"from_env": "GITHUB_TOKEN"} (then it is kept out of events, results and logs)"#.into()
            )]
        );
    }

    fn catalog_of(presets: &[Value], templates: &[&str]) -> Catalog {
        let sources = CatalogSources {
            presets: presets
                .iter()
                .map(|p| (format!("{}.json", p["id"].as_str().unwrap()), p.to_string().into_bytes()))
                .collect(),
            skills: Tool::ALL
                .iter()
                .map(|t| (format!("{t}.md"), format!("---\nname: {t}\ndescription: d\n---\n").into_bytes()))
                .collect(),
            templates: std::iter::once((
                "claude-code/agent.json".to_string(),
                br#"{"instructions_path": "/workspace/CLAUDE.md", "skill_path": "/workspace/{tool}.md"}"#.to_vec(),
            ))
            .chain(templates.iter().map(|t| (t.to_string(), b"x".to_vec())))
            .collect(),
        };
        let (catalog, issues) = Catalog::build(&sources, &ConfigSchema::new(), None);
        assert_eq!(issues, vec![]);
        catalog
    }

    #[test]
    fn a_role_no_template_knows_is_a_warning_with_a_guess() {
        let p = set(valid(), "/role", json!("develper"));
        let c = catalog_of(
            &[p],
            &["claude-code/developer.md.tera", "claude-code/po.ru.md.tera"],
        );
        let ws = catalog_warnings(&c, &Context::default());
        assert_eq!(
            ws,
            vec![CatalogIssue {
                file: "presets/po_claude_v1.json".into(),
                field: Some("role".into()),
                message: r#"role "develper" has no instruction template for any agent type (no <type>/develper.md.tera), so the instructions come from __builtin__/default.md.tera; roles with templates: developer, po; did you mean "developer"?"#.into(),
            }]
        );
        // A role some agent type knows is fine for the others.
        let p = set(valid(), "/role", json!("po"));
        let c = catalog_of(&[p], &["codex/po.md.tera"]);
        assert_eq!(catalog_warnings(&c, &Context::default()), vec![]);
    }

    #[test]
    fn pools_that_together_exceed_the_budget_are_a_warning() {
        let a = set(set(valid(), "/id", json!("a")), "/pool", json!({"size": 3}));
        let b = set(set(valid(), "/id", json!("b")), "/pool", json!({"size": 3}));
        let c = catalog_of(&[a, b], &[]);
        let ws = catalog_warnings(
            &c,
            &Context {
                max_concurrent: Some(10),
            },
        );
        assert_eq!(
            ws,
            vec![CatalogIssue {
                file: "presets/".into(),
                field: Some("pool.size".into()),
                message: "pool.size of the presets adds up to 6 containers (a: 3, b: 3), but the daemon keeps at most half of max_concurrent (10 / 2 = 5) ready in all".into(),
            }]
        );
        assert_eq!(
            catalog_warnings(
                &c,
                &Context {
                    max_concurrent: Some(12)
                }
            ),
            vec![]
        );
    }

    #[test]
    fn render_problems_name_the_file_looked_for() {
        let c = catalog_of(&[], &[]);
        let cfg = config(set(valid(), "/agent/type", json!("claude-cod")));
        let e = crate::model::render::render(&c, &cfg).unwrap_err();
        assert_eq!(
            render_problem(&c, &cfg, &e, "skills", "/t/templates/"),
            FieldError {
                field: "agent.type".into(),
                message: r#"agent.type "claude-cod" is not an agent type: there is no /t/templates/claude-cod/agent.json (known agent types: claude-code; did you mean "claude-code"?)"#.into(),
            }
        );
        let e = crate::model::render::RenderError::MissingSkill(Tool::Deploy);
        let cfg = config(valid());
        assert_eq!(
            render_problem(&c, &cfg, &e, "/s", "t").message,
            r#"allowed_tools: tool "deploy" has no skill file /s/deploy.md (every allowed tool needs one)"#
        );
    }
}

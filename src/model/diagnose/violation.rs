//! One sentence per JSON Schema violation of a preset: it names the field,
//! says in words what is wrong with the value and what would be valid.

use jsonschema::error::{ValidationError, ValidationErrorKind};
use serde_json::Value;

use super::site::{child, field_of, keyword_parent, resolve, segments_of, site, Site};
use super::words::{
    did_you_mean, example, field_hint, json_list, literal, near_miss, or_list, type_words,
    value_words, with_unit,
};
use crate::model::config::FieldError;

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
            .map(|b| match b.get("const") {
                Some(c) => c.to_string(),
                None => {
                    type_of(b).map_or("another form".to_string(), |t| type_words(&t).to_string())
                }
            })
            .collect()
    };
    vec![FieldError {
        field: site.field(),
        message: format!("{f} must be {}, got {}", or_list(&forms), value_words(v)),
    }]
}

//! Values and fields in words: a value as JSON and as a phrase, lists,
//! durations, the near miss a misspelt name most likely is, and what each
//! field of a preset holds.

use serde_json::Value;

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

pub(super) fn type_words(t: &str) -> &'static str {
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
pub(super) fn json_list(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|s| Value::String(s.clone()).to_string())
        .collect();
    format!("[{}]", quoted.join(", "))
}

pub(super) fn or_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// `600 seconds (10 minutes)` style, for the `*_sec` fields.
pub(super) fn with_unit(glob: &str, n: &Value) -> String {
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

pub(super) fn did_you_mean(word: &str, candidates: &[&str]) -> String {
    near_miss(word, candidates)
        .map(|c| format!("; did you mean \"{c}\"?"))
        .unwrap_or_default()
}

// ------------------------------------------------------- words per field

/// What a field is, for "missing" sentences.
pub(super) fn field_hint(glob: &str) -> Option<&'static str> {
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
pub(super) fn example(glob: &str) -> Option<&'static str> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}

//! Human-readable output of a successful call's `data` (the default without
//! `--json`): `key: value` records, aligned tables, log lines. Pure.

use serde_json::{Map, Value};

use crate::call::Call;

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Array(items) if items.iter().all(|i| !i.is_object() && !i.is_array()) => {
            if items.is_empty() {
                "-".to_owned()
            } else {
                items.iter().map(scalar).collect::<Vec<_>>().join(", ")
            }
        }
        other => other.to_string(),
    }
}

/// Keys in display order: identifying keys first, then the rest as given.
fn ordered_keys<'a>(keys: impl IntoIterator<Item = &'a String>) -> Vec<&'a String> {
    const FIRST: &[&str] = &["id", "request_id", "name"];
    let keys: Vec<&String> = keys.into_iter().collect();
    let mut out: Vec<&String> = FIRST
        .iter()
        .filter_map(|f| keys.iter().find(|k| k.as_str() == *f).copied())
        .collect();
    out.extend(keys.iter().filter(|k| !FIRST.contains(&k.as_str())));
    out
}

/// `key: value` lines of an object.
pub fn format_record(m: &Map<String, Value>) -> String {
    ordered_keys(m.keys())
        .into_iter()
        .map(|k| format!("{k}: {}", scalar(&m[k.as_str()])))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One line per item; objects become aligned columns under a header line.
pub fn format_list(name: &str, items: &[Value]) -> String {
    if items.is_empty() {
        return format!("no {name}");
    }
    if !items.iter().all(Value::is_object) {
        return items.iter().map(scalar).collect::<Vec<_>>().join("\n");
    }
    let mut keys: Vec<String> = Vec::new();
    for item in items {
        for k in item.as_object().into_iter().flat_map(Map::keys) {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
    }
    let cols: Vec<&String> = ordered_keys(keys.iter());
    let mut rows: Vec<Vec<String>> = vec![cols.iter().map(|c| c.to_string()).collect()];
    for item in items {
        rows.push(
            cols.iter()
                .map(|c| {
                    item.get(c.as_str())
                        .map(scalar)
                        .unwrap_or_else(|| "-".into())
                })
                .collect(),
        );
    }
    let widths: Vec<usize> = (0..cols.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            let mut line = String::new();
            for (i, cell) in r.iter().enumerate() {
                if i + 1 == r.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    let pad = widths[i] - cell.chars().count() + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            line.trim_end().to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Human-readable rendering of the `data` of a successful call.
///
/// * `respond` prints `sent`;
/// * `{"lines": [...]}` (deploy logs) prints the lines as they are;
/// * `{"<name>": {...}}` prints the object as `key: value` lines;
/// * `{"<name>": [...]}` prints one line per item (a table for objects);
/// * any other object prints as `key: value` lines.
pub fn format_human(call: &Call, data: &Value) -> String {
    if call.group == "respond" {
        return "sent".to_owned();
    }
    match data {
        Value::Object(m) => {
            if let Some(Value::Array(lines)) = m.get("lines") {
                if lines.iter().all(Value::is_string) {
                    return lines.iter().map(scalar).collect::<Vec<_>>().join("\n");
                }
            }
            if m.len() == 1 {
                let (k, v) = m.iter().next().expect("one entry");
                match v {
                    Value::Object(inner) => return format_record(inner),
                    Value::Array(items) => return format_list(k, items),
                    _ => {}
                }
            }
            format_record(m)
        }
        Value::Array(items) => format_list("items", items),
        Value::Null => String::new(),
        other => scalar(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::call;
    use serde_json::json;

    #[test]
    fn human_respond() {
        let c = call(&["respond", "hi"]);
        assert_eq!(
            format_human(&c, &json!({"delivered": true, "message_id": "m"})),
            "sent"
        );
    }

    #[test]
    fn human_single_object() {
        let c = call(&["project", "get", "proj_42"]);
        let data = json!({"project": {
            "created_at": "2024-05-01T10:00:00Z",
            "description": null,
            "id": "proj_42",
            "name": "billing-api"
        }});
        let out = format_human(&c, &data);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "id: proj_42");
        assert_eq!(lines[1], "name: billing-api");
        assert!(lines.contains(&"description: -"));
        assert!(lines.contains(&"created_at: 2024-05-01T10:00:00Z"));
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn human_list() {
        let c = call(&["project", "list"]);
        let data = json!({"projects": [
            {"id": "proj_42", "name": "billing-api"},
            {"id": "proj_7", "name": "landing-page"}
        ]});
        assert_eq!(
            format_human(&c, &data),
            "id       name\nproj_42  billing-api\nproj_7   landing-page"
        );
        assert_eq!(format_human(&c, &json!({"projects": []})), "no projects");
    }

    #[test]
    fn human_workers_table_puts_request_id_first() {
        let c = call(&["admin", "workers"]);
        let data = json!({"workers": [
            {"preset": "po", "request_id": "req_1", "session_id": null},
        ]});
        let out = format_human(&c, &data);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("request_id"), "{out}");
        assert!(lines[1].starts_with("req_1"), "{out}");
        assert!(lines[1].ends_with('-'), "{out}");
    }

    #[test]
    fn human_logs_and_flat_objects() {
        let c = call(&["deploy", "logs", "dep_1"]);
        let data = json!({"deploy_id": "dep_1", "lines": ["a b", "c"]});
        assert_eq!(format_human(&c, &data), "a b\nc");
        let c = call(&["admin", "cancel", "req_1"]);
        let data = json!({"cancelled": true, "request_id": "req_1"});
        assert_eq!(
            format_human(&c, &data),
            "request_id: req_1\ncancelled: true"
        );
        let c = call(&["engineering", "status", "t"]);
        let data = json!({"task": {"id": "t", "links": ["u1", "u2"]}});
        assert_eq!(format_human(&c, &data), "id: t\nlinks: u1, u2");
    }
}

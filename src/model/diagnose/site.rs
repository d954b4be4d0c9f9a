//! Where a schema violation sits: its instance path, that path as a glob
//! (`env.*.from_env`) and the schema governing it, walked from the root
//! schema through its local `$ref`s.

use serde_json::Value;

/// Where a violation sits: the instance path and the schema governing it.
pub(super) struct Site<'s> {
    /// Instance path segments (`["limits", "memory"]`).
    pub(super) segments: Vec<String>,
    /// The same path with every array index and free-form key as `*`
    /// (`env.*.from_env`): the key of the field-specific sentences.
    pub(super) glob: String,
    /// The (resolved) schema at that path, when the walk found one.
    pub(super) schema: Option<&'s Value>,
}

impl Site<'_> {
    /// Dotted field, as results and events carry it (`allowed_tools.1`).
    pub(super) fn field(&self) -> String {
        field_of(&self.segments)
    }

    /// The field as a person reads it (`agent.command[2]`).
    pub(super) fn human(&self) -> String {
        human_of(&self.segments)
    }

    /// The enclosing array of an item, in words (`allowed_tools`), else the
    /// field itself: an item is best named by its value inside its list.
    pub(super) fn list_or_field(&self) -> String {
        match self.segments.last() {
            Some(last) if last.parse::<usize>().is_ok() => {
                human_of(&self.segments[..self.segments.len() - 1])
            }
            _ => self.human(),
        }
    }
}

pub(super) fn field_of(segments: &[String]) -> String {
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
pub(super) fn resolve<'s>(root: &'s Value, mut s: &'s Value) -> &'s Value {
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

pub(super) fn site<'s>(root: &'s Value, segments: Vec<String>) -> Site<'s> {
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
pub(super) fn keyword_parent<'s>(root: &'s Value, keyword_path: &str) -> Option<&'s Value> {
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

pub(super) fn segments_of(pointer: &str) -> Vec<String> {
    if pointer.is_empty() {
        return Vec::new();
    }
    pointer
        .trim_start_matches('/')
        .split('/')
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect()
}

pub(super) fn child(segments: &[String], key: &str) -> Vec<String> {
    let mut v = segments.to_vec();
    v.push(key.to_string());
    v
}

//! Redaction of secrets from everything that leaves the daemon: events,
//! results, logs and dead letters. A secret is also found in its common
//! encodings (base64 in all three alignments, URL-safe base64, percent
//! encoding, hex).
//!
//! This module does no I/O.

use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine;

/// What a secret is replaced with.
pub const MASK: &str = "[REDACTED]";

/// Shortest fragment worth redacting: shorter ones would mask innocent text.
const MIN_NEEDLE: usize = 6;

/// Replaces known secrets (and their encodings) with [`MASK`].
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    needles: Vec<String>,
}

impl Redactor {
    /// Adds a secret and its encodings.
    pub fn add(&mut self, secret: &str) {
        if secret.len() < 4 {
            return;
        }
        let mut push = |s: String| {
            if s.len() >= MIN_NEEDLE.min(secret.len()) && !self.needles.contains(&s) {
                self.needles.push(s);
            }
        };
        push(secret.to_string());
        let enc = percent_encoding::utf8_percent_encode(secret, percent_encoding::NON_ALPHANUMERIC)
            .to_string();
        push(enc);
        push(hex::encode(secret));
        push(hex::encode_upper(secret));
        // Base64 of a secret embedded in a longer text depends on its offset
        // modulo 3: keep the characters that only the secret's bits decide.
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            for k in 0..3usize {
                let mut buf = vec![0u8; k];
                buf.extend_from_slice(secret.as_bytes());
                let enc = engine.encode(&buf);
                let first = (8 * k).div_ceil(6);
                let last = (8 * buf.len()) / 6;
                if last > first {
                    let core = &enc[first..last.min(enc.len())];
                    if core.len() >= MIN_NEEDLE {
                        push(core.to_string());
                    }
                }
            }
        }
        // Longest first, so a secret is masked whole before its fragments.
        self.needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
    }

    /// Adds every secret of `other`.
    pub fn extend(&mut self, other: &Redactor) {
        for n in &other.needles {
            if !self.needles.contains(n) {
                self.needles.push(n.clone());
            }
        }
        self.needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
    }

    /// Whether no secret is known.
    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// `text` with every known secret masked.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for n in &self.needles {
            if out.contains(n.as_str()) {
                out = out.replace(n.as_str(), MASK);
            }
        }
        out
    }

    /// Redacts every string inside a JSON value.
    pub fn redact_json(&self, v: &mut serde_json::Value) {
        if self.needles.is_empty() {
            return;
        }
        match v {
            serde_json::Value::String(s) => *s = self.redact(s),
            serde_json::Value::Array(a) => a.iter_mut().for_each(|x| self.redact_json(x)),
            serde_json::Value::Object(m) => m.values_mut().for_each(|x| self.redact_json(x)),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &str = "sk-ant-SuperSecret/Value+42==";

    fn r() -> Redactor {
        let mut r = Redactor::default();
        r.add(SECRET);
        r
    }

    #[test]
    fn a_plain_secret_is_masked() {
        assert_eq!(
            r().redact(&format!("key={SECRET}!")),
            format!("key={MASK}!")
        );
    }

    #[test]
    fn percent_and_hex_encodings_are_masked() {
        let pct = percent_encoding::utf8_percent_encode(SECRET, percent_encoding::NON_ALPHANUMERIC)
            .to_string();
        assert!(!r().redact(&format!("u?k={pct}")).contains(&pct));
        assert!(!r()
            .redact(&hex::encode(SECRET))
            .contains(&hex::encode(SECRET)));
    }

    proptest! {
        #[test]
        fn base64_of_a_secret_inside_any_text_is_masked(prefix in "[a-z ]{0,7}", suffix in "[a-z ]{0,7}") {
            let text = format!("{prefix}{SECRET}{suffix}");
            for engine in [&base64::engine::general_purpose::STANDARD, &base64::engine::general_purpose::URL_SAFE] {
                let enc = engine.encode(text.as_bytes());
                let out = r().redact(&enc);
                prop_assert!(out.contains(MASK), "{} -> {}", enc, out);
            }
        }
    }

    #[test]
    fn json_strings_are_redacted_in_place() {
        let mut v = serde_json::json!({"a": [SECRET], "b": {"c": format!("x{SECRET}")}});
        r().redact_json(&mut v);
        assert!(!v.to_string().contains("SuperSecret"));
    }

    #[test]
    fn tiny_secrets_are_not_used_as_needles() {
        let mut r = Redactor::default();
        r.add("ab");
        assert_eq!(r.redact("abc"), "abc");
    }
}

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

/// What `encodeURIComponent` and RFC 3986 leave alone: alphanumerics and `-._~`.
const URI_COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `s` with the hex digits of its `%XX` escapes in lower case.
fn lowercase_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut left = 0;
    for c in s.chars() {
        if c == '%' {
            left = 2;
            out.push(c);
        } else if left > 0 {
            left -= 1;
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

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
        // Percent encodings as encoders write them: every non-alphanumeric
        // byte, or RFC 3986 style (`-._~` kept); `%2F` or `%2f`; a space as
        // `%20` or, in form encoding, `+`.
        for set in [percent_encoding::NON_ALPHANUMERIC, URI_COMPONENT] {
            let upper = percent_encoding::utf8_percent_encode(secret, set).to_string();
            let lower = lowercase_escapes(&upper);
            for enc in [upper, lower] {
                push(enc.replace("%20", "+"));
                push(enc);
            }
        }
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
    fn url_encodings_as_common_encoders_write_them_are_masked() {
        let secret = "s3cr3t-Val.ue/with space&more=42_x~y";
        let mut r = Redactor::default();
        r.add(secret);
        for enc in [
            // encodeURIComponent / RFC 3986 (`-._~` kept).
            "s3cr3t-Val.ue%2Fwith%20space%26more%3D42_x~y",
            "s3cr3t-Val.ue%2fwith%20space%26more%3d42_x~y",
            // application/x-www-form-urlencoded (space as `+`).
            "s3cr3t-Val.ue%2Fwith+space%26more%3D42_x~y",
            // Every non-alphanumeric byte escaped.
            "s3cr3t%2DVal%2Eue%2Fwith%20space%26more%3D42%5Fx%7Ey",
        ] {
            let out = r.redact(&format!("https://h/?k={enc}&z=1"));
            assert_eq!(out, format!("https://h/?k={MASK}&z=1"), "{enc}");
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

//! Docker image references: parsing, normalisation (`ubuntu` becomes
//! `docker.io/library/ubuntu:latest`) and allowlist matching, so that an
//! image is compared by what the engine would really pull.
//!
//! This module does no I/O.

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Registry host, `docker.io` when none is given.
    pub domain: String,
    /// Repository path, `library/` added for official images.
    pub path: String,
    /// Tag, `latest` when neither tag nor digest is given.
    pub tag: Option<String>,
    /// `algo:hex` digest.
    pub digest: Option<String>,
}

impl ImageRef {
    /// `domain/path`.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.repository())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn valid_component(c: &str) -> bool {
    // [a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    if c.contains("..") || c.contains("___") || c.contains(".-") || c.contains("-.") {
        return false;
    }
    b.iter()
        .all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || matches!(x, b'.' | b'_' | b'-'))
}

fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Parses and normalises `s`; the error says what is wrong.
pub fn parse(s: &str) -> Result<ImageRef, String> {
    if s.is_empty() || s.len() > 255 {
        return Err("image reference must be 1-255 characters".into());
    }
    if s.bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(format!(
            "image reference {s:?} contains whitespace or control characters"
        ));
    }
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => {
            let (algo, hex) = d
                .split_once(':')
                .ok_or_else(|| format!("digest of {s:?} must be algo:hex"))?;
            let ok = algo == "sha256"
                && hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !ok {
                return Err(format!("digest of {s:?} must be sha256:<64 hex>"));
            }
            (r, Some(d.to_string()))
        }
        None => (s, None),
    };
    // A tag is after the last ':' that follows the last '/'.
    let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => {
            let t = &rest[last_slash + i + 1..];
            let ok = !t.is_empty()
                && t.len() <= 128
                && (t.as_bytes()[0].is_ascii_alphanumeric() || t.as_bytes()[0] == b'_')
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
            if !ok {
                return Err(format!("tag of {s:?} is not valid"));
            }
            (&rest[..last_slash + i], Some(t.to_string()))
        }
        None => (rest, None),
    };
    let mut parts: Vec<&str> = name.split('/').collect();
    let domain = if parts.len() > 1
        && (parts[0].contains('.') || parts[0].contains(':') || parts[0] == "localhost")
    {
        let d = parts.remove(0);
        if !valid_domain(d) {
            return Err(format!("registry {d:?} of {s:?} is not a valid host"));
        }
        d.to_string()
    } else {
        "docker.io".to_string()
    };
    if parts.is_empty() || !parts.iter().all(|c| valid_component(c)) {
        return Err(format!(
            "repository of {s:?} must be lowercase components of [a-z0-9._-]"
        ));
    }
    if domain == "docker.io" && parts.len() == 1 {
        parts.insert(0, "library");
    }
    let tag = match (&tag, &digest) {
        (None, None) => Some("latest".to_string()),
        _ => tag,
    };
    Ok(ImageRef {
        domain,
        path: parts.join("/"),
        tag,
        digest,
    })
}

/// The normalised string form of `s`.
pub fn normalize(s: &str) -> Result<String, String> {
    parse(s).map(|r| r.to_string())
}

/// Whether `image` matches an allowlist entry. Entries are image references
/// compared after normalisation; an entry ending in `:*` allows every tag
/// of its repository.
pub fn is_allowed(image: &str, allowlist: &[String]) -> bool {
    let Ok(img) = parse(image) else {
        return false;
    };
    allowlist.iter().any(|entry| {
        if let Some(repo) = entry.strip_suffix(":*") {
            parse(repo)
                .map(|r| r.repository() == img.repository())
                .unwrap_or(false)
        } else {
            parse(entry).map(|r| r == img).unwrap_or(false)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_normalise_to_docker_hub_library() {
        assert_eq!(
            normalize("ubuntu").unwrap(),
            "docker.io/library/ubuntu:latest"
        );
        assert_eq!(normalize("foo/bar:1").unwrap(), "docker.io/foo/bar:1");
        assert_eq!(
            normalize("localhost:5000/x/y:z").unwrap(),
            "localhost:5000/x/y:z"
        );
    }

    #[test]
    fn another_registry_cannot_pass_as_an_allowed_short_name() {
        let allow = vec![
            "x:latest".to_string(),
            "universal-worker-base:*".to_string(),
        ];
        assert!(is_allowed("x", &allow));
        assert!(is_allowed("docker.io/library/x:latest", &allow));
        assert!(!is_allowed("evil.example/x", &allow));
        assert!(!is_allowed("evil.example/library/x:latest", &allow));
        assert!(is_allowed("universal-worker-base:v2", &allow));
        assert!(!is_allowed("evil.example/universal-worker-base:v2", &allow));
    }

    #[test]
    fn malformed_references_are_refused() {
        for bad in [
            "",
            "UPPER",
            "a b",
            "x:",
            "x:-tag",
            "x@sha256:00",
            "-x",
            "a//b",
            "x\0y",
            "evil..example/x",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn digests_are_kept() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            normalize(&format!("x@{d}")).unwrap(),
            format!("docker.io/library/x@{d}")
        );
    }
}

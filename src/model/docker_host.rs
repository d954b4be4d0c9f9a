//! Which Docker engine an instance drives (`docker_host`, else
//! `DOCKER_HOST`, else the local socket), as data: one daemon per engine,
//! so that a fleet is N daemons on N hosts sharing the streams.

use std::path::PathBuf;

/// An engine address, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerTarget {
    /// The local socket (`/var/run/docker.sock`).
    Local,
    /// A unix socket at this path.
    Unix(PathBuf),
    /// Plain HTTP to `host:port` (a trusted network only).
    Http(String),
    /// HTTPS to `host:port` with a client certificate.
    Tls {
        /// `host:port`.
        addr: String,
        /// CA certificate (PEM).
        ca: PathBuf,
        /// Client certificate (PEM).
        cert: PathBuf,
        /// Client key (PEM).
        key: PathBuf,
    },
}

/// The TLS files of a `tcp://` engine (all three or none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate.
    pub ca: PathBuf,
    /// Client certificate.
    pub cert: PathBuf,
    /// Client key.
    pub key: PathBuf,
}

/// Parses `setting` (falling back to `env_docker_host`, the daemon's
/// `DOCKER_HOST`) with `tls`; the error names what would be valid.
pub fn parse(
    setting: &str,
    env_docker_host: Option<&str>,
    tls: &TlsFiles,
) -> Result<DockerTarget, String> {
    let given = [
        !tls.ca.as_os_str().is_empty(),
        !tls.cert.as_os_str().is_empty(),
        !tls.key.as_os_str().is_empty(),
    ];
    let some_tls = given.iter().any(|g| *g);
    if some_tls && !given.iter().all(|g| *g) {
        return Err(
            "docker_tls_ca, docker_tls_cert and docker_tls_key go together: set all three or none"
                .into(),
        );
    }
    let host = if setting.is_empty() {
        env_docker_host.unwrap_or("").trim()
    } else {
        setting.trim()
    };
    if host.is_empty() {
        return if some_tls {
            Err("docker_tls_* need a tcp:// docker_host".into())
        } else {
            Ok(DockerTarget::Local)
        };
    }
    if let Some(path) = host.strip_prefix("unix://") {
        if !path.starts_with('/') {
            return Err(format!(
                "docker_host {host:?}: a unix socket needs an absolute path (unix:///run/docker.sock)"
            ));
        }
        if some_tls {
            return Err("docker_tls_* apply to tcp:// engines only".into());
        }
        return Ok(DockerTarget::Unix(PathBuf::from(path)));
    }
    let addr = host
        .strip_prefix("tcp://")
        .or_else(|| host.strip_prefix("https://"))
        .or_else(|| host.strip_prefix("http://"));
    let Some(addr) = addr else {
        return Err(format!(
            "docker_host {host:?}: write unix:///path/docker.sock or tcp://host:2376"
        ));
    };
    let addr = addr.trim_end_matches('/');
    let port_ok = addr
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if !port_ok || addr.contains('/') {
        return Err(format!(
            "docker_host {host:?}: a tcp engine is tcp://host:port (e.g. tcp://10.0.0.2:2376)"
        ));
    }
    if some_tls {
        Ok(DockerTarget::Tls {
            addr: addr.to_string(),
            ca: tls.ca.clone(),
            cert: tls.cert.clone(),
            key: tls.key.clone(),
        })
    } else if host.starts_with("https://") {
        Err("an https:// engine needs docker_tls_ca, docker_tls_cert and docker_tls_key".into())
    } else {
        Ok(DockerTarget::Http(addr.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls() -> TlsFiles {
        TlsFiles {
            ca: "/c/ca.pem".into(),
            cert: "/c/cert.pem".into(),
            key: "/c/key.pem".into(),
        }
    }

    #[test]
    fn the_setting_wins_over_docker_host_and_empty_is_local() {
        let none = TlsFiles::default();
        assert_eq!(parse("", None, &none), Ok(DockerTarget::Local));
        assert_eq!(
            parse("", Some("unix:///run/b.sock"), &none),
            Ok(DockerTarget::Unix("/run/b.sock".into()))
        );
        assert_eq!(
            parse("unix:///run/a.sock", Some("unix:///run/b.sock"), &none),
            Ok(DockerTarget::Unix("/run/a.sock".into()))
        );
        assert_eq!(
            parse("tcp://10.0.0.2:2375", None, &none),
            Ok(DockerTarget::Http("10.0.0.2:2375".into()))
        );
        assert_eq!(
            parse("tcp://docker.example:2376", None, &tls()),
            Ok(DockerTarget::Tls {
                addr: "docker.example:2376".into(),
                ca: "/c/ca.pem".into(),
                cert: "/c/cert.pem".into(),
                key: "/c/key.pem".into(),
            })
        );
    }

    #[test]
    fn bad_addresses_say_what_would_be_valid() {
        let none = TlsFiles::default();
        for bad in [
            "ssh://x",
            "docker.sock",
            "unix://relative",
            "tcp://host",
            "tcp://:2375",
            "tcp://h:0",
            "tcp://h:2375/x",
        ] {
            let e = parse(bad, None, &none).unwrap_err();
            assert!(e.contains("docker_host"), "{bad}: {e}");
        }
        let mut half = tls();
        half.key = PathBuf::new();
        assert!(parse("tcp://h:2376", None, &half)
            .unwrap_err()
            .contains("all three"));
        assert!(parse("unix:///s", None, &tls())
            .unwrap_err()
            .contains("tcp://"));
        assert!(parse("", None, &tls()).unwrap_err().contains("tcp://"));
        assert!(parse("https://h:2376", None, &none)
            .unwrap_err()
            .contains("docker_tls_ca"));
    }
}

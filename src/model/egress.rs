//! A worker's way out, as data: what it may reach through its egress socket
//! (the daemon's side is `crate::adapters::egress`) and what its container
//! is told about it.
//!
//! A worker on the socket path has network mode `none`. The delivery shim
//! starts a forwarder on the container's loopback ([`LISTEN`]) that relays
//! every connection to the worker's own unix socket, mounted from the
//! daemon's egress folder at [`SOCKET_DIR`]. On that socket the daemon
//! serves, and decides, three things: the gateway (tool calls), model API
//! routes (the placeholder key replaced by the real one, which never enters
//! the container) and an HTTP proxy (`CONNECT` and plain HTTP) for the names
//! of the allow-list, matched on the requested name and never on an address.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::model::config::{ModelApi, WorkerConfig};

/// The forwarder's port on the container's loopback.
pub const PORT: u16 = 4750;
/// The forwarder's address inside the container.
pub const LISTEN: &str = "127.0.0.1:4750";
/// Where the worker's egress folder (holding [`SOCKET_NAME`]) is mounted:
/// the folder, not the socket file, so a daemon that makes the socket anew
/// after a restart is reached through the same mount.
pub const SOCKET_DIR: &str = "/.workers-spawner/egress";
/// The socket's file name in the worker's egress folder.
pub const SOCKET_NAME: &str = "sock";
/// The variable that tells the shim to start the forwarder:
/// `<listen address> <socket path>`.
pub const SHIM_ENV: &str = "WS_EGRESS_FORWARD";
/// The label holding a container's [`Grant`] (JSON), so that a restarted
/// daemon serves an adopted container's socket with the same decisions.
pub const LABEL: &str = "io.workers-spawner.egress";

/// How the workers of this daemon get out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Network `none` and the daemon's unix socket (the default).
    #[default]
    Socket,
    /// Today's bridge networks (the slower path; the daemon's sockets
    /// cannot be mounted, e.g. a remote engine).
    Bridge,
}

/// Which hosts a worker may reach through the proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Allow {
    /// No internet at all.
    Nothing,
    /// Any public address (`has_internet: true` without `egress.allow`).
    Everything,
    /// These names and patterns (`github.com`, `*.githubusercontent.com`,
    /// or an IP literal, which matches only itself).
    Names(Vec<String>),
}

impl Allow {
    /// The proxy's rule for `config`.
    pub fn of(config: &WorkerConfig) -> Allow {
        if !config.has_internet {
            return Allow::Nothing;
        }
        match config.egress.allow.as_ref() {
            None => Allow::Everything,
            Some(list) => Allow::Names(list.iter().map(|p| p.to_ascii_lowercase()).collect()),
        }
    }

    /// Whether the proxy serves anything at all.
    pub fn any(&self) -> bool {
        !matches!(self, Allow::Nothing)
    }

    /// Whether a request for `host` passes the list (before the address
    /// check).
    pub fn permits(&self, host: &str) -> bool {
        match self {
            Allow::Nothing => false,
            Allow::Everything => true,
            Allow::Names(list) => list.iter().any(|p| matches(p, host)),
        }
    }
}

/// Whether `pattern` (`name` or `*.suffix`, lower case) matches `host`:
/// a wildcard stands for one or more labels, never for nothing
/// (`*.github.com` does not match `github.com`).
pub fn matches(pattern: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.');
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1
                && host.ends_with(suffix)
                && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
        }
        None => pattern == host,
    }
}

/// Whether `pattern` is one the allow-list takes: a host name of letters,
/// digits, `-` and `.`, optionally behind `*.`, or an IP literal; no port,
/// no scheme, no path. The schema checks the same spelling.
pub fn pattern_problem(pattern: &str) -> Option<String> {
    if pattern.parse::<IpAddr>().is_ok() {
        return None;
    }
    let name = pattern.strip_prefix("*.").unwrap_or(pattern);
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    (!ok).then(|| {
        format!("{pattern:?} is not a host name, *.suffix or IP literal (no scheme, port or path)")
    })
}

/// The first pattern of `merged` that `preset` does not cover: an
/// override only narrows the list.
pub fn widening(preset: &Allow, merged: &Allow) -> Option<String> {
    match (preset, merged) {
        (_, Allow::Nothing) | (Allow::Everything, _) => None,
        (Allow::Nothing, Allow::Everything) | (Allow::Names(_), Allow::Everything) => {
            Some("every host".to_string())
        }
        (Allow::Nothing, Allow::Names(list)) => list.first().cloned(),
        (Allow::Names(p), Allow::Names(m)) => {
            m.iter().find(|x| !p.iter().any(|q| covers(q, x))).cloned()
        }
    }
}

/// Whether pattern `outer` matches everything pattern `inner` does.
fn covers(outer: &str, inner: &str) -> bool {
    if outer == inner {
        return true;
    }
    match inner.strip_prefix("*.") {
        // `*.a.b` is covered by `*.b`, not by `a.b`.
        Some(rest) => outer.starts_with("*.") && matches(outer, rest),
        None => matches(outer, inner),
    }
}

/// A `host:port` a worker asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The host as asked for, lower case, without a trailing dot or the
    /// brackets of an IPv6 literal.
    pub host: String,
    /// The port.
    pub port: u16,
}

impl Target {
    /// Parses a `CONNECT` authority or a URL's authority (`host:port`,
    /// `[v6]:port`); `default_port` when the port is left out.
    pub fn parse(authority: &str, default_port: Option<u16>) -> Result<Target, String> {
        let bad = || format!("{authority:?} is not host:port");
        let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
            let (h, after) = rest.split_once(']').ok_or_else(bad)?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(bad()),
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        let port = match port {
            Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad)?,
            None => default_port.ok_or_else(bad)?,
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if host.is_empty() || host.contains(['/', '@', ' ', '%']) {
            return Err(bad());
        }
        Ok(Target { host, port })
    }

    /// The IP literal it names, if it is one.
    pub fn literal(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

/// Why an address is never dialled for a worker (unless the operator
/// pinned the name to it with `egress_resolve`): the daemon's own host and
/// what only it should reach.
pub fn refused_address(ip: IpAddr, allow_private: bool) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    };
    match ip {
        IpAddr::V4(a) => v4_refused(a, allow_private),
        IpAddr::V6(a) => v6_refused(a, allow_private),
    }
}

/// The IPv4 address an IPv6 one carries and reaches: mapped
/// (`::ffff:a.b.c.d`), compatible (`::a.b.c.d`), NAT64 (`64:ff9b::/96`) and
/// 6to4 (`2002:AABB:CCDD::/48`), so none of them is a way around the IPv4
/// rules.
fn embedded_v4(a: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = a.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if let Some(v4) = a.to_ipv4_mapped() {
        return Some(v4);
    }
    if s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1) {
        return Some(v4(s[6], s[7]));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(v4(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return Some(v4(s[1], s[2]));
    }
    None
}

fn v4_refused(a: Ipv4Addr, allow_private: bool) -> Option<&'static str> {
    let o = a.octets();
    if a.is_loopback() {
        Some("a loopback address (the daemon's own host)")
    } else if a.is_link_local() {
        Some("a link-local address (cloud metadata lives there)")
    } else if a.is_unspecified() || o[0] == 0 {
        Some("an unspecified address")
    } else if a.is_multicast() || a.is_broadcast() || o[0] >= 240 {
        Some("a multicast, broadcast or reserved address")
    } else if !allow_private && (a.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64)) {
        Some("a private address (egress_allow_private is off)")
    } else {
        None
    }
}

fn v6_refused(a: Ipv6Addr, allow_private: bool) -> Option<&'static str> {
    let s = a.segments();
    if a.is_loopback() {
        Some("a loopback address (the daemon's own host)")
    } else if a.is_unspecified() {
        Some("an unspecified address")
    } else if (s[0] & 0xffc0) == 0xfe80 {
        Some("a link-local address (cloud metadata lives there)")
    } else if (s[0] & 0xffc0) == 0xfec0 || (s[0] == 0x2001 && s[1] == 0) {
        Some("a site-local or Teredo address")
    } else if a.is_multicast() {
        Some("a multicast address")
    } else if !allow_private && (s[0] & 0xfe00) == 0xfc00 {
        Some("a private address (egress_allow_private is off)")
    } else {
        None
    }
}

/// The proxy's answer to one request, before any address is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Resolve and connect.
    Allowed,
    /// Refused, with the reason the worker and the `egress` event get.
    Denied(String),
}

/// Decides on `target` by name alone: the list, and an IP literal only
/// where the list names it (or allows every host).
pub fn decide(allow: &Allow, target: &Target) -> Decision {
    match allow {
        Allow::Nothing => Decision::Denied("this worker has no internet access".to_string()),
        _ if allow.permits(&target.host) => Decision::Allowed,
        _ => Decision::Denied(format!(
            "{} is not in this worker's egress allow-list",
            target.host
        )),
    }
}

/// The shipped model providers: route name, base-URL variable, key
/// variable, header, public endpoint.
pub const PROVIDERS: [(&str, &str, &str, &str, &str); 2] = [
    (
        "anthropic",
        "ANTHROPIC_BASE_URL",
        "ANTHROPIC_API_KEY",
        "x-api-key",
        "https://api.anthropic.com",
    ),
    (
        "openai",
        "OPENAI_BASE_URL",
        "OPENAI_API_KEY",
        "authorization",
        "https://api.openai.com/v1",
    ),
];

/// One model API route of a worker, without its key's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// `/model/<name>/...` on the forwarder.
    pub name: String,
    /// The daemon's variable holding the key (`from_env`).
    pub from_env: String,
    /// The header the upstream reads the key from (`authorization` gets
    /// `Bearer <key>`).
    pub header: String,
    /// The upstream's base URL (the preset's, else the provider's public
    /// endpoint); the daemon's `model_upstreams` setting wins.
    pub upstream: String,
    /// The worker's variables for the base URL and the key.
    pub base_url_env: String,
    /// See `base_url_env`.
    pub key_env: String,
}

impl Route {
    /// The header value carrying `key`.
    pub fn header_value(&self, key: &str) -> String {
        if self.header.eq_ignore_ascii_case("authorization") {
            format!("Bearer {key}")
        } else {
            key.to_string()
        }
    }
}

/// The routes of `model_api` (already checked by the schema).
pub fn routes(model_api: &BTreeMap<String, ModelApi>) -> Vec<Route> {
    model_api
        .iter()
        .map(|(name, m)| {
            let known = PROVIDERS.iter().find(|p| p.0 == name);
            let pick = |own: Option<&String>, shipped: Option<&str>| {
                own.cloned()
                    .or_else(|| shipped.map(str::to_string))
                    .unwrap_or_default()
            };
            let env = m.env.as_ref();
            Route {
                name: name.clone(),
                from_env: m.key.from_env.clone(),
                header: pick(m.header.as_ref(), known.map(|p| p.3)).to_ascii_lowercase(),
                upstream: pick(m.base_url.as_ref(), known.map(|p| p.4)),
                base_url_env: pick(env.map(|e| &e.base_url), known.map(|p| p.1)),
                key_env: pick(env.map(|e| &e.key), known.map(|p| p.2)),
            }
        })
        .collect()
}

/// What a worker's socket serves: the durable record of it, kept in the
/// container's [`LABEL`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The proxy's rule.
    pub allow: Allow,
    /// Model API routes.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// The value the worker holds in place of each route's key; only it is
    /// swapped for the real key.
    #[serde(default)]
    pub placeholder: String,
    /// Whether the worker may call the gateway.
    #[serde(default)]
    pub tools: bool,
}

impl Grant {
    /// The grant of a worker of `config`, holding `placeholder`.
    pub fn of(config: &WorkerConfig, placeholder: &str) -> Grant {
        Grant {
            allow: Allow::of(config),
            routes: routes(&config.model_api),
            placeholder: placeholder.to_string(),
            tools: !config.allowed_tools.is_empty(),
        }
    }

    /// Whether the socket would serve anything (else the worker gets no
    /// socket and no forwarder at all).
    pub fn serves_anything(&self) -> bool {
        self.tools || self.allow.any() || !self.routes.is_empty()
    }

    /// The route `name`.
    pub fn route(&self, name: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.name == name)
    }

    /// The container's variables: the gateway's URL, each route's base URL
    /// and placeholder key, the proxy, and the shim's instruction.
    pub fn container_env(&self) -> Vec<(String, String)> {
        let base = format!("http://{LISTEN}");
        let mut env = vec![(
            SHIM_ENV.to_string(),
            format!("{LISTEN} {SOCKET_DIR}/{SOCKET_NAME}"),
        )];
        if self.tools {
            env.push(("ORCHESTRATOR_API_URL".to_string(), base.clone()));
        }
        for r in &self.routes {
            env.push((r.base_url_env.clone(), format!("{base}/model/{}", r.name)));
            env.push((r.key_env.clone(), self.placeholder.clone()));
        }
        if self.allow.any() {
            for name in ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"] {
                env.push((name.to_string(), base.clone()));
            }
            for name in ["NO_PROXY", "no_proxy"] {
                env.push((name.to_string(), "127.0.0.1,localhost".to_string()));
            }
        }
        env
    }
}

/// A placeholder key made of `random` (hex): recognisable, never a real key.
pub fn placeholder(random: &str) -> String {
    format!("ws-placeholder-{random}")
}

/// The name of a worker's egress folder: 24 hex digits of the SHA-256 of
/// its container name (a unix socket's path holds at most 107 bytes, and a
/// container name alone may be longer).
pub fn folder_name(container_name: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(container_name.as_bytes()))[..24].to_string()
}

/// The worker's egress folder under the daemon's `egress_dir`.
pub fn folder(egress_dir: &str, container_name: &str) -> String {
    format!(
        "{}/{}",
        egress_dir.trim_end_matches('/'),
        folder_name(container_name)
    )
}

/// The longest `egress_dir` a socket path fits behind.
pub const MAX_DIR_LEN: usize = 107 - 1 - 24 - 1 - SOCKET_NAME.len();

/// What a request on the socket is, from its request line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `CONNECT host:port`.
    Tunnel(Target),
    /// A proxied plain-HTTP request (`GET http://host/...`): the target and
    /// the origin-form path to send.
    Proxy(Target, String),
    /// `/model/<route>/<rest>`: the route and the rest (with its query).
    Model(String, String),
    /// `/v1/tools/...`: the gateway.
    Gateway,
    /// Anything else.
    Unknown,
}

/// Classifies a request by its method and request target.
pub fn classify(method: &str, target: &str) -> Call {
    if method == "CONNECT" {
        return match Target::parse(target, None) {
            Ok(t) => Call::Tunnel(t),
            Err(_) => Call::Unknown,
        };
    }
    if let Some(rest) = target.strip_prefix("http://") {
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        // Credentials in the authority are never forwarded as a host.
        return match Target::parse(authority, Some(80)) {
            // A client that ignores NO_PROXY (busybox wget) asks the proxy
            // for the forwarder itself: that is a request to the socket.
            Ok(t) if t.port == PORT && (t.host == "127.0.0.1" || t.host == "localhost") => {
                classify(method, &path)
            }
            Ok(t) if !authority.contains('@') => Call::Proxy(t, path),
            _ => Call::Unknown,
        };
    }
    if let Some(rest) = target.strip_prefix("/model/") {
        let (name, rest) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if crate::model::tools::is_name(name) {
            return Call::Model(name.to_string(), rest.to_string());
        }
        return Call::Unknown;
    }
    if target.starts_with("/v1/tools/") {
        return Call::Gateway;
    }
    Call::Unknown
}

/// The upstream URL of a model call: the base, then the rest of the path
/// (which never climbs out of it).
pub fn model_url(base: &str, rest: &str) -> Option<String> {
    let path = rest.split('?').next().unwrap_or("");
    if path
        .split('/')
        .any(|s| s == ".." || s == "." || s.contains('%'))
    {
        return None;
    }
    Some(format!("{}{rest}", base.trim_end_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_stands_for_one_or_more_labels() {
        assert!(matches("github.com", "github.com"));
        assert!(matches("github.com", "github.com."));
        assert!(!matches("github.com", "api.github.com"));
        assert!(matches(
            "*.githubusercontent.com",
            "raw.githubusercontent.com"
        ));
        assert!(matches(
            "*.githubusercontent.com",
            "a.b.githubusercontent.com"
        ));
        assert!(!matches("*.githubusercontent.com", "githubusercontent.com"));
        assert!(!matches(
            "*.githubusercontent.com",
            "evilgithubusercontent.com"
        ));
        assert!(!matches("*.x.com", ".x.com"));
    }

    #[test]
    fn the_list_takes_names_wildcards_and_literals_only() {
        for ok in [
            "github.com",
            "*.githubusercontent.com",
            "10.0.0.1",
            "::1",
            "a-b.test",
        ] {
            assert_eq!(pattern_problem(ok), None, "{ok}");
        }
        for bad in [
            "https://github.com",
            "github.com:443",
            "a/b",
            "*",
            "*.",
            "-a.com",
            "a..b",
            "",
        ] {
            assert!(pattern_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn an_override_only_narrows_the_list() {
        let names = |v: &[&str]| Allow::Names(v.iter().map(|s| s.to_string()).collect());
        let preset = names(&["github.com", "*.githubusercontent.com"]);
        assert_eq!(widening(&preset, &names(&["github.com"])), None);
        assert_eq!(
            widening(&preset, &names(&["raw.githubusercontent.com"])),
            None
        );
        assert_eq!(
            widening(&preset, &names(&["*.a.githubusercontent.com"])),
            None
        );
        assert_eq!(widening(&preset, &Allow::Nothing), None);
        assert_eq!(
            widening(&preset, &names(&["github.com", "evil.com"])),
            Some("evil.com".into())
        );
        assert_eq!(
            widening(&preset, &names(&["*.github.com"])),
            Some("*.github.com".into())
        );
        assert_eq!(
            widening(&preset, &Allow::Everything),
            Some("every host".into())
        );
        assert_eq!(widening(&Allow::Everything, &names(&["x.com"])), None);
        assert_eq!(
            widening(&Allow::Nothing, &names(&["x.com"])),
            Some("x.com".into())
        );
    }

    #[test]
    fn targets_parse_with_and_without_ports_and_brackets() {
        assert_eq!(
            Target::parse("GitHub.com.:443", None),
            Ok(Target {
                host: "github.com".into(),
                port: 443
            })
        );
        assert_eq!(
            Target::parse("[::1]:8080", None),
            Ok(Target {
                host: "::1".into(),
                port: 8080
            })
        );
        assert_eq!(Target::parse("example.test", Some(80)).unwrap().port, 80);
        for bad in [
            "example.test",
            "a:0",
            "a:99999",
            ":80",
            "[::1",
            "a b:1",
            "u@h:1",
        ] {
            assert!(Target::parse(bad, None).is_err(), "{bad}");
        }
        assert_eq!(
            Target::parse("127.0.0.1:80", None).unwrap().literal(),
            Some("127.0.0.1".parse().unwrap())
        );
    }

    #[test]
    fn the_daemons_host_and_metadata_are_never_dialled() {
        for ip in [
            "127.0.0.1",
            "127.1.2.3",
            "169.254.169.254",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::",
            "fec0::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        ] {
            assert!(refused_address(ip.parse().unwrap(), true).is_some(), "{ip}");
        }
        for ip in [
            "10.1.2.3",
            "172.17.0.2",
            "192.168.1.1",
            "100.64.0.1",
            "fd00::1",
            "64:ff9b::a00:1",
        ] {
            assert!(
                refused_address(ip.parse().unwrap(), false).is_some(),
                "{ip}"
            );
            assert!(refused_address(ip.parse().unwrap(), true).is_none(), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:2800:220:1::1", "1.1.1.1"] {
            assert!(
                refused_address(ip.parse().unwrap(), false).is_none(),
                "{ip}"
            );
        }
    }

    #[test]
    fn the_decision_is_made_on_the_name_and_a_literal_must_be_listed() {
        let list = Allow::Names(vec![
            "allowed.test".into(),
            "*.cdn.test".into(),
            "10.9.9.9".into(),
        ]);
        let t = |s: &str| Target::parse(s, None).unwrap();
        assert_eq!(decide(&list, &t("allowed.test:443")), Decision::Allowed);
        assert_eq!(decide(&list, &t("a.cdn.test:80")), Decision::Allowed);
        assert_eq!(decide(&list, &t("10.9.9.9:22")), Decision::Allowed);
        assert!(
            matches!(decide(&list, &t("denied.test:443")), Decision::Denied(r) if r.contains("denied.test"))
        );
        assert!(matches!(
            decide(&list, &t("93.184.216.34:443")),
            Decision::Denied(_)
        ));
        assert!(matches!(
            decide(&Allow::Nothing, &t("allowed.test:443")),
            Decision::Denied(_)
        ));
        assert_eq!(
            decide(&Allow::Everything, &t("1.1.1.1:443")),
            Decision::Allowed
        );
    }

    #[test]
    fn requests_on_the_socket_are_told_apart_by_their_request_line() {
        assert_eq!(
            classify("CONNECT", "allowed.test:443"),
            Call::Tunnel(Target {
                host: "allowed.test".into(),
                port: 443
            })
        );
        assert_eq!(
            classify("GET", "http://allowed.test:8080/a/b?c=1"),
            Call::Proxy(
                Target {
                    host: "allowed.test".into(),
                    port: 8080
                },
                "/a/b?c=1".into()
            )
        );
        assert_eq!(
            classify("GET", "http://allowed.test"),
            Call::Proxy(
                Target {
                    host: "allowed.test".into(),
                    port: 80
                },
                "/".into()
            )
        );
        assert_eq!(classify("GET", "http://user:pw@evil.test/"), Call::Unknown);
        assert_eq!(
            classify("POST", "http://127.0.0.1:4750/v1/tools/respond/send"),
            Call::Gateway,
            "a client that ignores NO_PROXY still reaches the socket's own routes"
        );
        assert_eq!(
            classify("POST", "http://localhost:4750/model/openai/v1/chat"),
            Call::Model("openai".into(), "/v1/chat".into())
        );
        assert_eq!(
            classify("GET", "http://127.0.0.1:4751/"),
            Call::Proxy(
                Target {
                    host: "127.0.0.1".into(),
                    port: 4751
                },
                "/".into()
            )
        );
        assert_eq!(
            classify("POST", "/model/anthropic/v1/messages?beta=true"),
            Call::Model("anthropic".into(), "/v1/messages?beta=true".into())
        );
        assert_eq!(classify("POST", "/model/../x"), Call::Unknown);
        assert_eq!(classify("POST", "/v1/tools/respond/send"), Call::Gateway);
        assert_eq!(classify("GET", "/"), Call::Unknown);
        assert_eq!(classify("GET", "https://x.test/"), Call::Unknown);
    }

    #[test]
    fn a_model_path_never_climbs_out_of_its_base() {
        assert_eq!(
            model_url("https://api.anthropic.com/", "/v1/messages"),
            Some("https://api.anthropic.com/v1/messages".into())
        );
        assert_eq!(model_url("http://u/v1", "/../admin"), None);
        assert_eq!(model_url("http://u/v1", "/%2e%2e/admin"), None);
        assert_eq!(
            model_url("http://u/v1", "/chat?x=../y"),
            Some("http://u/v1/chat?x=../y".into())
        );
    }

    #[test]
    fn the_container_is_told_the_forwarder_and_placeholders_never_a_key() {
        let g = Grant {
            allow: Allow::Names(vec!["allowed.test".into()]),
            routes: routes(&BTreeMap::from([(
                "anthropic".to_string(),
                ModelApi {
                    key: crate::model::config::KeyRef {
                        from_env: "REAL_KEY".into(),
                    },
                    base_url: None,
                    header: None,
                    env: None,
                },
            )])),
            placeholder: placeholder("ab12"),
            tools: true,
        };
        let env: BTreeMap<_, _> = g.container_env().into_iter().collect();
        assert_eq!(
            env["ANTHROPIC_BASE_URL"],
            "http://127.0.0.1:4750/model/anthropic"
        );
        assert_eq!(env["ANTHROPIC_API_KEY"], "ws-placeholder-ab12");
        assert_eq!(env["ORCHESTRATOR_API_URL"], "http://127.0.0.1:4750");
        assert_eq!(env["HTTPS_PROXY"], "http://127.0.0.1:4750");
        assert_eq!(env["NO_PROXY"], "127.0.0.1,localhost");
        assert_eq!(
            env[SHIM_ENV],
            "127.0.0.1:4750 /.workers-spawner/egress/sock"
        );
        assert!(!env.values().any(|v| v.contains("REAL_KEY")));
        let r = &g.routes[0];
        assert_eq!(
            (r.header.as_str(), r.upstream.as_str()),
            ("x-api-key", "https://api.anthropic.com")
        );
        assert_eq!(r.header_value("k"), "k");
        let openai = Route {
            header: "authorization".into(),
            ..r.clone()
        };
        assert_eq!(openai.header_value("k"), "Bearer k");
        let label = serde_json::to_string(&g).unwrap();
        assert_eq!(serde_json::from_str::<Grant>(&label).unwrap(), g);
        let offline = Grant {
            allow: Allow::Nothing,
            routes: vec![],
            placeholder: String::new(),
            tools: false,
        };
        assert!(!offline.serves_anything());
        assert!(!offline
            .container_env()
            .iter()
            .any(|(k, _)| k.contains("PROXY")));
    }
}

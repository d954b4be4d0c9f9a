//! Host firewall rules that keep workers away from the host: a worker's
//! bridge may reach its daemon's gateway port and nothing else on the host
//! (Redis, the Docker API, the daemon's metrics, anything bound to 0.0.0.0).
//!
//! Traffic between bridges and out to the internet is Docker's concern
//! (internal networks have no route out; bridges are isolated from each
//! other). This module adds INPUT rules, in a chain of its own, with the
//! same `iptables` the engine uses. Where the daemon may not change the
//! firewall (it runs in a container without NET_ADMIN), it says so once and
//! goes on: there the daemon's own network namespace is the boundary.
//!
//! Two kinds of rules:
//!
//! - isolation (`-i <bridge> -j DROP`, one per bridge): shared by every
//!   daemon and meant to stay, so workers stay away from the host when no
//!   daemon runs (fail closed);
//! - gateway holes (`-i <bridge> -p tcp --dport <port> -j ACCEPT`), one set
//!   per daemon instance, which must not outlive it: a later listener on a
//!   dead daemon's port would be reachable from every worker. Each carries
//!   its owner in a comment (`ws-gw/<setup>/<prefix>/<instance>`) and a
//!   `time` match that stops it matching [`RULE_TTL`] after it was written;
//!   the owner rewrites it well before. Its owner replaces its set at
//!   start-up and removes it at shutdown; any daemon removes rules that
//!   expired, rules of bridges that no longer exist, and rules of its own
//!   setup whose owner's heartbeat is gone ([`stale_rules`]).
//!
//! The parsing and the decisions are pure functions (unit tests below);
//! the rest runs `iptables`.

use std::collections::HashSet;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

/// Chain holding the rules.
pub const CHAIN: &str = "WS-WORKERS";

/// How long a gateway rule matches after it was written; a rule whose owner
/// died stops matching at most this long after the owner's last rewrite.
pub const RULE_TTL: Duration = Duration::from_secs(60);

/// Rewrite a daemon's gateway rules once less than this is left of them.
pub const RENEW_BELOW: Duration = Duration::from_secs(40);

/// First part of the comment of every gateway rule.
const TAG: &str = "ws-gw";

/// Whose gateway rules these are: a setup (Redis and stream prefix) and
/// an instance of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    /// Short hash of the Redis the setup uses (heartbeats are judged only
    /// within one Redis).
    pub setup: String,
    /// Stream prefix.
    pub prefix: String,
    /// Instance id.
    pub instance: String,
}

impl Owner {
    /// The owner of `instance` of the setup with `prefix` on the Redis at
    /// `redis` (its address, without credentials).
    pub fn new(redis: &str, prefix: &str, instance: &str) -> Owner {
        use sha2::{Digest, Sha256};
        Owner {
            setup: hex::encode(&Sha256::digest(redis.as_bytes())[..4]),
            prefix: prefix.to_string(),
            instance: instance.to_string(),
        }
    }

    /// The rule comment: `ws-gw/<setup>/<prefix>/<instance>` (no spaces;
    /// `/` occurs in none of the parts).
    pub fn comment(&self) -> String {
        format!("{TAG}/{}/{}/{}", self.setup, self.prefix, self.instance)
    }

    fn from_comment(c: &str) -> Option<Owner> {
        let mut it = c.split('/');
        if it.next()? != TAG {
            return None;
        }
        let (setup, prefix, instance) = (it.next()?, it.next()?, it.next()?);
        if it.next().is_some() || setup.is_empty() || prefix.is_empty() || instance.is_empty() {
            return None;
        }
        Some(Owner {
            setup: setup.into(),
            prefix: prefix.into(),
            instance: instance.into(),
        })
    }

    fn same_setup(&self, other: &Owner) -> bool {
        self.setup == other.setup && self.prefix == other.prefix
    }
}

/// A gateway rule found in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRule {
    /// Who wrote it.
    pub owner: Owner,
    /// Input interface.
    pub bridge: String,
    /// Gateway port.
    pub port: u16,
    /// Unix time (seconds, UTC) after which it no longer matches.
    pub until: i64,
}

impl GatewayRule {
    /// The rule's spec as it was written (and so as `iptables -D` finds it).
    pub fn spec(&self) -> Vec<String> {
        gateway_spec(&self.owner, &self.bridge, self.port, self.until)
    }

    fn key(&self) -> (String, u16, i64) {
        (self.bridge.clone(), self.port, self.until)
    }
}

/// What `iptables -S` shows of the chain: this module's gateway rules, and
/// how many ACCEPT rules of an older daemon (no owner, no expiry) it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// Gateway rules with an owner.
    pub rules: Vec<GatewayRule>,
    /// ACCEPT rules without an owner comment (older daemons; left alone).
    pub legacy: usize,
}

fn value_after<'a>(words: &'a [String], flag: &str) -> Option<&'a str> {
    words
        .iter()
        .position(|w| w == flag)
        .and_then(|i| words.get(i + 1))
        .map(String::as_str)
}

/// `YYYY-MM-DDThh:mm:ss` (UTC), as `-m time --datestop` takes and prints it.
pub fn datestop(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string()
}

fn parse_datestop(s: &str) -> Option<i64> {
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S")
        .ok()
        .map(|t| t.and_utc().timestamp())
}

/// Parses `iptables -S <CHAIN>` output.
pub fn parse_listing(text: &str) -> Listing {
    let mut out = Listing::default();
    for line in text.lines() {
        // Comments are printed quoted or not; ours hold no spaces.
        let words: Vec<String> = line
            .split_whitespace()
            .map(|w| w.trim_matches('"').to_string())
            .collect();
        if words.len() < 2 || words[0] != "-A" || words[1] != CHAIN {
            continue;
        }
        let spec = words[2..].to_vec();
        if value_after(&spec, "-j") != Some("ACCEPT") {
            continue;
        }
        let owner = value_after(&spec, "--comment").and_then(Owner::from_comment);
        let parsed = owner.and_then(|owner| {
            Some(GatewayRule {
                owner,
                bridge: value_after(&spec, "-i")?.to_string(),
                port: value_after(&spec, "--dport")?.parse().ok()?,
                until: parse_datestop(value_after(&spec, "--datestop")?)?,
            })
        });
        match parsed {
            Some(r) => out.rules.push(r),
            None => out.legacy += 1,
        }
    }
    out
}

/// Why a gateway rule goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stale {
    /// Its time is up (it no longer matches anything).
    Expired,
    /// Its bridge is gone.
    NoBridge,
    /// Its owner (same setup) has no heartbeat.
    OwnerGone,
    /// This instance's own rule from an earlier life, or one it replaced.
    Replaced,
}

/// The rules of `listing` that go: any owner's expired rules and rules of
/// bridges that no longer exist; rules of `me`'s setup whose owner is in
/// `dead`; `me`'s own rules other than `keep` (bridge, port, expiry of the
/// ones it wrote last).
pub fn stale_rules<'a>(
    listing: &'a Listing,
    me: &Owner,
    now: i64,
    keep: &[(String, u16, i64)],
    bridge_exists: &dyn Fn(&str) -> bool,
    dead: &HashSet<String>,
) -> Vec<(&'a GatewayRule, Stale)> {
    listing
        .rules
        .iter()
        .filter_map(|r| {
            let why = if r.owner == *me {
                (!keep.contains(&r.key())).then_some(Stale::Replaced)
            } else if r.until <= now {
                Some(Stale::Expired)
            } else if !bridge_exists(&r.bridge) {
                Some(Stale::NoBridge)
            } else if r.owner.same_setup(me) && dead.contains(&r.owner.instance) {
                Some(Stale::OwnerGone)
            } else {
                None
            };
            why.map(|w| (r, w))
        })
        .collect()
}

/// Instances of `me`'s setup (other than `me`) that own rules in `listing`:
/// the ones whose heartbeat to check.
pub fn peers(listing: &Listing, me: &Owner) -> Vec<String> {
    let mut v: Vec<String> = listing
        .rules
        .iter()
        .filter(|r| r.owner.same_setup(me) && r.owner != *me)
        .map(|r| r.owner.instance.clone())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The spec (after `-A <chain>`) of `owner`'s gateway rule for `bridge`
/// and `port`, matching until `until`, in the form `iptables -S` prints.
pub fn gateway_spec(owner: &Owner, bridge: &str, port: u16, until: i64) -> Vec<String> {
    [
        "-i",
        bridge,
        "-p",
        "tcp",
        "-m",
        "tcp",
        "--dport",
        &port.to_string(),
        "-m",
        "time",
        "--datestop",
        &datestop(until),
        "-m",
        "comment",
        "--comment",
        &owner.comment(),
        "-j",
        "ACCEPT",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

// ---------------------------------------------------------------- iptables

fn iptables(args: &[&str]) -> Result<bool, String> {
    let out = Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run iptables: {e}"))?;
    Ok(out.status.success())
}

fn ensure(check_and_add: &[&str], add_verb: &str) -> Result<(), String> {
    let mut check = vec!["-C"];
    check.extend_from_slice(check_and_add);
    if iptables(&check)? {
        return Ok(());
    }
    let mut add = vec![add_verb];
    if add_verb == "-I" {
        add.push(check_and_add[0]);
        add.push("1");
        add.extend_from_slice(&check_and_add[1..]);
    } else {
        add.extend_from_slice(check_and_add);
    }
    if iptables(&add)? {
        Ok(())
    } else {
        Err(format!("iptables {} failed", add.join(" ")))
    }
}

/// Drops everything `bridge` sends to the host (the gateway rules, inserted
/// before, make the exceptions). Idempotent; these rules stay.
pub fn isolate_bridge(bridge: &str) -> Result<(), String> {
    let _ = iptables(&["-N", CHAIN])?;
    ensure(&["INPUT", "-j", CHAIN], "-I")?;
    ensure(&[CHAIN, "-i", bridge, "-j", "DROP"], "-A")
}

/// Docker's chain for rules of its users, evaluated first in FORWARD.
pub const DOCKER_USER: &str = "DOCKER-USER";

/// Comment of the rules that keep containers on one workers' bridge apart.
const ICC_TAG: &str = "ws-workers-icc";

/// Drops traffic between containers on `bridge`: what Docker's
/// `enable_icc=false` does, for a network made without that option.
/// Idempotent; the rule stays while the bridge exists.
pub fn block_intra_bridge(bridge: &str) -> Result<(), String> {
    ensure(
        &[
            DOCKER_USER,
            "-i",
            bridge,
            "-o",
            bridge,
            "-m",
            "comment",
            "--comment",
            ICC_TAG,
            "-j",
            "DROP",
        ],
        "-I",
    )
}

/// The isolation and ICC rules of bridges that no longer exist (inert):
/// `(chain, spec)` pairs to delete, from `iptables -S` of both chains.
pub fn orphaned_static_rules(
    workers: &str,
    docker_user: &str,
    bridge_exists: &dyn Fn(&str) -> bool,
) -> Vec<(&'static str, Vec<String>)> {
    let mut out = Vec::new();
    for (chain, text) in [(CHAIN, workers), (DOCKER_USER, docker_user)] {
        for line in text.lines() {
            let words: Vec<String> = line
                .split_whitespace()
                .map(|w| w.trim_matches('"').to_string())
                .collect();
            if words.len() < 2 || words[0] != "-A" || words[1] != chain {
                continue;
            }
            let spec = words[2..].to_vec();
            let ours = if chain == CHAIN {
                spec.len() == 4 && spec[0] == "-i" && spec[2] == "-j" && spec[3] == "DROP"
            } else {
                value_after(&spec, "--comment") == Some(ICC_TAG)
            };
            match value_after(&spec, "-i") {
                Some(b) if ours && !bridge_exists(b) => out.push((chain, spec)),
                _ => {}
            }
        }
    }
    out
}

fn list_chain(chain: &str) -> String {
    Command::new("iptables")
        .args(["-w", "-S", chain])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The chain as `iptables -S` prints it.
pub fn list() -> Result<String, String> {
    let out = Command::new("iptables")
        .args(["-w", "-S", CHAIN])
        .output()
        .map_err(|e| format!("cannot run iptables: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn delete(spec: &[String]) -> bool {
    let mut args = vec!["-D", CHAIN];
    args.extend(spec.iter().map(String::as_str));
    iptables(&args).unwrap_or(false)
}

fn bridge_exists(bridge: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(bridge).exists()
}

fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Removes every gateway rule of `prefix`'s `instance` (any setup), e.g.
/// after its process was killed; returns how many went.
pub fn remove_rules_of(prefix: &str, instance: &str) -> usize {
    let Ok(text) = list() else { return 0 };
    parse_listing(&text)
        .rules
        .iter()
        .filter(|r| r.owner.prefix == prefix && r.owner.instance == instance)
        .filter(|r| delete(&r.spec()))
        .count()
}

/// One daemon instance's gateway rules: written at start-up, rewritten
/// before they expire, removed at shutdown.
pub struct GatewayRules {
    owner: Owner,
    bridges: Vec<String>,
    port: u16,
    /// The rules written last, one per bridge.
    current: Mutex<Vec<GatewayRule>>,
}

impl GatewayRules {
    /// The rules `owner` needs for its gateway on `port` of `bridges`.
    pub fn new(owner: Owner, bridges: Vec<String>, port: u16) -> GatewayRules {
        GatewayRules {
            owner,
            bridges,
            port,
            current: Mutex::new(Vec::new()),
        }
    }

    /// The owner.
    pub fn owner(&self) -> &Owner {
        &self.owner
    }

    /// Isolates the bridges and writes this instance's gateway rules,
    /// replacing any it left in an earlier life; returns the number of
    /// ownerless ACCEPT rules of older daemons found in the chain.
    pub fn install(&self) -> Result<usize, String> {
        for b in &self.bridges {
            isolate_bridge(b)?;
        }
        self.rewrite()?;
        let listing = parse_listing(&list()?);
        self.sweep(&listing, &HashSet::new());
        Ok(listing.legacy)
    }

    /// The instances of this setup whose rules are in the chain (their
    /// heartbeats decide whether their rules stay).
    pub fn peers(&self) -> Vec<String> {
        list()
            .map(|t| peers(&parse_listing(&t), &self.owner))
            .unwrap_or_default()
    }

    /// Keeps the isolation in place, rewrites this instance's rules when
    /// they are due, and removes stale rules (`dead`: instances of this
    /// setup without a heartbeat).
    pub fn refresh(&self, dead: &HashSet<String>) -> Result<(), String> {
        for b in &self.bridges {
            isolate_bridge(b)?;
        }
        let listing = parse_listing(&list()?);
        let due = {
            let current = self.current.lock().expect("firewall lock");
            // Rewritten when one of them is missing from the chain (someone
            // flushed it) or close to its expiry.
            let present = current.iter().all(|c| listing.rules.contains(c));
            let left = current.iter().map(|r| r.until - now_unix()).min();
            !present
                || current.len() != self.bridges.len()
                || left.is_none_or(|l| l < RENEW_BELOW.as_secs() as i64)
        };
        if due {
            self.rewrite()?;
        }
        self.sweep(&parse_listing(&list()?), dead);
        Ok(())
    }

    /// Removes this instance's rules (shutdown).
    pub fn release(&self) {
        let current = std::mem::take(&mut *self.current.lock().expect("firewall lock"));
        for r in &current {
            delete(&r.spec());
        }
        if let Ok(t) = list() {
            self.sweep(&parse_listing(&t), &HashSet::new());
        }
    }

    /// Writes a fresh rule per bridge (before the old ones go, so the
    /// gateway stays reachable throughout).
    fn rewrite(&self) -> Result<(), String> {
        let until = now_unix() + RULE_TTL.as_secs() as i64;
        let mut fresh = Vec::new();
        for b in &self.bridges {
            let rule = GatewayRule {
                owner: self.owner.clone(),
                bridge: b.clone(),
                port: self.port,
                until,
            };
            let spec = rule.spec();
            let mut args = vec!["-I", CHAIN, "1"];
            args.extend(spec.iter().map(String::as_str));
            if !iptables(&args)? {
                return Err(format!("iptables {} failed", args.join(" ")));
            }
            fresh.push(rule);
        }
        *self.current.lock().expect("firewall lock") = fresh;
        Ok(())
    }

    fn sweep(&self, listing: &Listing, dead: &HashSet<String>) {
        for (chain, spec) in
            orphaned_static_rules(&list_chain(CHAIN), &list_chain(DOCKER_USER), &bridge_exists)
        {
            let mut args = vec!["-D", chain];
            args.extend(spec.iter().map(String::as_str));
            if iptables(&args).unwrap_or(false) {
                tracing::info!(chain, rule = %spec.join(" "), "removed the rule of a bridge that is gone");
            }
        }
        let keep: Vec<(String, u16, i64)> = self
            .current
            .lock()
            .expect("firewall lock")
            .iter()
            .map(GatewayRule::key)
            .collect();
        for (r, why) in stale_rules(
            listing,
            &self.owner,
            now_unix(),
            &keep,
            &bridge_exists,
            dead,
        ) {
            if delete(&r.spec()) {
                tracing::info!(owner = %r.owner.comment(), bridge = %r.bridge, port = r.port, reason = ?why, "removed a stale gateway firewall rule");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Owner {
        Owner::new("redis://127.0.0.1:6379", "workers", "host-a")
    }

    fn line(owner: &Owner, bridge: &str, port: u16, until: i64) -> String {
        format!(
            "-A {CHAIN} {}",
            gateway_spec(owner, bridge, port, until).join(" ")
        )
    }

    #[test]
    fn rules_written_here_parse_back_with_their_owner_and_expiry() {
        let until = 1_900_000_000;
        let text = format!(
            "-N {CHAIN}\n{}\n-A {CHAIN} -i br-1 -p tcp -m tcp --dport 9091 -j ACCEPT\n-A {CHAIN} -i br-1 -j DROP\n",
            line(&me(), "br-1", 9091, until)
        );
        let l = parse_listing(&text);
        assert_eq!(l.legacy, 1, "the old daemon's rule");
        assert_eq!(l.rules.len(), 1);
        let r = &l.rules[0];
        assert_eq!(r.owner, me());
        assert_eq!((r.bridge.as_str(), r.port, r.until), ("br-1", 9091, until));
        assert_eq!(r.spec(), gateway_spec(&me(), "br-1", 9091, until));
        // Quoted comments, as some iptables versions print them.
        let quoted = text
            .replace("--comment ws-gw", "--comment \"ws-gw")
            .replace("host-a -j", "host-a\" -j");
        assert_eq!(parse_listing(&quoted), l);
        assert_eq!(datestop(until), "2030-03-17T17:46:40");
    }

    #[test]
    fn owners_are_told_apart_by_setup_prefix_and_instance() {
        let a = Owner::new("redis://a:6379", "workers", "i");
        let b = Owner::new("redis://b:6379", "workers", "i");
        assert_ne!(a.comment(), b.comment());
        assert_eq!(Owner::from_comment(&a.comment()), Some(a.clone()));
        assert_eq!(Owner::from_comment("ws-gw/x/y"), None);
        assert_eq!(Owner::from_comment("other/x/y/z"), None);
        assert!(a.comment().len() < 256);
    }

    #[test]
    fn stale_rules_are_the_expired_the_orphaned_and_the_replaced() {
        let now = 1_800_000_000;
        let peer = Owner::new("redis://127.0.0.1:6379", "workers", "host-b");
        let dead_peer = Owner::new("redis://127.0.0.1:6379", "workers", "host-c");
        let other_setup = Owner::new("redis://elsewhere:6379", "workers", "host-c");
        let mine_old = line(&me(), "br-1", 9091, now + 30);
        let mine_new = line(&me(), "br-1", 9091, now + 60);
        let text = [
            mine_old,
            mine_new.clone(),
            line(&peer, "br-1", 9092, now + 50),
            line(&peer, "br-1", 9093, now - 1),
            line(&dead_peer, "br-1", 9094, now + 50),
            line(&other_setup, "br-1", 9095, now + 50),
            line(&peer, "br-gone", 9096, now + 50),
        ]
        .join("\n");
        let l = parse_listing(&text);
        let keep = vec![("br-1".to_string(), 9091, now + 60)];
        let dead: HashSet<String> = ["host-c".to_string()].into();
        let exists = |b: &str| b != "br-gone";
        let stale: Vec<(u16, i64, Stale)> = stale_rules(&l, &me(), now, &keep, &exists, &dead)
            .into_iter()
            .map(|(r, w)| (r.port, r.until, w))
            .collect();
        assert_eq!(
            stale,
            vec![
                (9091, now + 30, Stale::Replaced),
                (9093, now - 1, Stale::Expired),
                (9094, now + 50, Stale::OwnerGone),
                (9096, now + 50, Stale::NoBridge),
            ]
        );
        assert_eq!(peers(&l, &me()), vec!["host-b", "host-c"]);
    }

    #[test]
    fn only_our_static_rules_of_vanished_bridges_are_orphaned() {
        let workers = format!(
            "-N {CHAIN}\n-A {CHAIN} -i br-gone -j DROP\n-A {CHAIN} -i br-here -j DROP\n-A {CHAIN} -i br-gone -p tcp -m tcp --dport 1 -j ACCEPT\n"
        );
        let user = format!(
            "-N {DOCKER_USER}\n-A {DOCKER_USER} -i br-gone -o br-gone -m comment --comment \"{ICC_TAG}\" -j DROP\n-A {DOCKER_USER} -i br-gone -o br-gone -j DROP\n-A {DOCKER_USER} -j RETURN\n"
        );
        let exists = |b: &str| b == "br-here";
        let got = orphaned_static_rules(&workers, &user, &exists);
        assert_eq!(
            got,
            vec![
                (
                    CHAIN,
                    ["-i", "br-gone", "-j", "DROP"].map(String::from).to_vec()
                ),
                (
                    DOCKER_USER,
                    [
                        "-i",
                        "br-gone",
                        "-o",
                        "br-gone",
                        "-m",
                        "comment",
                        "--comment",
                        ICC_TAG,
                        "-j",
                        "DROP"
                    ]
                    .map(String::from)
                    .to_vec()
                ),
            ]
        );
    }
}

//! Host firewall rules that keep workers away from the host: a worker's
//! bridge may reach the gateway port and nothing else on the host (Redis,
//! the Docker API, the daemon's metrics, anything bound to 0.0.0.0).
//!
//! Traffic between bridges and out to the internet is Docker's concern
//! (internal networks have no route out; bridges are isolated from each
//! other). This module only adds INPUT rules, in a chain of its own, with
//! the same `iptables` the engine uses. Where the daemon may not change the
//! firewall (it runs in a container without NET_ADMIN), it says so once and
//! goes on: there the daemon's own network namespace is the boundary.

use std::process::Command;

/// Chain holding the rules.
pub const CHAIN: &str = "WS-WORKERS";

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

/// Lets `bridge` reach the gateway on `port` and drops everything else it
/// sends to the host.
pub fn isolate_bridge(bridge: &str, port: u16) -> Result<(), String> {
    let _ = iptables(&["-N", CHAIN])?;
    ensure(&["INPUT", "-j", CHAIN], "-I")?;
    let port = port.to_string();
    ensure(&[CHAIN, "-i", bridge, "-j", "DROP"], "-A")?;
    ensure(
        &[
            CHAIN, "-i", bridge, "-p", "tcp", "--dport", &port, "-j", "ACCEPT",
        ],
        "-I",
    )?;
    Ok(())
}

/// Removes this instance's gateway rule for `bridge` (the drop rule stays).
pub fn release_bridge(bridge: &str, port: u16) {
    let port = port.to_string();
    let _ = iptables(&[
        "-D", CHAIN, "-i", bridge, "-p", "tcp", "--dport", &port, "-j", "ACCEPT",
    ]);
}

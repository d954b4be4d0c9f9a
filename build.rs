//! Builds `ws-shim` (shim/ws-shim.rs, std only) as a static binary that the
//! daemon embeds and puts into every worker image it prepares, so that an
//! image needs no shell, no `tar` and no libc of its own.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "shim/ws-shim.rs";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("ws-shim");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let target = std::env::var("TARGET").expect("TARGET");
    let host = std::env::var("HOST").expect("HOST");
    let mut cmd = Command::new(rustc);
    cmd.args([
        "--edition",
        "2021",
        "--crate-type",
        "bin",
        "--crate-name",
        "ws_shim",
        "-C",
        "opt-level=s",
        "-C",
        "panic=abort",
        "-C",
        "strip=symbols",
        "-C",
        "target-feature=+crt-static",
        "-o",
    ])
    .arg(&out)
    .arg(src);
    if target != host {
        cmd.args(["--target", &target]);
    }
    // Cargo's own flags for the daemon (e.g. coverage) are not the shim's.
    cmd.env_remove("CARGO_ENCODED_RUSTFLAGS");
    let o = cmd.output().expect("running rustc for ws-shim");
    if !o.status.success() {
        panic!(
            "building the static ws-shim failed (a static libc is needed: on Debian, libc6-dev):\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

//! What the daemon adds to an image before any worker runs on it: the
//! *prepared layer*. It holds the static delivery shim
//! ([`crate::model::delivery::SHIM_PATH`]), `/workspace` and `/home/worker` owned
//! by the worker user (with whatever the image already had there, re-owned),
//! a `/tmp` when the image has none, and passwd/group entries for uid and
//! gid 1000 when the image has none. With it, any image that can run the
//! agent's own binary can run a worker: it needs no shell, no `tar`, no
//! prepared folders and no user of its own.
//!
//! This module does no I/O: `crate::adapters::images` reads the image's current
//! files, hands them in, and commits the layer this module builds.

use sha2::{Digest, Sha256};

use crate::model::render::{HOME, WORKSPACE};

/// Repository of every image the daemon derives (setup and prepared images).
pub const DERIVED_REPO: &str = "ws-derived";

/// Version of the prepared layer's recipe; a new one prepares every image again.
pub const RECIPE: &str = "prepare-v1";
/// Label on a prepared image: the recipe it was made with.
pub const PREPARED_LABEL: &str = "io.workers-spawner.prepared";
/// The worker's uid and gid.
pub const WORKER_ID: u64 = 1000;

/// The tag of the prepared image of the image with id `base_id`.
pub fn prepared_tag(base_id: &str, shim: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(RECIPE.as_bytes());
    h.update(b"\0");
    h.update(base_id.as_bytes());
    h.update(b"\0");
    h.update(Sha256::digest(shim));
    format!("{DERIVED_REPO}:p-{}", &hex::encode(h.finalize())[..24])
}

/// The Docker architecture name of the machine the shim was built for.
pub fn shim_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "s390x" => "s390x",
        "powerpc64" => "ppc64le",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// Why an image cannot run workers at all, in words; `None` when it can.
pub fn platform_problem(image: &str, os: &str, arch: &str) -> Option<String> {
    let want = shim_architecture();
    if !os.is_empty() && os != "linux" {
        return Some(format!(
            "image {image:?} is built for {os}/{arch}; workers run on linux/{want}"
        ));
    }
    if !arch.is_empty() && arch != want {
        return Some(format!(
            "image {image:?} is built for linux/{arch}; this daemon's workers run on linux/{want} (no emulation is set up)"
        ));
    }
    None
}

/// What `crate::adapters::images` read from the image before preparing it.
#[derive(Debug, Default, Clone)]
pub struct ImageFiles {
    /// `/etc/passwd`, if the image has one.
    pub passwd: Option<Vec<u8>>,
    /// `/etc/group`, if the image has one.
    pub group: Option<Vec<u8>>,
    /// Whether `/tmp` exists.
    pub has_tmp: bool,
    /// Docker's archive of `/workspace` (entries under `workspace/`), if it exists.
    pub workspace: Option<Vec<u8>>,
    /// Docker's archive of `/home/worker` (entries under `worker/`), if it exists.
    pub home: Option<Vec<u8>>,
}

/// `text` with a line for id 1000 appended when no entry has that id
/// (field 3 of passwd and group lines); `None` when one has.
pub fn with_worker_entry(text: &[u8], line: &str) -> Option<Vec<u8>> {
    let has = String::from_utf8_lossy(text).lines().any(|l| {
        l.split(':')
            .nth(2)
            .is_some_and(|id| id.trim() == WORKER_ID.to_string())
    });
    if has {
        return None;
    }
    let mut out = text.to_vec();
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out.extend_from_slice(line.as_bytes());
    out.push(b'\n');
    Some(out)
}

const PASSWD_LINE: &str = "worker:x:1000:1000:workers-spawner worker:/home/worker:/bin/sh";
const GROUP_LINE: &str = "worker:x:1000:";

/// Re-owns every entry of a downloaded archive by the worker and puts it
/// below `parent` (Docker names the entries after the folder's base name).
fn reowned(b: &mut tar::Builder<Vec<u8>>, archive: &[u8], parent: &str) -> std::io::Result<bool> {
    let mut a = tar::Archive::new(archive);
    let mut any = false;
    for e in a.entries()? {
        let mut e = e?;
        let mut h = e.header().clone();
        let path = e.path()?.into_owned();
        let full = if parent.is_empty() {
            path.display().to_string()
        } else {
            format!("{parent}/{}", path.display())
        };
        h.set_uid(WORKER_ID);
        h.set_gid(WORKER_ID);
        let kind = h.entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let target = e.link_name()?.map(|t| t.into_owned()).unwrap_or_default();
            b.append_link(&mut h, &full, target)?;
        } else {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data)?;
            b.append_data(&mut h, &full, data.as_slice())?;
        }
        any = true;
    }
    Ok(any)
}

/// The prepared layer: a tar archive to extract at `/` of a container of
/// the image, built from what the image has now.
pub fn layer(files: &ImageFiles, shim: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let entry = |kind: tar::EntryType, mode: u32, size: u64, owner: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(owner);
        h.set_gid(owner);
        h.set_size(size);
        h.set_mtime(0);
        h
    };
    let shim_dir = crate::model::delivery::SHIM_PATH
        .rsplit_once('/')
        .map(|(d, _)| d.trim_start_matches('/'))
        .unwrap_or_default();
    b.append_data(
        &mut entry(tar::EntryType::Directory, 0o755, 0, 0),
        format!("{shim_dir}/"),
        std::io::empty(),
    )?;
    b.append_data(
        &mut entry(tar::EntryType::Regular, 0o755, shim.len() as u64, 0),
        crate::model::delivery::SHIM_PATH.trim_start_matches('/'),
        shim,
    )?;
    if !files.has_tmp {
        b.append_data(
            &mut entry(tar::EntryType::Directory, 0o1777, 0, 0),
            "tmp/",
            std::io::empty(),
        )?;
    }
    let etc = [
        (&files.passwd, PASSWD_LINE, "etc/passwd"),
        (&files.group, GROUP_LINE, "etc/group"),
    ];
    let mut etc_dir = false;
    for (have, line, path) in etc {
        let new = match have {
            Some(text) => with_worker_entry(text, line),
            None => Some(format!("{line}\n").into_bytes()),
        };
        if let Some(content) = new {
            if have.is_none() && !etc_dir {
                b.append_data(
                    &mut entry(tar::EntryType::Directory, 0o755, 0, 0),
                    "etc/",
                    std::io::empty(),
                )?;
                etc_dir = true;
            }
            b.append_data(
                &mut entry(tar::EntryType::Regular, 0o644, content.len() as u64, 0),
                path,
                content.as_slice(),
            )?;
        }
    }
    // Each writable root: the image's own content, re-owned, or a new folder.
    let home_parent = HOME
        .rsplit_once('/')
        .map(|(p, _)| p.trim_start_matches('/'))
        .unwrap_or_default();
    for (have, parent, root) in [
        (&files.workspace, "", WORKSPACE),
        (&files.home, home_parent, HOME),
    ] {
        let kept = match have {
            Some(archive) => reowned(&mut b, archive, parent.trim_end_matches('/'))?,
            None => false,
        };
        if !kept {
            b.append_data(
                &mut entry(tar::EntryType::Directory, 0o755, 0, WORKER_ID),
                format!("{}/", root.trim_start_matches('/')),
                std::io::empty(),
            )?;
        }
    }
    b.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(tar: &[u8]) -> Vec<(String, u64, u32, String)> {
        let mut a = tar::Archive::new(tar);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let p = e.path().unwrap().display().to_string();
                let h = e.header().clone();
                let mut s = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut s).unwrap();
                (
                    p,
                    h.uid().unwrap(),
                    h.mode().unwrap(),
                    String::from_utf8_lossy(&s).into_owned(),
                )
            })
            .collect()
    }

    fn docker_archive(entries: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (p, c) in entries {
            let mut h = tar::Header::new_gnu();
            if p.ends_with('/') {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            } else {
                h.set_mode(0o644);
                h.set_size(c.len() as u64);
                b.append_data(&mut h, p, c.as_bytes()).unwrap();
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn a_bare_image_gets_the_shim_the_folders_a_tmp_and_a_user() {
        let tar = layer(&ImageFiles::default(), b"SHIM").unwrap();
        let e = entries(&tar);
        let find = |p: &str| e.iter().find(|x| x.0 == p).unwrap_or_else(|| panic!("{p}"));
        assert_eq!(find(&crate::model::delivery::SHIM_PATH[1..]).3, "SHIM");
        assert_eq!(
            find(&crate::model::delivery::SHIM_PATH[1..]).1,
            0,
            "the shim is root's"
        );
        assert_eq!(find("tmp/").2 & 0o7777, 0o1777);
        assert_eq!(find("workspace/").1, 1000);
        assert_eq!(find("home/worker/").1, 1000);
        assert!(find("etc/passwd").3.contains(":1000:1000:"));
        assert_eq!(find("etc/group").3, "worker:x:1000:\n");
    }

    #[test]
    fn what_the_image_has_is_kept_and_reowned() {
        let files = ImageFiles {
            passwd: Some(
                b"root:x:0:0::/root:/bin/sh\nnode:x:1000:1000::/home/node:/bin/sh".to_vec(),
            ),
            group: Some(b"root:x:0:\n".to_vec()),
            has_tmp: true,
            workspace: Some(docker_archive(&[
                ("workspace/", ""),
                ("workspace/README", "hi"),
            ])),
            home: Some(docker_archive(&[("worker/", ""), ("worker/.profile", "x")])),
        };
        let e = entries(&layer(&files, b"S").unwrap());
        let names: Vec<&str> = e.iter().map(|x| x.0.as_str()).collect();
        assert!(!names.contains(&"tmp/"), "{names:?}");
        assert!(
            !names.contains(&"etc/passwd"),
            "uid 1000 exists: passwd untouched"
        );
        let group = e.iter().find(|x| x.0 == "etc/group").unwrap();
        assert_eq!(group.3, "root:x:0:\nworker:x:1000:\n");
        let readme = e.iter().find(|x| x.0 == "workspace/README").unwrap();
        assert_eq!((readme.1, readme.3.as_str()), (1000, "hi"));
        let profile = e.iter().find(|x| x.0 == "home/worker/.profile").unwrap();
        assert_eq!(profile.1, 1000);
        assert!(names.contains(&"home/worker/"));
    }

    #[test]
    fn worker_entries_are_added_only_when_id_1000_is_missing() {
        assert!(with_worker_entry(b"a:x:1000:1000::/:/bin/sh\n", PASSWD_LINE).is_none());
        assert!(with_worker_entry(b"a:x:10000:1::/:/bin/sh\n", PASSWD_LINE).is_some());
        assert_eq!(
            with_worker_entry(b"", GROUP_LINE).unwrap(),
            b"worker:x:1000:\n"
        );
    }

    #[test]
    fn the_tag_follows_the_base_and_the_shim() {
        let a = prepared_tag("sha256:1", b"s");
        assert!(a.starts_with("ws-derived:p-"));
        assert_eq!(a, prepared_tag("sha256:1", b"s"));
        assert_ne!(a, prepared_tag("sha256:2", b"s"));
        assert_ne!(a, prepared_tag("sha256:1", b"t"));
    }

    #[test]
    fn a_foreign_platform_is_named_in_words() {
        let here = shim_architecture();
        assert_eq!(platform_problem("x", "linux", here), None);
        assert_eq!(platform_problem("x", "", ""), None);
        let other = if here == "arm64" { "amd64" } else { "arm64" };
        let m = platform_problem("x:1", "linux", other).unwrap();
        assert!(m.contains("x:1") && m.contains(other), "{m}");
        assert!(platform_problem("w", "windows", here)
            .unwrap()
            .contains("windows"));
    }
}

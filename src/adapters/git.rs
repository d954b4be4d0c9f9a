//! The `git` CLI on the daemon's host: a bare mirror per repository URL
//! (so a second task on a repository fetches only what is new), a fresh
//! checkout of a ref on a new branch for each worker, and the change read
//! back from a worker's workspace (commits, leftovers, the combined patch),
//! committed and pushed when the preset says so.
//!
//! Credentials reach git only through its environment
//! (`GIT_CONFIG_*`: an `http.<origin>/.extraHeader` scoped to the
//! credentials' origin), never a URL, a file or an argument; no system or
//! global git config, hook, fsmonitor or transport helper runs. A
//! workspace read back is the agent's: before git touches it, its
//! `.git/config`, hooks, alternates and common dir are replaced or removed,
//! so nothing the agent wrote there runs on the host.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use sha2::Digest;

use crate::model::workspace::{Author, Commit, RepoPlan};

/// Why a git step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GitError {
    /// The repository could not be fetched or pushed (git's own words,
    /// redacted).
    #[error("{0}")]
    Remote(String),
    /// The ref is not in the repository.
    #[error("ref {0:?} is not in the repository")]
    RefNotFound(String),
    /// A local step failed (disk, a broken workspace, a timeout).
    #[error("{0}")]
    Local(String),
}

/// The secret of a repository as git receives it: a basic-auth header for
/// one origin.
#[derive(Clone)]
pub struct Auth {
    origin: String,
    header: String,
    secrets: Vec<String>,
    /// Who the secret is (a hash of origin, user and secret): mirrors
    /// are kept apart by it.
    identity: String,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("origin", &self.origin)
            .finish()
    }
}

impl Auth {
    /// Basic auth of `username` and `secret`, sent only to `origin`.
    pub fn basic(origin: &str, username: &str, secret: &str) -> Auth {
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{secret}"));
        let identity = hex::encode(sha2::Sha256::digest(
            format!("{origin}\n{username}\n{secret}").as_bytes(),
        ));
        Auth {
            origin: origin.trim_end_matches('/').to_string(),
            header: format!("Authorization: Basic {b64}"),
            secrets: vec![secret.to_string(), b64],
            identity,
        }
    }

    /// Masks the secret in git's words.
    fn redact(&self, text: &str) -> String {
        let mut t = text.to_string();
        for s in self.secrets.iter().filter(|s| !s.is_empty()) {
            t = t.replace(s.as_str(), "[REDACTED]");
        }
        t
    }
}

/// A worker's checkout, ready to be delivered as `/workspace`.
#[derive(Debug)]
pub struct Checkout {
    /// The tree (with its `.git`), removed on drop.
    pub dir: tempfile::TempDir,
    /// The commit checked out.
    pub base: String,
}

/// What the agent changed, read from its workspace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    /// The commit the change is against.
    pub base: String,
    /// The branch's last commit (after the daemon's commit of leftovers,
    /// when it pushed).
    pub head: String,
    /// Commits after `base`, oldest first (the newest [`MAX_COMMITS`]).
    pub commits: Vec<Commit>,
    /// How many commits there are after `base`.
    pub commits_total: u64,
    /// Whether there were uncommitted changes.
    pub uncommitted: bool,
    /// The combined patch against `base`.
    pub patch: Vec<u8>,
    /// Files touched.
    pub files_changed: u64,
    /// Lines added.
    pub insertions: u64,
    /// Lines removed.
    pub deletions: u64,
    /// Pushed?
    pub pushed: bool,
    /// Why not, when a push was asked for.
    pub push_error: Option<String>,
}

/// The git CLI with a mirror cache.
pub struct Git {
    cache_dir: PathBuf,
    timeout: Duration,
    locks: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

/// The ref of a checkout that records its base commit: it travels with the
/// repository (a session's volume keeps it across containers and daemons).
pub const BASE_REF: &str = "refs/workers-spawner/base";

/// Most commits a change lists (the rest are counted).
pub const MAX_COMMITS: usize = 1000;

/// Words of git's stderr kept in an error.
const ERROR_TAIL: usize = 600;

impl Git {
    /// Mirrors under `cache_dir`; every git command bounded by `timeout`.
    pub fn new(cache_dir: PathBuf, timeout: Duration) -> Git {
        Git {
            cache_dir,
            timeout,
            locks: Mutex::default(),
        }
    }

    /// The mirror folder of `url` fetched with `auth` (a private
    /// repository's mirror is never served to a request without its
    /// credentials).
    pub fn mirror_of(&self, url: &str, auth: Option<&Auth>) -> PathBuf {
        let who = auth.map(|a| a.identity.as_str()).unwrap_or("");
        let h = hex::encode(sha2::Sha256::digest(format!("{url}\n{who}").as_bytes()));
        self.cache_dir.join(format!("{}.git", &h[..32]))
    }

    /// Fetches `repo` into its mirror (a clone the first time, only what is
    /// new after) and checks its ref out into a fresh tree on its branch,
    /// `origin` pointing at its URL (no credentials anywhere in it) and the
    /// preset's author as the tree's committer identity.
    /// `excludes` (paths below the tree: the daemon's own files) go into
    /// `.git/info/exclude`, so the agent's `git add -A` leaves them out.
    pub async fn checkout(
        &self,
        repo: &RepoPlan,
        auth: Option<&Auth>,
        excludes: &[String],
    ) -> Result<Checkout, GitError> {
        let mirror = self.mirror_of(&repo.url, auth);
        let lock = {
            let mut locks = self.locks.lock().expect("git locks");
            locks.entry(mirror.clone()).or_default().clone()
        };
        let _held = lock.lock().await;
        let local = |e: std::io::Error| GitError::Local(format!("the repository cache: {e}"));
        tokio::fs::create_dir_all(&self.cache_dir)
            .await
            .map_err(local)?;
        if !mirror.join("HEAD").is_file() {
            let tmp = tempfile::Builder::new()
                .prefix(".clone.")
                .tempdir_in(&self.cache_dir)
                .map_err(local)?;
            let into = tmp.path().join("m.git");
            self.run(
                None,
                &[
                    "clone",
                    "--mirror",
                    "--quiet",
                    "--",
                    &repo.url,
                    path_str(&into)?,
                ],
                auth,
            )
            .await
            .map_err(remote)?;
            let _ = tokio::fs::remove_dir_all(&mirror).await;
            tokio::fs::rename(&into, &mirror).await.map_err(local)?;
        } else if !self.has_commit(&mirror, repo.reference.as_deref()).await {
            self.run(
                Some(&mirror),
                &["fetch", "--quiet", "--prune", "--force", "origin"],
                auth,
            )
            .await
            .map_err(remote)?;
        }
        let base = self.resolve(&mirror, repo.reference.as_deref()).await?;
        let dir = tempfile::Builder::new()
            .prefix(".checkout.")
            .tempdir_in(&self.cache_dir)
            .map_err(local)?;
        let tree = dir.path();
        self.run(
            None,
            &[
                "clone",
                "--quiet",
                "--local",
                "--no-checkout",
                "--",
                path_str(&mirror)?,
                path_str(tree)?,
            ],
            None,
        )
        .await
        .map_err(GitError::Local)?;
        drop(_held);
        let set = |k: &str, v: &str| vec!["config".to_string(), k.to_string(), v.to_string()];
        for args in [
            vec![
                "checkout".into(),
                "--quiet".into(),
                "-B".into(),
                repo.branch.clone(),
                base.clone(),
            ],
            vec!["update-ref".into(), BASE_REF.into(), base.clone()],
            set("remote.origin.url", &repo.url),
            set("user.name", &repo.author.name),
            set("user.email", &repo.author.email),
        ] {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            self.run(Some(tree), &args, None)
                .await
                .map_err(GitError::Local)?;
        }
        if !excludes.is_empty() {
            let info = tree.join(".git/info");
            let mut text = tokio::fs::read_to_string(info.join("exclude"))
                .await
                .unwrap_or_default();
            text.push_str("\n# The daemon's own files (workers-spawner)\n");
            for e in excludes {
                text.push('/');
                for c in e.chars() {
                    if matches!(c, '\\' | '*' | '?' | '[' | '!' | '#' | ' ') {
                        text.push('\\');
                    }
                    text.push(c);
                }
                text.push('\n');
            }
            tokio::fs::create_dir_all(&info).await.map_err(local)?;
            tokio::fs::write(info.join("exclude"), text)
                .await
                .map_err(local)?;
        }
        Ok(Checkout { dir, base })
    }

    /// Whether `reference` is a full commit sha the mirror already has (no
    /// fetch needed then).
    async fn has_commit(&self, mirror: &Path, reference: Option<&str>) -> bool {
        let Some(r) =
            reference.filter(|r| r.len() == 40 && r.chars().all(|c| c.is_ascii_hexdigit()))
        else {
            return false;
        };
        self.run(
            Some(mirror),
            &["cat-file", "-e", &format!("{r}^{{commit}}")],
            None,
        )
        .await
        .is_ok()
    }

    /// The commit `reference` names in `mirror`: a branch, a tag, then a
    /// commit; the remote's HEAD when `None`.
    async fn resolve(&self, mirror: &Path, reference: Option<&str>) -> Result<String, GitError> {
        let candidates: Vec<String> = match reference {
            None => vec!["HEAD".into()],
            Some(r) => vec![
                format!("refs/heads/{r}"),
                format!("refs/tags/{r}"),
                r.to_string(),
            ],
        };
        for c in &candidates {
            if let Ok(out) = self
                .run(
                    Some(mirror),
                    &[
                        "rev-parse",
                        "--verify",
                        "--quiet",
                        "--end-of-options",
                        &format!("{c}^{{commit}}"),
                    ],
                    None,
                )
                .await
            {
                let sha = String::from_utf8_lossy(&out).trim().to_string();
                if !sha.is_empty() {
                    return Ok(sha);
                }
            }
        }
        Err(GitError::RefNotFound(
            reference.unwrap_or("HEAD").to_string(),
        ))
    }

    /// Reads the change of the workspace unpacked at `tree` against
    /// `base` (else the checkout's [`BASE_REF`]); with `repo.push`, commits
    /// leftovers as `author` and pushes `repo.branch` with `auth` (forced
    /// for the daemon's own `ws/` branches, which always show the latest
    /// state; any other branch only fast-forwards). `tree` is the agent's:
    /// it is made safe first ([`neutralize`]).
    pub async fn change(
        &self,
        tree: &Path,
        repo: &RepoPlan,
        base: Option<&str>,
        request_id: &str,
        auth: Option<&Auth>,
        restore: &[String],
    ) -> Result<Change, GitError> {
        neutralize(tree, &repo.url)
            .map_err(|e| GitError::Local(format!("the workspace's .git: {e}")))?;
        let git = |args: Vec<String>| async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            self.run(Some(tree), &args, None)
                .await
                .map_err(GitError::Local)
        };
        let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        let base = match base {
            Some(b) => b.to_string(),
            None => {
                let out = git(s(&[
                    "rev-parse",
                    "--verify",
                    &format!("{BASE_REF}^{{commit}}"),
                ]))
                .await
                .map_err(|_| {
                    GitError::Local("the workspace does not record its base commit".into())
                })?;
                String::from_utf8_lossy(&out).trim().to_string()
            }
        };
        let base = base.as_str();
        // The daemon's files the agent left as they were go back to the
        // repository's version (when it has one): they are not its change.
        for path in restore {
            let _ = self
                .run(
                    Some(tree),
                    &[
                        "checkout",
                        "--quiet",
                        "HEAD",
                        "--",
                        &format!(":(literal){path}"),
                    ],
                    None,
                )
                .await;
        }
        git(s(&["cat-file", "-e", &format!("{base}^{{commit}}")]))
            .await
            .map_err(|_| {
                GitError::Local(format!(
                    "the workspace no longer holds its base commit {base}"
                ))
            })?;
        let head_of = |out: Vec<u8>| String::from_utf8_lossy(&out).trim().to_string();
        let mut head = head_of(git(s(&["rev-parse", "--verify", "HEAD^{commit}"])).await?);
        // NUL-separated fields (no subject holds a NUL), the newest
        // MAX_COMMITS only; the count says how many there were.
        let count = git(s(&["rev-list", "--count", &format!("{base}..{head}")])).await?;
        let commits_total: u64 = String::from_utf8_lossy(&count).trim().parse().unwrap_or(0);
        let log = git(s(&[
            "log",
            "--reverse",
            &format!("--max-count={MAX_COMMITS}"),
            "--format=%H%x00%s%x00%an <%ae>%x00",
            &format!("{base}..{head}"),
        ]))
        .await?;
        let text = String::from_utf8_lossy(&log);
        let fields: Vec<&str> = text.split('\0').collect();
        let commits = fields
            .chunks_exact(3)
            .filter_map(|f| {
                let sha = f[0].trim_start_matches('\n');
                (sha.len() == 40 && sha.chars().all(|c| c.is_ascii_hexdigit())).then(|| Commit {
                    sha: sha.to_string(),
                    subject: f[1].to_string(),
                    author: f[2].to_string(),
                })
            })
            .collect();
        git(s(&["add", "--all", "--", "."])).await?;
        let uncommitted = self
            .run(
                Some(tree),
                &["diff", "--cached", "--quiet", "HEAD", "--"],
                None,
            )
            .await
            .is_err();
        let patch = git(s(&[
            "diff",
            "--cached",
            "--binary",
            "--no-color",
            "--no-ext-diff",
            base,
            "--",
        ]))
        .await?;
        let numstat = git(s(&[
            "diff",
            "--cached",
            "--numstat",
            "--no-color",
            base,
            "--",
        ]))
        .await?;
        let (mut files_changed, mut insertions, mut deletions) = (0u64, 0u64, 0u64);
        for line in String::from_utf8_lossy(&numstat).lines() {
            let mut f = line.split('\t');
            files_changed += 1;
            insertions += f.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            deletions += f.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        }
        let mut change = Change {
            commits_total,
            base: base.to_string(),
            head: head.clone(),
            commits,
            uncommitted,
            patch,
            files_changed,
            insertions,
            deletions,
            pushed: false,
            push_error: None,
        };
        if !repo.push {
            return Ok(change);
        }
        if uncommitted {
            let Author { name, email } = &repo.author;
            let msg = format!("Uncommitted changes of request {request_id}\n\nCommitted by workers-spawner when the agent ended.");
            git(vec![
                "-c".into(),
                format!("user.name={name}"),
                "-c".into(),
                format!("user.email={email}"),
                "commit".into(),
                "--quiet".into(),
                "--no-verify".into(),
                "-m".into(),
                msg,
            ])
            .await?;
            head = head_of(git(s(&["rev-parse", "--verify", "HEAD^{commit}"])).await?);
            change.head = head.clone();
        }
        let force = if repo.branch.starts_with("ws/") {
            "+"
        } else {
            ""
        };
        let refspec = format!("{force}{head}:refs/heads/{}", repo.branch);
        match self
            .run(
                Some(tree),
                &[
                    "push",
                    "--quiet",
                    "--no-verify",
                    "--porcelain",
                    "origin",
                    &refspec,
                ],
                auth,
            )
            .await
        {
            Ok(_) => change.pushed = true,
            Err(e) => change.push_error = Some(e),
        }
        Ok(change)
    }

    /// Runs `git args` (in `dir`), bounded by the timeout, with a clean
    /// environment and `auth`'s header for its origin; stdout, or the tail
    /// of stderr (redacted).
    async fn run(
        &self,
        dir: Option<&Path>,
        args: &[&str],
        auth: Option<&Auth>,
    ) -> Result<Vec<u8>, String> {
        let mut cmd = tokio::process::Command::new("git");
        cmd.env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
            )
            .env("HOME", &self.cache_dir)
            .env("LC_ALL", "C")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ALLOW_PROTOCOL", "http:https:git:file")
            .env("GIT_LFS_SKIP_SMUDGE", "1");
        // The network settings of the daemon's host still apply.
        for var in [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "NO_PROXY",
            "no_proxy",
            "ALL_PROXY",
            "all_proxy",
            "SSL_CERT_FILE",
            "SSL_CERT_DIR",
            "GIT_SSL_CAINFO",
        ] {
            if let Some(v) = std::env::var_os(var) {
                cmd.env(var, v);
            }
        }
        // Never a repository above the folder it runs in (an agent's tree
        // without its .git/HEAD would otherwise lead git upwards).
        if let Some(parent) = dir.and_then(Path::parent) {
            cmd.env("GIT_CEILING_DIRECTORIES", parent);
        }
        let mut config: Vec<(String, String)> = vec![
            ("protocol.ext.allow".into(), "never".into()),
            ("core.hooksPath".into(), "/dev/null".into()),
            ("core.fsmonitor".into(), "false".into()),
            ("core.askPass".into(), String::new()),
            ("credential.helper".into(), String::new()),
            ("http.lowSpeedLimit".into(), "1000".into()),
            ("http.lowSpeedTime".into(), "60".into()),
            ("init.defaultBranch".into(), "main".into()),
        ];
        if let Some(a) = auth {
            config.push((format!("http.{}/.extraHeader", a.origin), a.header.clone()));
            // A redirect would carry the header to wherever it points.
            config.push(("http.followRedirects".into(), "false".into()));
        }
        cmd.env("GIT_CONFIG_COUNT", config.len().to_string());
        for (i, (k, v)) in config.iter().enumerate() {
            cmd.env(format!("GIT_CONFIG_KEY_{i}"), k);
            cmd.env(format!("GIT_CONFIG_VALUE_{i}"), v);
        }
        if let Some(d) = dir {
            cmd.current_dir(d);
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let redact = |t: &str| auth.map(|a| a.redact(t)).unwrap_or_else(|| t.to_string());
        let out = match tokio::time::timeout(self.timeout, cmd.output()).await {
            Err(_) => {
                return Err(format!(
                    "git {} took longer than {}s",
                    args.first().unwrap_or(&""),
                    self.timeout.as_secs()
                ))
            }
            Ok(Err(e)) => return Err(format!("cannot run git: {e}")),
            Ok(Ok(out)) => out,
        };
        if out.status.success() {
            return Ok(out.stdout);
        }
        let text = String::from_utf8_lossy(&out.stderr);
        let text = text.trim();
        let mut cut = text.len().saturating_sub(ERROR_TAIL);
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        let words = if text.is_empty() {
            format!(
                "git {} failed ({})",
                args.first().unwrap_or(&""),
                out.status
            )
        } else {
            text[cut..].to_string()
        };
        Err(redact(&words))
    }
}

fn remote(e: String) -> GitError {
    GitError::Remote(e)
}

fn path_str(p: &Path) -> Result<&str, GitError> {
    p.to_str()
        .ok_or_else(|| GitError::Local(format!("{} is not UTF-8", p.display())))
}

/// Makes the agent's `.git` safe for the host's git: a config of the
/// daemon's own (origin = `url`), no hooks, no alternates (which could
/// point at host paths), no common dir, no symlinks in it.
pub fn neutralize(tree: &Path, url: &str) -> std::io::Result<()> {
    let git = tree.join(".git");
    let meta = std::fs::symlink_metadata(&git)?;
    if !meta.is_dir() {
        return Err(std::io::Error::other(
            "the workspace's .git is not a folder (a gitdir file or a link is not followed)",
        ));
    }
    refuse_links(&git)?;
    for gone in [
        "hooks",
        "commondir",
        "objects/info/alternates",
        "objects/info/http-alternates",
    ] {
        let p = git.join(gone);
        if p.is_dir() {
            std::fs::remove_dir_all(&p)?;
        } else if p.exists() {
            std::fs::remove_file(&p)?;
        }
    }
    let url = url.replace('\\', "\\\\").replace('"', "\\\"");
    std::fs::write(
        git.join("config"),
        format!(
            "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n\
             [remote \"origin\"]\n\turl = \"{url}\"\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n"
        ),
    )
}

/// Fails when a symbolic link lies anywhere below `dir`.
fn refuse_links(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            return Err(std::io::Error::other(format!(
                "{} is a symbolic link",
                entry.path().display()
            )));
        }
        if kind.is_dir() {
            refuse_links(&entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_auth_header_is_masked_and_never_debug_printed() {
        let a = Auth::basic("https://h/", "x-access-token", "s3cr3t");
        assert_eq!(a.origin, "https://h");
        let b64 = base64::engine::general_purpose::STANDARD.encode("x-access-token:s3cr3t");
        assert!(a.header.ends_with(&b64));
        let said = a.redact(&format!("fatal: s3cr3t {b64}"));
        assert!(!said.contains("s3cr3t") && !said.contains(&b64), "{said}");
        assert!(!format!("{a:?}").contains("s3cr3t"));
    }

    #[test]
    fn an_agents_git_folder_loses_its_hooks_config_and_alternates() {
        let t = tempfile::tempdir().unwrap();
        let g = t.path().join(".git");
        std::fs::create_dir_all(g.join("hooks")).unwrap();
        std::fs::create_dir_all(g.join("objects/info")).unwrap();
        std::fs::write(g.join("hooks/post-checkout"), "#!/bin/sh\ntouch /tmp/x").unwrap();
        std::fs::write(g.join("objects/info/alternates"), "/etc").unwrap();
        std::fs::write(g.join("config"), "[core]\n\tfsmonitor = touch /tmp/pwned\n").unwrap();
        neutralize(t.path(), "https://h/r.git").unwrap();
        assert!(!g.join("hooks").exists());
        assert!(!g.join("objects/info/alternates").exists());
        let c = std::fs::read_to_string(g.join("config")).unwrap();
        assert!(
            !c.contains("fsmonitor") && c.contains("https://h/r.git"),
            "{c}"
        );
        std::os::unix::fs::symlink("/etc", g.join("objects/pack")).unwrap();
        assert!(neutralize(t.path(), "https://h/r.git").is_err());
        let t2 = tempfile::tempdir().unwrap();
        std::fs::write(t2.path().join(".git"), "gitdir: /etc").unwrap();
        assert!(neutralize(t2.path(), "x").is_err());
    }
}

//! A worker's workspace in and out. In: its repository checked out on the
//! daemon's host (`adapters::git`) and extracted as `/workspace` into the
//! created container before it starts (the archive API: any image, binary
//! files, links and modes kept). Out: when the agent has ended (any status,
//! the container stopped, before its removal) the workspace is read back
//! through the archive API, which needs nothing in the image and works on a
//! stopped container; the change against the base commit is computed (and
//! pushed), the declared artifacts and the transcript are stored
//! (`adapters::artifacts`), and the result says what there is.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::StreamExt;

use super::WorkerEnv;
use crate::adapters::artifacts::Artifacts;
use crate::adapters::engine::OutputStream;
use crate::adapters::git::{Auth, Checkout, Git, GitError};
use crate::model::outcome::ErrorCode;
use crate::model::protocol::{ErrorInfo, ResultRecord};
use crate::model::redact::Redactor;
use crate::model::workspace::{ArtifactRecord, Refused, RepoPlan, WorkspacePlan, WorkspaceReport};

/// The name of the transcript artifact.
pub const TRANSCRIPT: &str = "transcript.log";
/// The name of the patch artifact.
pub const PATCH: &str = "patch.diff";
/// Most refused files a result names (the rest are counted in one entry).
const MAX_REFUSED: usize = 100;

/// Size bounds of what is read back and kept.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// One declared artifact.
    pub artifact: u64,
    /// All declared artifacts of a request.
    pub artifacts_total: u64,
    /// The transcript.
    pub transcript: u64,
    /// The workspace tar read back.
    pub workspace: u64,
    /// The whole read-back of one request (its git steps included).
    pub collect: std::time::Duration,
}

/// The handles a workspace needs: git, the store, the bounds.
pub struct Workspaces {
    /// The git CLI with its mirrors.
    pub git: Git,
    /// The artifact store.
    pub artifacts: Artifacts,
    /// Size bounds.
    pub bounds: Bounds,
}

/// A checkout ready to go into its container.
pub struct Delivery {
    /// The tree (removed on drop).
    pub checkout: Checkout,
    /// Its tar, `workspace/...` owned by the worker user.
    pub tar: Vec<u8>,
}

/// The secret of `repo`, read from the daemon's environment.
pub fn auth_of(repo: &RepoPlan) -> Option<Auth> {
    let c = repo.credentials.as_ref()?;
    let secret = std::env::var(&c.from_env).ok()?;
    Some(Auth::basic(&c.origin, &c.username, &secret))
}

/// The error of a repository that could not be checked out.
pub fn checkout_error(e: &GitError) -> ErrorInfo {
    match e {
        GitError::RefNotFound(r) => ErrorCode::RepoUnavailable.info(
            Some("workspace.repo.ref"),
            format!("workspace.repo.ref: {r:?} is not a branch, tag or commit of the repository"),
        ),
        GitError::Remote(m) => ErrorCode::RepoUnavailable.info(
            Some("workspace.repo"),
            format!("workspace.repo: the repository could not be fetched: {m}"),
        ),
        GitError::Local(m) => ErrorCode::RepoUnavailable.info(
            Some("workspace.repo"),
            format!("workspace.repo: the checkout failed on the daemon's host: {m}"),
        ),
    }
}

impl Workspaces {
    /// Checks the plan's repository out and tars it for its container (to
    /// be extracted at `/workspace`); the plan's base is set. `None`: the
    /// plan has no repository.
    pub async fn prepare(&self, plan: &mut WorkspacePlan) -> Result<Option<Delivery>, ErrorInfo> {
        let excludes: Vec<String> = plan.rendered.keys().cloned().collect();
        let Some(repo) = plan.repo.as_mut() else {
            return Ok(None);
        };
        let auth = auth_of(repo);
        let checkout = self
            .git
            .checkout(repo, auth.as_ref(), &excludes)
            .await
            .map_err(|e| checkout_error(&e))?;
        repo.base = Some(checkout.base.clone());
        let root = checkout.dir.path().to_path_buf();
        let tar = tokio::task::spawn_blocking(move || tree_tar(&root, ""))
            .await
            .map_err(|e| ErrorCode::RepoUnavailable.info(Some("workspace.repo"), e.to_string()))?
            .map_err(|e| {
                ErrorCode::RepoUnavailable.info(
                    Some("workspace.repo"),
                    format!("workspace.repo: packing the checkout failed: {e}"),
                )
            })?;
        Ok(Some(Delivery { checkout, tar }))
    }
}

/// Where a task's whole output comes from.
pub enum Transcript {
    /// The container's log (a one-shot or pooled worker, adopted or not).
    Logs,
    /// What the exec printed, captured as it ran (a session task).
    Captured(Vec<u8>),
}

/// Reads back the job's workspace and output and adds what there is to
/// `result`: the transcript always, the change when it started from a
/// repository, the declared artifacts. Failures are reported in the
/// result, never raised: the agent's result stands.
pub async fn collect(
    env: &WorkerEnv,
    request_id: &str,
    container_id: &str,
    plan: Option<&WorkspacePlan>,
    redactor: &Redactor,
    transcript: Transcript,
    result: &mut ResultRecord,
) {
    let ws = &env.workspaces;
    let started = std::time::Instant::now();
    let mut read_bytes = 0u64;
    let mut kept: Vec<ArtifactRecord> = Vec::new();
    let raw = match transcript {
        Transcript::Captured(b) => b,
        Transcript::Logs => tokio::time::timeout(
            std::time::Duration::from_secs(60),
            whole_log(env, container_id, ws.bounds.transcript),
        )
        .await
        .unwrap_or_default(),
    };
    // Masking up to transcript_max_bytes is work for a blocking thread.
    let (limit, red) = (ws.bounds.transcript, redactor.clone());
    let text = tokio::task::spawn_blocking(move || transcript_text(&raw, limit, &red))
        .await
        .unwrap_or_default();
    match ws
        .artifacts
        .put(request_id, TRANSCRIPT, text.into_bytes())
        .await
    {
        Ok(r) => kept.push(r),
        Err(e) => tracing::warn!(request_id, error = %e, "storing the transcript failed"),
    }
    if let Some(plan) = plan {
        // One bound for the whole read-back: a wedged engine or a git
        // that crawls delays the result by this much at most.
        let bound = ws.bounds.collect;
        let mut part = Part::default();
        let done = tokio::time::timeout(
            bound,
            read_change(env, request_id, container_id, plan, redactor, &mut part),
        )
        .await;
        read_bytes = part.bytes;
        kept.extend(part.kept);
        result.artifacts_refused = part.refused;
        result.workspace = part.report;
        if done.is_err() {
            let why = format!(
                "reading the workspace back took longer than {}s",
                bound.as_secs()
            );
            if let Some(repo) = &plan.repo {
                result
                    .workspace
                    .get_or_insert_with(|| failed_report(repo, &why));
            }
            result.artifacts_refused.push(Refused {
                name: "/workspace".into(),
                reason: why,
            });
        }
    }
    if let Err(e) = ws.artifacts.write_index(request_id, &kept).await {
        tracing::warn!(request_id, error = %e, "writing the artifact index failed");
    }
    let w = result.workspace.as_ref();
    let data = serde_json::json!({
        "artifacts": kept.len(),
        "refused": result.artifacts_refused.len(),
        "commits": w.map(|w| w.commits.len()),
        "files_changed": w.map(|w| w.files_changed),
        "pushed": w.map(|w| w.pushed),
        "error": w.and_then(|w| w.error.clone()),
        "bytes": read_bytes,
        "ms": started.elapsed().as_millis() as u64,
    });
    // Only a request with a workspace plan says so: the event stream of
    // every other request stays as PROTOCOL.md shows it.
    if plan.is_some() {
        env.sink
            .event(
                request_id,
                crate::model::protocol::EventType::WorkspaceCollected,
                data,
            )
            .await;
    }
    result.artifacts = kept;
}

/// What the read-back gathered so far (kept when its bound cuts it).
#[derive(Default)]
struct Part {
    bytes: u64,
    kept: Vec<ArtifactRecord>,
    refused: Vec<Refused>,
    report: Option<WorkspaceReport>,
}

/// Reads `/workspace` back: the change of its repository, its declared
/// artifacts.
async fn read_change(
    env: &WorkerEnv,
    request_id: &str,
    container_id: &str,
    plan: &WorkspacePlan,
    redactor: &Redactor,
    part: &mut Part,
) {
    let ws = &env.workspaces;
    let (tree, problem, bytes) = read_back(env, container_id, ws.bounds.workspace).await;
    part.bytes = bytes;
    if let Some(repo) = &plan.repo {
        part.report = Some(match &tree {
            Some(t) => {
                change_report(
                    ws,
                    request_id,
                    t.path(),
                    plan,
                    repo,
                    redactor,
                    &mut part.kept,
                )
                .await
            }
            None => failed_report(
                repo,
                problem
                    .as_deref()
                    .unwrap_or("the workspace could not be read back"),
            ),
        });
    }
    if !plan.artifacts.is_empty() {
        match &tree {
            Some(t) => {
                let (records, refused) = declared(ws, request_id, t.path(), &plan.artifacts).await;
                part.kept.extend(records);
                part.refused = refused;
            }
            None => part.refused.push(Refused {
                name: "/workspace".into(),
                reason: problem.unwrap_or_else(|| "not readable".into()),
            }),
        }
    }
}

fn failed_report(repo: &RepoPlan, why: &str) -> WorkspaceReport {
    WorkspaceReport {
        base: repo.base.clone().unwrap_or_default(),
        branch: repo.branch.clone(),
        error: Some(why.to_string()),
        push_error: repo.push.then(|| "the change was not read".to_string()),
        ..Default::default()
    }
}

/// Removes the daemon's files the agent left as they were from `tree`;
/// their paths (to be restored from the repository, if it has them).
fn untouched_rendered(
    tree: &Path,
    rendered: &std::collections::BTreeMap<String, String>,
) -> Vec<String> {
    use sha2::Digest;
    let mut out = Vec::new();
    for (rel, sha) in rendered {
        // Only through real folders: a link on the way could lead out of
        // the tree (to a file of the host the daemon must not touch).
        if !no_link_on_the_way(tree, rel) {
            continue;
        }
        let path = tree.join(rel);
        let same = read_plain(&path)
            .map(|b| &hex::encode(sha2::Sha256::digest(&b)) == sha)
            .unwrap_or(false);
        if same && std::fs::remove_file(&path).is_ok() {
            out.push(rel.clone());
        }
    }
    out
}

/// Whether every folder from `tree` down to `rel`'s parent is a real
/// folder (no link).
fn no_link_on_the_way(tree: &Path, rel: &str) -> bool {
    let mut at = tree.to_path_buf();
    let parts: Vec<&str> = rel.split('/').collect();
    for p in &parts[..parts.len().saturating_sub(1)] {
        if p.is_empty() || *p == "." || *p == ".." {
            return false;
        }
        at.push(p);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            _ => return false,
        }
    }
    true
}

async fn change_report(
    ws: &Workspaces,
    request_id: &str,
    tree: &Path,
    plan: &WorkspacePlan,
    repo: &RepoPlan,
    redactor: &Redactor,
    kept: &mut Vec<ArtifactRecord>,
) -> WorkspaceReport {
    let wt = tree.join("workspace");
    let auth = auth_of(repo);
    let restore = untouched_rendered(&wt, &plan.rendered);
    match ws
        .git
        .change(
            &wt,
            repo,
            repo.base.as_deref(),
            request_id,
            auth.as_ref(),
            &restore,
        )
        .await
    {
        Ok(c) => {
            let patch = match ws.artifacts.put(request_id, PATCH, c.patch).await {
                Ok(r) => {
                    kept.push(r.clone());
                    Some(r)
                }
                Err(e) => {
                    tracing::warn!(request_id, error = %e, "storing the patch failed");
                    None
                }
            };
            WorkspaceReport {
                base: c.base,
                head: c.head,
                branch: repo.branch.clone(),
                commits: c
                    .commits
                    .into_iter()
                    .map(|mut k| {
                        k.subject = redactor.redact(&k.subject);
                        k.author = redactor.redact(&k.author);
                        k
                    })
                    .collect(),
                commits_total: c.commits_total,
                uncommitted: c.uncommitted,
                files_changed: c.files_changed,
                insertions: c.insertions,
                deletions: c.deletions,
                patch,
                pushed: c.pushed,
                push_error: c.push_error.map(|e| redactor.redact(&e)),
                error: None,
            }
        }
        Err(e) => failed_report(repo, &redactor.redact(&e.to_string())),
    }
}

/// The whole log of the container, stdout and stderr in order, up to
/// `limit` bytes (and a little: the cut is made when the text is made).
async fn whole_log(env: &WorkerEnv, container_id: &str, limit: u64) -> Vec<u8> {
    let logs = env.engine.logs(container_id, false, None);
    tokio::pin!(logs);
    let mut out = Vec::new();
    while let Some(item) = logs.next().await {
        match item {
            Ok((OutputStream::Stdout | OutputStream::Stderr, chunk)) => {
                out.extend_from_slice(&chunk);
                if out.len() as u64 > limit {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    out
}

/// The transcript's text: redacted, cut at `limit` with a last line saying so.
pub fn transcript_text(raw: &[u8], limit: u64, redactor: &Redactor) -> String {
    let cut = raw.len() as u64 > limit;
    let kept = &raw[..raw.len().min(limit as usize)];
    let mut text = redactor.redact(&String::from_utf8_lossy(kept));
    if cut {
        text.push_str(&format!(
            "\n[workers-spawner: the transcript was cut at {limit} bytes (transcript_max_bytes)]\n"
        ));
    }
    text
}

/// The container's `/workspace`, unpacked in a temp folder (as
/// `workspace/...`), or why not; and the bytes read.
async fn read_back(
    env: &WorkerEnv,
    container_id: &str,
    limit: u64,
) -> (Option<tempfile::TempDir>, Option<String>, u64) {
    // The tar goes to a file, never whole into memory.
    let dir = match tempfile::Builder::new().prefix("ws-collect.").tempdir() {
        Ok(d) => d,
        Err(e) => {
            return (
                None,
                Some(format!("no temp folder to read the workspace into: {e}")),
                0,
            )
        }
    };
    let tar_path = dir.path().join("workspace.tar");
    let bytes = match env
        .engine
        .download_to_file(container_id, "/workspace", limit, &tar_path)
        .await
    {
        Ok(Some(Ok(n))) => n,
        Ok(Some(Err(limit))) => {
            return (
                None,
                Some(format!(
                    "the workspace is larger than workspace_max_bytes ({limit})"
                )),
                limit,
            )
        }
        Ok(None) => return (None, Some("the container has no /workspace".into()), 0),
        Err(e) => return (None, Some(format!("reading the workspace failed: {e}")), 0),
    };
    let unpacked = tokio::task::spawn_blocking(move || -> std::io::Result<tempfile::TempDir> {
        let file = std::fs::File::open(&tar_path)?;
        let mut archive = tar::Archive::new(std::io::BufReader::new(file));
        archive.set_preserve_permissions(false);
        archive.set_preserve_mtime(false);
        archive.set_unpack_xattrs(false);
        archive.set_overwrite(true);
        archive.unpack(dir.path())?;
        std::fs::remove_file(&tar_path)?;
        Ok(dir)
    })
    .await;
    match unpacked {
        Ok(Ok(dir)) => (Some(dir), None, bytes),
        Ok(Err(e)) => (
            None,
            Some(format!("unpacking the workspace failed: {e}")),
            bytes,
        ),
        Err(e) => (
            None,
            Some(format!("unpacking the workspace failed: {e}")),
            bytes,
        ),
    }
}

/// The files of `tree/workspace` matching `globs` (never below `.git`),
/// stored; links and other non-files are refused by name, never followed.
async fn declared(
    ws: &Workspaces,
    request_id: &str,
    tree: &Path,
    globs: &[String],
) -> (Vec<ArtifactRecord>, Vec<Refused>) {
    let root = tree.join("workspace");
    let matcher = crate::model::workspace::matcher(globs);
    let mut found = Vec::new();
    walk(&root, &root, &mut found);
    found.sort();
    let (mut kept, mut refused) = (Vec::new(), Vec::new());
    let mut refused_more = 0usize;
    let mut total = 0u64;
    for (rel, kind) in found {
        if rel == ".git" || rel.starts_with(".git/") || !matcher.is_match(&rel) {
            continue;
        }
        let reason = match kind {
            Kind::Link => Some("symlink: links are not followed".to_string()),
            Kind::Other => Some("not a regular file".to_string()),
            Kind::File(size) if size > ws.bounds.artifact => Some(format!(
                "too_large: {size} bytes, artifact_max_bytes is {}",
                ws.bounds.artifact
            )),
            Kind::File(size) if total + size > ws.bounds.artifacts_total => Some(format!(
                "too_large: the request's artifacts would pass artifacts_max_total_bytes ({})",
                ws.bounds.artifacts_total
            )),
            Kind::File(_) if rel == TRANSCRIPT || rel == PATCH => {
                Some(format!("reserved: {rel} is the daemon's own artifact"))
            }
            Kind::File(_) => None,
        };
        if reason.is_some() && refused.len() >= MAX_REFUSED {
            refused_more += 1;
            continue;
        }
        if let Some(reason) = reason {
            refused.push(Refused { name: rel, reason });
            continue;
        }
        let Ok(bytes) = read_plain(&root.join(&rel)) else {
            refused.push(Refused {
                name: rel,
                reason: "unreadable".into(),
            });
            continue;
        };
        total += bytes.len() as u64;
        match ws.artifacts.put(request_id, &rel, bytes).await {
            Ok(r) => kept.push(r),
            Err(e) => refused.push(Refused {
                name: rel,
                reason: format!("store: {e}"),
            }),
        }
    }
    if refused_more > 0 {
        refused.push(Refused {
            name: "...".into(),
            reason: format!("{refused_more} more files refused"),
        });
    }
    (kept, refused)
}

/// A regular file's bytes, refusing to follow a link at the last step.
fn read_plain(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_o_nofollow())
        .open(path)?;
    let mut out = Vec::new();
    f.read_to_end(&mut out)?;
    Ok(out)
}

fn libc_o_nofollow() -> i32 {
    // O_NOFOLLOW on Linux (all architectures the daemon builds for).
    0o400000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    File(u64),
    Link,
    Other,
}

/// Every entry below `dir` as (path relative to `root`, kind); links are
/// listed, never entered.
fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Kind)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let rel = path
            .strip_prefix(root)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        if meta.file_type().is_symlink() {
            out.push((rel, Kind::Link));
        } else if meta.is_dir() {
            walk(root, &path, out);
        } else if meta.is_file() {
            out.push((rel, Kind::File(meta.len())));
        } else {
            out.push((rel, Kind::Other));
        }
    }
}

/// A tar of the tree at `root` under `prefix/` (or at the top when
/// `prefix` is empty), every entry owned by the worker user (1000:1000):
/// folders, files (modes kept) and links (as links).
pub fn tree_tar(root: &Path, prefix: &str) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    let mut stack: Vec<PathBuf> = vec![root.to_path_buf()];
    if !prefix.is_empty() {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_uid(1000);
        h.set_gid(1000);
        h.set_size(0);
        b.append_data(&mut h, format!("{prefix}/"), std::io::empty())?;
    }
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)?.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let name = Path::new(prefix).join(rel);
            let meta = std::fs::symlink_metadata(&path)?;
            let mut h = tar::Header::new_gnu();
            h.set_uid(1000);
            h.set_gid(1000);
            h.set_mtime(
                meta.modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            );
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o7777;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path)?;
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, &name, &target)?;
            } else if meta.is_dir() {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(mode | 0o700);
                h.set_size(0);
                let mut dname = name.into_os_string();
                dname.push("/");
                b.append_data(&mut h, PathBuf::from(dname), std::io::empty())?;
                stack.push(path);
            } else if meta.is_file() {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(mode | 0o600);
                h.set_size(meta.len());
                let f = std::fs::File::open(&path)?;
                b.append_data(&mut h, &name, f)?;
            }
        }
    }
    b.into_inner()
}

/// Builds the handles from the settings.
pub fn from_settings(s: &crate::settings::Settings) -> Result<Arc<Workspaces>, String> {
    let artifacts = if s.artifacts_url.is_empty() {
        let base = if !s.artifacts_base_url.is_empty() {
            s.artifacts_base_url.clone()
        } else if s.api_addr.is_empty() {
            // No API to serve them: the URIs name the files themselves.
            format!("file://{}", s.artifacts_dir.display())
        } else {
            format!("http://{}", s.api_addr)
        };
        Artifacts::local(&s.artifacts_dir, &base)
    } else {
        Artifacts::s3(&s.artifacts_url)
    }
    .map_err(|e| e.to_string())?;
    Ok(Arc::new(Workspaces {
        git: Git::new(s.repo_cache_dir.clone(), s.repo_timeout),
        artifacts,
        bounds: Bounds {
            artifact: s.artifact_max_bytes,
            artifacts_total: s.artifacts_max_total_bytes,
            transcript: s.transcript_max_bytes,
            workspace: s.workspace_max_bytes,
            collect: s.repo_timeout * 2,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_tar_keeps_modes_and_links_and_belongs_to_the_worker() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("a/b")).unwrap();
        std::fs::write(t.path().join("a/b/run.sh"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            t.path().join("a/b/run.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::write(t.path().join("bin.dat"), [0u8, 159, 146, 150]).unwrap();
        std::os::unix::fs::symlink("a/b/run.sh", t.path().join("link")).unwrap();
        let tar = tree_tar(t.path(), "workspace").unwrap();
        let mut a = tar::Archive::new(&tar[..]);
        let mut seen = Vec::new();
        for e in a.entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (1000, 1000));
            seen.push((
                e.path().unwrap().to_string_lossy().into_owned(),
                h.entry_type(),
                h.mode().unwrap(),
            ));
        }
        assert!(seen.contains(&(
            "workspace/a/b/run.sh".into(),
            tar::EntryType::Regular,
            0o755
        )));
        assert!(seen
            .iter()
            .any(|(p, k, _)| p == "workspace/link" && *k == tar::EntryType::Symlink));
        assert!(seen.iter().any(|(p, _, _)| p == "workspace/bin.dat"));
    }

    #[test]
    fn a_transcript_is_redacted_and_says_where_it_was_cut() {
        let mut r = Redactor::default();
        r.add("sekrit-value");
        let t = transcript_text(b"one sekrit-value two\n", 1000, &r);
        assert!(!t.contains("sekrit-value") && t.contains("one"), "{t}");
        let t = transcript_text(&[b'x'; 50], 10, &r);
        assert!(t.starts_with("xxxxxxxxxx\n[workers-spawner"), "{t}");
    }

    #[test]
    fn a_walk_lists_links_without_entering_them() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("reports")).unwrap();
        std::fs::write(t.path().join("reports/a.txt"), "a").unwrap();
        std::os::unix::fs::symlink("/etc", t.path().join("reports/etc")).unwrap();
        let mut out = Vec::new();
        walk(t.path(), t.path(), &mut out);
        out.sort();
        assert_eq!(
            out,
            vec![
                ("reports/a.txt".to_string(), Kind::File(1)),
                ("reports/etc".to_string(), Kind::Link)
            ]
        );
        assert!(read_plain(&t.path().join("reports/etc")).is_err());
    }
}

//! A worker's workspace as data: the repository it starts from (a preset's
//! `workspace` with a request's `task.repo` over it), the rules a URL, a
//! ref, a branch and an artifact glob must follow, the plan the daemon
//! carries out for one request (recorded in a label, so a restarted daemon
//! collects the change of a container it did not start), and what the
//! result reports of the change and the artifacts.
//!
//! This module does no I/O; `adapters::git` and `adapters::artifacts` act
//! on what it decides.

use serde::{Deserialize, Serialize};

/// `workspace` of a worker config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceConfig {
    /// The repository a worker starts from (a request's `task.repo` goes
    /// over it field by field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<RepoSpec>,
    /// Credentials the daemon (never the worker) uses for the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Credentials>,
    /// Commit what the agent left uncommitted and push the branch.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub push: bool,
    /// Author of the daemon's own commit of leftover changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<Author>,
}

/// A repository and where to start in it (`task.repo`, `workspace.repo`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct RepoSpec {
    /// `https://`, `http://`, `git://` or `file://` (below the daemon's
    /// `policy.repo_local_roots`); never with credentials in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Branch, tag or commit to check out (default: the remote's HEAD).
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// The branch the agent works on (default `ws/<request_id>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
}

/// `workspace.credentials`: an HTTP basic-auth secret from the daemon's
/// environment, sent only to `origin`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// The daemon's variable holding the token or password.
    pub from_env: String,
    /// Basic-auth user name (default `x-access-token`, which GitHub,
    /// Gitea and GitLab accept with a token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// `scheme://host[:port]` the credentials are for (default: the
    /// origin of the preset's `workspace.repo.url`); any other URL is
    /// fetched without them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// `workspace.author`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Author {
    /// Name.
    pub name: String,
    /// E-mail.
    pub email: String,
}

/// The default user name of `workspace.credentials`.
pub const DEFAULT_USERNAME: &str = "x-access-token";

/// The author of the daemon's commit when the preset names none.
pub fn default_author() -> Author {
    Author {
        name: "workers-spawner".into(),
        email: "workers-spawner@localhost".into(),
    }
}

/// What the daemon does with one request's workspace; no secret in it
/// (the credentials are a variable's name), so it travels in a label.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct WorkspacePlan {
    /// The repository, if the worker starts from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<RepoPlan>,
    /// Globs under `/workspace` kept as artifacts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<String>,
    /// The daemon's own files in `/workspace` (the instructions), by path
    /// below it, with their SHA-256: not part of the agent's change unless
    /// the agent changed them.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub rendered: std::collections::BTreeMap<String, String>,
}

impl WorkspacePlan {
    /// Records `files` (absolute paths) that land below `/workspace`.
    pub fn note_rendered<'a>(&mut self, files: impl IntoIterator<Item = (&'a str, &'a [u8])>) {
        use sha2::Digest;
        for (path, content) in files {
            if let Some(rel) = path.strip_prefix("/workspace/") {
                self.rendered
                    .insert(rel.to_string(), hex::encode(sha2::Sha256::digest(content)));
            }
        }
    }
}

/// The repository part of a [`WorkspacePlan`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RepoPlan {
    /// The URL, checked.
    pub url: String,
    /// What to check out; `None`: the remote's HEAD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// The branch created for the agent.
    pub branch: String,
    /// Whether to commit leftovers and push `branch`.
    #[serde(default)]
    pub push: bool,
    /// Author of the daemon's commit.
    pub author: Author,
    /// Credentials for this URL (only when its origin is theirs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialRef>,
    /// The commit checked out, once it is (`None` in a plan not carried
    /// out yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
}

/// Where the daemon finds a repository's secret: never the secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CredentialRef {
    /// The daemon's variable.
    pub from_env: String,
    /// Basic-auth user name.
    pub username: String,
    /// The origin they are sent to.
    pub origin: String,
}

/// The field path of a refusal and why.
pub type Problem = (String, String);

/// Schemes a repository URL may use; `file` also needs a local root.
pub const SCHEMES: [&str; 4] = ["https", "http", "git", "file"];

/// A repository URL checked: its scheme, origin (`scheme://host[:port]`,
/// empty for `file`) and, for `file`, its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoUrl {
    /// `https`, `http`, `git` or `file`.
    pub scheme: String,
    /// `scheme://host[:port]`, lower-cased host; empty for `file`.
    pub origin: String,
    /// The local path of a `file://` URL.
    pub path: Option<String>,
}

/// Checks a repository URL: one of [`SCHEMES`], no credentials, no
/// transport helpers (`ext::`, `fd::`), no option-like or control
/// characters; a `file://` path lies below one of `local_roots`, with no
/// `..`.
pub fn check_url(url: &str, local_roots: &[String]) -> Result<RepoUrl, String> {
    if url.is_empty() || url.len() > 2048 {
        return Err("must be a URL of 1-2048 characters".into());
    }
    let helper = !url.contains("://") && url.contains("::");
    if !helper && (url.starts_with('-') || url.chars().any(|c| c.is_control() || c.is_whitespace()))
    {
        return Err("must not start with '-' or contain spaces or control characters".into());
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        if helper {
            return Err(format!(
                "{url:?} names a git transport helper, which is refused; use one of {}",
                SCHEMES.map(|s| format!("{s}://")).join(", ")
            ));
        }
        return Err(format!(
            "{url:?} is not a URL: use one of {} (local paths and scp-like addresses are refused)",
            SCHEMES.map(|s| format!("{s}://")).join(", ")
        ));
    };
    let scheme = scheme.to_ascii_lowercase();
    if !SCHEMES.contains(&scheme.as_str()) {
        return Err(format!(
            "scheme {scheme:?} is not allowed: use one of {}",
            SCHEMES.join(", ")
        ));
    }
    if scheme == "file" {
        let path = rest;
        if !path.starts_with('/') {
            return Err("a file:// URL needs an absolute path (file:///srv/repo.git)".into());
        }
        if path
            .split('/')
            .any(|c| c == ".." || c == "." || c.contains('%'))
        {
            return Err("a file:// path may not contain '.', '..' or %-escapes".into());
        }
        let inside = local_roots.iter().any(|root| {
            let root = root.trim_end_matches('/');
            !root.is_empty() && (path == root || path.starts_with(&format!("{root}/")))
        });
        if !inside {
            return Err(if local_roots.is_empty() {
                "file:// repositories are off on this daemon (policy.repo_local_roots is empty)"
                    .into()
            } else {
                format!(
                    "{path} is outside the daemon's policy.repo_local_roots ({})",
                    local_roots.join(", ")
                )
            });
        }
        return Ok(RepoUrl {
            scheme,
            origin: String::new(),
            path: Some(path.to_string()),
        });
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(
            "credentials in the URL are refused (they would reach the worker's .git/config): \
             give the preset workspace.credentials"
                .into(),
        );
    }
    if authority.is_empty()
        || !authority
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
    {
        return Err(format!("{authority:?} is not a host name"));
    }
    Ok(RepoUrl {
        origin: format!("{scheme}://{}", authority.to_ascii_lowercase()),
        scheme,
        path: None,
    })
}

/// Checks a ref or branch name by git's rules (`git check-ref-format`):
/// no `..`, `@{`, `//`, control characters, space, `~^:?*[\`, no leading
/// `-` or `/`, no trailing `/`, `.` or `.lock`, no component starting
/// with `.`.
pub fn check_ref_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 {
        return Err("must be 1-255 characters".into());
    }
    let bad = |why: &str| Err(format!("{name:?} is not a valid git ref name: {why}"));
    if name.contains("..") {
        return bad("it contains '..'");
    }
    if name.contains("@{") || name == "@" {
        return bad("it contains '@{'");
    }
    if name.contains("//") {
        return bad("it contains '//'");
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\'))
    {
        return bad(&format!("it contains {c:?}"));
    }
    if name.starts_with('-') || name.starts_with('/') {
        return bad("it starts with '-' or '/'");
    }
    if name.ends_with('/') || name.ends_with('.') || name.ends_with(".lock") {
        return bad("it ends with '/', '.' or '.lock'");
    }
    if name.split('/').any(|c| c.starts_with('.')) {
        return bad("a component starts with '.'");
    }
    if name.split('/').any(|c| c.ends_with(".lock")) {
        return bad("a component ends with '.lock'");
    }
    Ok(())
}

/// The default branch of request `request_id`: `ws/<id>`, with the
/// characters git refuses (`:`) and `..` made safe.
pub fn default_branch(request_id: &str) -> String {
    let mut id: String = request_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    while id.contains("..") {
        id = id.replace("..", ".-");
    }
    let mut id = id.trim_start_matches('.').to_string();
    while id.ends_with('.') || id.ends_with(".lock") {
        id.push('-');
    }
    if id.is_empty() {
        id.push('-');
    }
    // Ids made alike by the above (`a:b`, `a-b`) keep branches of their own.
    if id != request_id {
        use sha2::Digest;
        let h = hex::encode(sha2::Sha256::digest(request_id.as_bytes()));
        id.push('-');
        id.push_str(&h[..8]);
    }
    format!("ws/{id}")
}

/// Most globs a config may declare under `artifacts`.
pub const MAX_ARTIFACT_GLOBS: usize = 32;

/// Checks an `artifacts` glob: relative to `/workspace`, no `..`, no
/// absolute path, no backslash, a pattern globset can compile.
pub fn check_glob(glob: &str) -> Result<(), String> {
    if glob.is_empty() || glob.len() > 256 {
        return Err("must be 1-256 characters".into());
    }
    if glob.starts_with('/') {
        return Err(format!(
            "{glob:?} is absolute: write it relative to /workspace"
        ));
    }
    if glob.contains('\\') || glob.chars().any(char::is_control) {
        return Err(format!(
            "{glob:?} contains a backslash or control character"
        ));
    }
    if glob.split('/').any(|c| c == ".." || c == ".") {
        return Err(format!(
            "{glob:?} has a '..' or '.' component: artifacts come from below /workspace only"
        ));
    }
    globset::GlobBuilder::new(glob)
        .literal_separator(true)
        .build()
        .map(|_| ())
        .map_err(|e| format!("{glob:?} is not a glob: {}", e.kind()))
}

/// A matcher of `globs` (each checked with [`check_glob`]); `*` stays
/// within a folder, `**` crosses folders.
pub fn matcher(globs: &[String]) -> globset::GlobSet {
    let mut b = globset::GlobSetBuilder::new();
    for g in globs {
        if let Ok(glob) = globset::GlobBuilder::new(g).literal_separator(true).build() {
            b.add(glob);
        }
    }
    b.build().unwrap_or_else(|_| globset::GlobSet::empty())
}

/// The static checks of a config's `workspace` and `artifacts` (what needs
/// no daemon setting): URL form, ref and branch names, globs.
pub fn check_config(
    workspace: Option<&WorkspaceConfig>,
    artifacts: &[String],
) -> Result<(), Problem> {
    if artifacts.len() > MAX_ARTIFACT_GLOBS {
        return Err((
            "artifacts".into(),
            format!("at most {MAX_ARTIFACT_GLOBS} globs"),
        ));
    }
    for (i, g) in artifacts.iter().enumerate() {
        check_glob(g).map_err(|m| (format!("artifacts.{i}"), m))?;
    }
    let Some(ws) = workspace else { return Ok(()) };
    if let Some(repo) = &ws.repo {
        check_repo_names(repo, "workspace.repo")?;
        if let Some(url) = &repo.url {
            // A preset may name a file:// URL the daemon allows; its root is
            // checked with the daemon's policy when a request uses it.
            if !url.starts_with("file://") {
                check_url(url, &[]).map_err(|m| ("workspace.repo.url".into(), m))?;
            }
        }
    }
    if let Some(c) = &ws.credentials {
        let origin = match (&c.origin, ws.repo.as_ref().and_then(|r| r.url.as_ref())) {
            (Some(o), _) => Some(o.clone()),
            (None, Some(url)) => check_url(url, &[]).ok().map(|u| u.origin),
            (None, None) => None,
        };
        match origin {
            None => {
                return Err((
                    "workspace.credentials.origin".into(),
                    "credentials need an origin (scheme://host) or an http(s) workspace.repo.url to be sent to".into(),
                ))
            }
            Some(o) => {
                let u = check_url(&o, &[])
                    .map_err(|m| ("workspace.credentials.origin".to_string(), m))?;
                if u.origin != o.trim_end_matches('/').to_ascii_lowercase()
                    || !matches!(u.scheme.as_str(), "https" | "http")
                {
                    return Err((
                        "workspace.credentials.origin".into(),
                        format!("{o:?} must be an http(s) origin, scheme://host[:port], no path"),
                    ));
                }
            }
        }
    }
    Ok(())
}

fn check_repo_names(repo: &RepoSpec, at: &str) -> Result<(), Problem> {
    if let Some(r) = &repo.reference {
        check_ref_name(r).map_err(|m| (format!("{at}.ref"), m))?;
    }
    if let Some(b) = &repo.branch {
        check_ref_name(b).map_err(|m| (format!("{at}.branch"), m))?;
        if b == "HEAD" {
            return Err((format!("{at}.branch"), "HEAD is not a branch name".into()));
        }
    }
    Ok(())
}

/// The plan of a request: the config's `workspace` with the request's
/// `task.repo` over it, checked against the daemon's `local_roots`;
/// `None` when there is nothing to do (no repository, no artifacts).
pub fn plan(
    request_id: &str,
    workspace: Option<&WorkspaceConfig>,
    artifacts: &[String],
    task_repo: Option<&RepoSpec>,
    local_roots: &[String],
) -> Result<Option<WorkspacePlan>, Problem> {
    if let Some(t) = task_repo {
        check_repo_names(t, "task.repo")?;
    }
    let preset_repo = workspace.and_then(|w| w.repo.as_ref());
    let from_task = task_repo.and_then(|t| t.url.as_ref()).is_some();
    let url = task_repo
        .and_then(|t| t.url.clone())
        .or_else(|| preset_repo.and_then(|r| r.url.clone()));
    let field = if from_task {
        "task.repo.url"
    } else {
        "workspace.repo.url"
    };
    let repo = match url {
        None if task_repo.is_some() => {
            return Err((
                "task.repo.url".into(),
                "task.repo needs a url (the preset names no repository)".into(),
            ))
        }
        None => None,
        Some(url) => {
            let checked = check_url(&url, local_roots).map_err(|m| (field.to_string(), m))?;
            let pick = |f: fn(&RepoSpec) -> Option<&String>| {
                task_repo
                    .and_then(f)
                    .or_else(|| preset_repo.and_then(f))
                    .cloned()
            };
            // A request naming another repository does not inherit the
            // preset's ref or branch for it.
            let same_repo =
                !from_task || preset_repo.and_then(|r| r.url.as_deref()) == Some(url.as_str());
            let reference = if same_repo {
                pick(|r| r.reference.as_ref())
            } else {
                task_repo.and_then(|t| t.reference.clone())
            };
            let branch = if same_repo {
                pick(|r| r.branch.as_ref())
            } else {
                task_repo.and_then(|t| t.branch.clone())
            }
            .unwrap_or_else(|| default_branch(request_id));
            let credentials = workspace
                .and_then(|w| w.credentials.as_ref())
                .and_then(|c| {
                    let origin = c.origin.clone().or_else(|| {
                        preset_repo
                            .and_then(|r| r.url.as_deref())
                            .and_then(|u| check_url(u, &[]).ok())
                            .map(|u| u.origin)
                    })?;
                    let origin = origin.trim_end_matches('/').to_ascii_lowercase();
                    (origin == checked.origin).then(|| CredentialRef {
                        from_env: c.from_env.clone(),
                        username: c
                            .username
                            .clone()
                            .unwrap_or_else(|| DEFAULT_USERNAME.to_string()),
                        origin,
                    })
                });
            Some(RepoPlan {
                url,
                reference,
                branch,
                push: workspace.is_some_and(|w| w.push),
                author: workspace
                    .and_then(|w| w.author.clone())
                    .unwrap_or_else(default_author),
                credentials,
                base: None,
            })
        }
    };
    if repo.is_none() && artifacts.is_empty() {
        return Ok(None);
    }
    Ok(Some(WorkspacePlan {
        repo,
        artifacts: artifacts.to_vec(),
        rendered: Default::default(),
    }))
}

/// One commit the agent made.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Commit {
    /// Its sha.
    pub sha: String,
    /// First line of its message.
    pub subject: String,
    /// `Name <email>`.
    pub author: String,
}

/// An artifact kept for a request: the result lists each.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ArtifactRecord {
    /// Its name (a path below `/workspace`, or `transcript.log`, `patch.diff`).
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// Hex SHA-256 of its content.
    pub sha256: String,
    /// Where to fetch it (`http://.../v1/artifacts/<request_id>/<name>` or
    /// `s3://bucket/key`).
    pub uri: String,
}

/// Something the collection refused to keep, and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Refused {
    /// The path below `/workspace`.
    pub name: String,
    /// Why (`symlink`, `too_large`, `not_a_file`, ...).
    pub reason: String,
}

/// `workspace` of a result: the change the agent made.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct WorkspaceReport {
    /// The commit the worker started from.
    pub base: String,
    /// The branch's last commit (the daemon's own commit of leftovers
    /// when it pushed; else the agent's last).
    pub head: String,
    /// The agent's branch.
    pub branch: String,
    /// Commits between `base` and `head`, oldest first (at most 1000, the
    /// newest).
    pub commits: Vec<Commit>,
    /// How many commits there are between `base` and `head`.
    #[serde(default)]
    pub commits_total: u64,
    /// Whether the agent left changes it did not commit (in `patch`).
    pub uncommitted: bool,
    /// Files the combined change touches.
    pub files_changed: u64,
    /// Lines added.
    pub insertions: u64,
    /// Lines removed.
    pub deletions: u64,
    /// The combined patch against `base` (commits and leftovers), as an
    /// artifact; `git apply` takes it on `base`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<ArtifactRecord>,
    /// Whether `branch` was pushed.
    pub pushed: bool,
    /// Why it was not, when a push was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_error: Option<String>,
    /// Why the change could not be read, when it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The store key of a request's folder: the id when it is a plain file
/// name of `[A-Za-z0-9._-]`, else its hash (a `:` is not portable across
/// object stores).
pub fn artifact_folder(request_id: &str) -> String {
    let plain = !request_id.is_empty()
        && request_id != "."
        && request_id != ".."
        && request_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if plain {
        request_id.to_string()
    } else {
        // `~` is in no request id: a hashed folder is never a plain one.
        use sha2::Digest;
        format!(
            "~{}",
            hex::encode(sha2::Sha256::digest(request_id.as_bytes()))
        )
    }
}

/// Whether `name` is an artifact name a reader may ask for: relative,
/// clean components, no `..`.
pub fn is_artifact_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 1024
        && !name.starts_with('/')
        && !name.contains('\\')
        && !name.chars().any(char::is_control)
        && name
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots() -> Vec<String> {
        vec!["/srv/git".to_string()]
    }

    #[test]
    fn urls_of_the_allowed_schemes_pass_and_the_rest_are_named() {
        let u = check_url("https://Git.Example.com:8443/org/repo.git", &[]).unwrap();
        assert_eq!(u.origin, "https://git.example.com:8443");
        assert!(check_url("git://127.0.0.1:9418/r.git", &[]).is_ok());
        assert!(check_url("http://127.0.0.1/r.git", &[]).is_ok());
        assert_eq!(
            check_url("file:///srv/git/a.git", &roots())
                .unwrap()
                .path
                .as_deref(),
            Some("/srv/git/a.git")
        );
        for (bad, word) in [
            ("ext::sh -c touch% /tmp/pwned", "helper"),
            ("ext::ssh", "helper"),
            ("fd::3", "helper"),
            ("/srv/git/a.git", "not a URL"),
            ("git@github.com:org/repo.git", "not a URL"),
            ("ssh://host/repo", "not allowed"),
            ("file:///etc/passwd", "outside"),
            ("file:///srv/git/../../etc", "'..'"),
            ("file:///srv/gitx/a.git", "outside"),
            ("https://user:tok@host/r.git", "credentials"),
            ("-uhttps://x", "'-'"),
            ("https://host/r.git --upload-pack=x", "spaces"),
            ("https:///r.git", "host"),
        ] {
            let e = check_url(bad, &roots()).unwrap_err();
            assert!(e.contains(word), "{bad}: {e}");
        }
        assert!(check_url("file:///srv/git/a.git", &[])
            .unwrap_err()
            .contains("off"));
    }

    #[test]
    fn ref_names_follow_gits_rules() {
        for ok in ["main", "ws/req-1", "release/1.2", "v1.0", "a_b"] {
            assert!(check_ref_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "a..b", "../x", "-x", "a b", "x.lock", "x/", "x.", "a//b", "a@{1}", "a:b", "a~1", "a^",
            "a*", "a?", "a[", "a\\b", ".hidden", "a/.b", "",
        ] {
            assert!(check_ref_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_default_branch_is_a_valid_ref_for_every_request_id() {
        for id in [
            "req-1", "a:b", "x..y", "..", "a.lock", ".x", "a.", "A.B_c-9",
        ] {
            let b = default_branch(id);
            assert!(b.starts_with("ws/"), "{b}");
            assert!(check_ref_name(&b).is_ok(), "{id} -> {b}");
        }
        assert_eq!(default_branch("req-1"), "ws/req-1");
        assert_ne!(default_branch("a:b"), default_branch("a-b"));
        assert!(check_ref_name("a.lock/b").is_err());
    }

    #[test]
    fn globs_stay_below_the_workspace() {
        for ok in ["reports/**", "coverage.xml", "*.log", "out/**/*.json"] {
            assert!(check_glob(ok).is_ok(), "{ok}");
        }
        for bad in [
            "../x",
            "a/../../etc/*",
            "/etc/passwd",
            "./x",
            "a\\b",
            "",
            "a[",
            "**/..",
        ] {
            assert!(check_glob(bad).is_err(), "{bad}");
        }
        let m = matcher(&["reports/**".into(), "*.xml".into()]);
        assert!(m.is_match("reports/a/b.txt"));
        assert!(m.is_match("coverage.xml"));
        assert!(!m.is_match("sub/coverage.xml"), "* stays within a folder");
        assert!(!m.is_match("src/main.rs"));
    }

    fn ws(url: &str) -> WorkspaceConfig {
        WorkspaceConfig {
            repo: Some(RepoSpec {
                url: Some(url.into()),
                reference: Some("main".into()),
                branch: None,
            }),
            credentials: Some(Credentials {
                from_env: "GIT_TOKEN".into(),
                username: None,
                origin: None,
            }),
            push: true,
            author: None,
        }
    }

    #[test]
    fn a_plan_takes_the_task_over_the_preset_and_credentials_only_for_their_origin() {
        let w = ws("https://git.example.com/org/app.git");
        let p = plan("r1", Some(&w), &[], None, &[]).unwrap().unwrap();
        let repo = p.repo.unwrap();
        assert_eq!(repo.branch, "ws/r1");
        assert_eq!(repo.reference.as_deref(), Some("main"));
        let c = repo.credentials.unwrap();
        assert_eq!(
            (c.from_env.as_str(), c.username.as_str(), c.origin.as_str()),
            ("GIT_TOKEN", DEFAULT_USERNAME, "https://git.example.com")
        );
        // Same origin, other repository: the credentials go along, the
        // preset's ref does not.
        let t = RepoSpec {
            url: Some("https://git.example.com/org/other.git".into()),
            reference: None,
            branch: Some("feature/x".into()),
        };
        let repo = plan("r1", Some(&w), &[], Some(&t), &[])
            .unwrap()
            .unwrap()
            .repo
            .unwrap();
        assert!(repo.credentials.is_some());
        assert_eq!(repo.reference, None);
        assert_eq!(repo.branch, "feature/x");
        // Another host never sees the preset's credentials.
        let t = RepoSpec {
            url: Some("https://evil.example.net/x.git".into()),
            ..Default::default()
        };
        let repo = plan("r1", Some(&w), &[], Some(&t), &[])
            .unwrap()
            .unwrap()
            .repo
            .unwrap();
        assert_eq!(repo.credentials, None);
        // Only a ref for the preset's repository.
        let t = RepoSpec {
            reference: Some("v2".into()),
            ..Default::default()
        };
        let repo = plan("r1", Some(&w), &[], Some(&t), &[])
            .unwrap()
            .unwrap()
            .repo
            .unwrap();
        assert_eq!(repo.url, "https://git.example.com/org/app.git");
        assert_eq!(repo.reference.as_deref(), Some("v2"));
    }

    #[test]
    fn a_plan_names_the_field_at_fault() {
        let t = RepoSpec {
            url: Some("ext::sh -c x".into()),
            ..Default::default()
        };
        assert_eq!(
            plan("r", None, &[], Some(&t), &[]).unwrap_err().0,
            "task.repo.url"
        );
        let t = RepoSpec {
            url: Some("https://h/r.git".into()),
            branch: Some("a..b".into()),
            ..Default::default()
        };
        assert_eq!(
            plan("r", None, &[], Some(&t), &[]).unwrap_err().0,
            "task.repo.branch"
        );
        let t = RepoSpec {
            reference: Some("main".into()),
            ..Default::default()
        };
        assert_eq!(
            plan("r", None, &[], Some(&t), &[]).unwrap_err().0,
            "task.repo.url"
        );
        let w = ws("file:///srv/other/a.git");
        assert_eq!(
            plan("r", Some(&w), &[], None, &roots()).unwrap_err().0,
            "workspace.repo.url"
        );
        assert_eq!(plan("r", None, &[], None, &[]).unwrap(), None);
        let p = plan("r", None, &["out/*".into()], None, &[])
            .unwrap()
            .unwrap();
        assert_eq!((p.repo, p.artifacts.len()), (None, 1));
    }

    #[test]
    fn config_checks_refuse_escaping_globs_and_credentials_without_an_origin() {
        let e = check_config(None, &["ok/*".into(), "../secret".into()]).unwrap_err();
        assert_eq!(e.0, "artifacts.1");
        let mut w = ws("https://h/r.git");
        assert!(check_config(Some(&w), &[]).is_ok());
        w.repo = None;
        assert_eq!(
            check_config(Some(&w), &[]).unwrap_err().0,
            "workspace.credentials.origin"
        );
        w.credentials.as_mut().unwrap().origin = Some("https://h/path".into());
        assert_eq!(
            check_config(Some(&w), &[]).unwrap_err().0,
            "workspace.credentials.origin"
        );
        w.credentials.as_mut().unwrap().origin = Some("https://h".into());
        assert!(check_config(Some(&w), &[]).is_ok());
    }

    #[test]
    fn artifact_names_and_folders_are_safe_paths() {
        assert_eq!(artifact_folder("req-1.a"), "req-1.a");
        assert_eq!(artifact_folder("req:1").len(), 65);
        assert_eq!(artifact_folder("..").len(), 65);
        assert!(is_artifact_name("reports/a.txt"));
        for bad in ["", "/etc/passwd", "../x", "a/../b", "a//b", "./a"] {
            assert!(!is_artifact_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_plan_survives_its_label() {
        let w = ws("https://h/r.git");
        let mut p = plan("r", Some(&w), &["a/*".into()], None, &[])
            .unwrap()
            .unwrap();
        p.repo.as_mut().unwrap().base = Some("abc".into());
        let label = serde_json::to_string(&p).unwrap();
        // A variable's name, never a value: the plan has no field for one.
        assert!(label.contains(r#""from_env":"GIT_TOKEN""#), "{label}");
        assert_eq!(serde_json::from_str::<WorkspacePlan>(&label).unwrap(), p);
    }
}

//! Pure logic of the in-container `orchestrator` CLI (`src/main.rs`):
//! the `ORCHESTRATOR_ALLOWED_TOOLS` check, command-line parsing, the mapping of
//! a command to a gateway call (`POST /v1/tools/{group}/{action}`), the
//! classification of gateway responses into exit codes, and human-readable
//! formatting. Nothing here does I/O, so all of it is unit-tested.
//!
//! The command syntax and exit codes are the ones documented to the agent in
//! `skills/*.md`; keep the two in sync.

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Map, Value};

/// Environment variable holding the comma-separated list of allowed groups.
pub const ALLOWED_TOOLS_ENV: &str = "ORCHESTRATOR_ALLOWED_TOOLS";
/// Base URL of the daemon's tool gateway, e.g. `http://172.30.0.1:9091`.
pub const API_URL_ENV: &str = "ORCHESTRATOR_API_URL";
/// Bearer token for the gateway.
pub const API_KEY_ENV: &str = "ORCHESTRATOR_API_KEY";
/// Optional user id, sent as `X-Orchestrator-User`.
pub const USER_ID_ENV: &str = "ORCHESTRATOR_USER_ID";
/// Optional request id, sent as `X-Orchestrator-Request`.
pub const REQUEST_ID_ENV: &str = "ORCHESTRATOR_REQUEST_ID";

/// Every command group the CLI knows.
pub const GROUPS: &[&str] = &[
    "project",
    "deploy",
    "engineering",
    "infra",
    "respond",
    "admin",
];

/// Exit codes (sysexits-style, as documented in `skills/*.md`).
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// The backend refused or failed the call.
    pub const FAILED: i32 = 1;
    /// Usage error.
    pub const USAGE: i32 = 2;
    /// Backend unavailable or not configured (EX_UNAVAILABLE).
    pub const UNAVAILABLE: i32 = 69;
    /// Permission denied (EX_NOPERM).
    pub const PERMISSION: i32 = 77;
}

// ---------------------------------------------------------------------------
// Authorization
// ---------------------------------------------------------------------------

/// Parses the value of `ORCHESTRATOR_ALLOWED_TOOLS`: comma-separated,
/// whitespace-trimmed, empty items dropped. Missing means empty.
pub fn allowed_tools(raw: Option<&str>) -> Vec<&str> {
    raw.unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Whether `group` is allowed by the raw `ORCHESTRATOR_ALLOWED_TOOLS` value.
/// Names must match exactly (case-sensitive); an empty or missing list allows
/// nothing.
pub fn is_allowed(raw: Option<&str>, group: &str) -> bool {
    allowed_tools(raw).contains(&group)
}

/// The message printed (on stderr) when a group is not allowed.
pub fn permission_denied_message(group: &str) -> String {
    format!("Permission denied: {group} is not in {ALLOWED_TOOLS_ENV}")
}

/// What a cheap scan of the raw arguments (without `argv[0]`) finds before
/// full parsing: whether the global `--json` flag was given before the group,
/// and the group candidate (the first argument that is not a flag).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Prescan {
    /// `--json` appeared before the group.
    pub json: bool,
    /// First non-flag argument, if any.
    pub group: Option<String>,
}

/// Scans the arguments (without `argv[0]`) for the group candidate. Every
/// argument starting with `-` before the group is treated as a flag (the only
/// global flags, `--json`, `--help` and `--version`, take no value); `--`
/// ends the flags and makes the next argument the candidate.
pub fn prescan<S: AsRef<str>>(args: &[S]) -> Prescan {
    let mut out = Prescan::default();
    let mut iter = args.iter().map(AsRef::as_ref);
    while let Some(arg) = iter.next() {
        if arg == "--" {
            out.group = iter.next().map(str::to_owned);
            break;
        }
        if arg == "--json" {
            out.json = true;
            continue;
        }
        if arg.starts_with('-') && arg.len() > 1 {
            continue;
        }
        out.group = Some(arg.to_owned());
        break;
    }
    out
}

/// Whether `name` is one of the known groups.
pub fn is_known_group(name: &str) -> bool {
    GROUPS.contains(&name)
}

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------

/// `orchestrator`: acts on the orchestrator platform from inside a worker.
#[derive(Debug, Parser)]
#[command(
    name = "orchestrator",
    version,
    about = "Acts on the orchestrator platform from inside a worker container",
    long_about = None,
    disable_help_subcommand = true,
    subcommand_required = true,
    arg_required_else_help = true,
    after_help = "Exit codes: 0 success, 1 backend refused or failed the call, 2 usage error, \
                  69 backend unavailable, 77 permission denied (group not in ORCHESTRATOR_ALLOWED_TOOLS)."
)]
pub struct Cli {
    /// Machine-readable output: print the gateway's JSON object on one line.
    #[arg(long)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// Command groups.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Look up, list and create projects.
    #[command(subcommand)]
    Project(ProjectCmd),
    /// Start deploys and follow their status and logs.
    #[command(subcommand)]
    Deploy(DeployCmd),
    /// Submit engineering tasks and track them.
    #[command(subcommand)]
    Engineering(EngineeringCmd),
    /// Allocate and list infra resources.
    #[command(subcommand)]
    Infra(InfraCmd),
    /// Send a message to the user who asked for the current task.
    Respond(RespondArgs),
    /// Privileged worker administration.
    #[command(subcommand)]
    Admin(AdminCmd),
}

/// `orchestrator project ...`
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
#[command(arg_required_else_help = true)]
pub enum ProjectCmd {
    /// List every project visible to the current user.
    List,
    /// Show one project in full.
    Get {
        #[arg(value_name = "project_id")]
        project_id: String,
    },
    /// Create a new project.
    Create {
        #[arg(long, value_name = "name", allow_hyphen_values = true)]
        name: String,
        #[arg(long, value_name = "text", allow_hyphen_values = true)]
        description: Option<String>,
    },
}

/// `orchestrator deploy ...`
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
#[command(arg_required_else_help = true)]
pub enum DeployCmd {
    /// Start a deploy of a project (to staging unless --env is given).
    Trigger {
        #[arg(value_name = "project_id")]
        project_id: String,
        #[arg(long, value_name = "environment", default_value = "staging")]
        env: String,
    },
    /// Show the current state of a deploy.
    Status {
        #[arg(value_name = "deploy_id")]
        deploy_id: String,
    },
    /// Print a deploy's log.
    Logs {
        #[arg(value_name = "deploy_id")]
        deploy_id: String,
        /// Only the last <n> lines.
        #[arg(long, value_name = "n")]
        tail: Option<u64>,
    },
}

/// `orchestrator engineering ...`
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
#[command(arg_required_else_help = true)]
pub enum EngineeringCmd {
    /// Submit a task for a project.
    Trigger {
        #[arg(value_name = "project_id")]
        project_id: String,
        #[arg(long, value_name = "text", allow_hyphen_values = true)]
        task: String,
    },
    /// Show the state of a task.
    Status {
        #[arg(value_name = "task_id")]
        task_id: String,
    },
}

/// Resource kinds for `infra allocate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    Vm,
    Db,
    Bucket,
}

impl Kind {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Vm => "vm",
            Kind::Db => "db",
            Kind::Bucket => "bucket",
        }
    }
}

/// Resource sizes for `infra allocate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Size {
    Small,
    Medium,
    Large,
}

impl Size {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Medium => "medium",
            Size::Large => "large",
        }
    }
}

/// `orchestrator infra ...`
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
#[command(arg_required_else_help = true)]
pub enum InfraCmd {
    /// Allocate one resource for a project.
    Allocate {
        #[arg(long = "project", value_name = "project_id")]
        project_id: String,
        #[arg(long, value_name = "kind")]
        kind: Kind,
        #[arg(long, value_name = "size")]
        size: Option<Size>,
    },
    /// List allocated resources.
    List {
        #[arg(long = "project", value_name = "project_id")]
        project_id: Option<String>,
    },
}

/// `orchestrator respond <message>`
#[derive(Debug, Clone, PartialEq, Eq, Args)]
#[command(arg_required_else_help = true)]
pub struct RespondArgs {
    /// The whole message, quoted as one argument.
    #[arg(value_name = "message", allow_hyphen_values = true)]
    pub message: String,
}

/// `orchestrator admin ...`
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
#[command(arg_required_else_help = true)]
pub enum AdminCmd {
    /// List all running workers.
    Workers,
    /// Cancel a request and stop its worker.
    Cancel {
        #[arg(value_name = "request_id")]
        request_id: String,
    },
}

/// Parses the command line (`args` includes `argv[0]`). Groups that
/// `allowed_raw` (the raw `ORCHESTRATOR_ALLOWED_TOOLS`) does not allow are
/// hidden from the help text, so usage output does not advertise them.
pub fn parse_args<I, T>(args: I, allowed_raw: Option<&str>) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::{CommandFactory, FromArgMatches};
    let mut cmd = Cli::command();
    for group in GROUPS {
        if !is_allowed(allowed_raw, group) {
            cmd = cmd.mut_subcommand(*group, |sc| sc.hide(true));
        }
    }
    let matches = cmd.try_get_matches_from(args)?;
    Cli::from_arg_matches(&matches)
}

/// One gateway call: `POST /v1/tools/{group}/{action}` with `{"args": args}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub group: &'static str,
    pub action: &'static str,
    pub args: Value,
}

impl Call {
    /// Path of the call, relative to the gateway base URL.
    pub fn path(&self) -> String {
        format!("/v1/tools/{}/{}", self.group, self.action)
    }

    /// Request body.
    pub fn body(&self) -> Value {
        json!({ "args": self.args })
    }
}

/// Joins the base URL (trailing slashes ignored) and the call path.
pub fn call_url(base: &str, call: &Call) -> String {
    format!("{}{}", base.trim_end_matches('/'), call.path())
}

fn obj(pairs: Vec<(&str, Option<Value>)>) -> Value {
    let mut m = Map::new();
    for (k, v) in pairs {
        if let Some(v) = v {
            m.insert(k.to_owned(), v);
        }
    }
    Value::Object(m)
}

impl Command {
    /// The group name of the command.
    pub fn group(&self) -> &'static str {
        match self {
            Command::Project(_) => "project",
            Command::Deploy(_) => "deploy",
            Command::Engineering(_) => "engineering",
            Command::Infra(_) => "infra",
            Command::Respond(_) => "respond",
            Command::Admin(_) => "admin",
        }
    }

    /// Maps the command to its gateway call.
    pub fn to_call(&self) -> Call {
        let s = |v: &str| Some(Value::String(v.to_owned()));
        let (action, args) = match self {
            Command::Project(ProjectCmd::List) => ("list", json!({})),
            Command::Project(ProjectCmd::Get { project_id }) => {
                ("get", obj(vec![("project_id", s(project_id))]))
            }
            Command::Project(ProjectCmd::Create { name, description }) => (
                "create",
                obj(vec![
                    ("name", s(name)),
                    ("description", description.as_deref().and_then(s)),
                ]),
            ),
            Command::Deploy(DeployCmd::Trigger { project_id, env }) => (
                "trigger",
                obj(vec![("project_id", s(project_id)), ("env", s(env))]),
            ),
            Command::Deploy(DeployCmd::Status { deploy_id }) => {
                ("status", obj(vec![("deploy_id", s(deploy_id))]))
            }
            Command::Deploy(DeployCmd::Logs { deploy_id, tail }) => (
                "logs",
                obj(vec![
                    ("deploy_id", s(deploy_id)),
                    ("tail", tail.map(Value::from)),
                ]),
            ),
            Command::Engineering(EngineeringCmd::Trigger { project_id, task }) => (
                "trigger",
                obj(vec![("project_id", s(project_id)), ("task", s(task))]),
            ),
            Command::Engineering(EngineeringCmd::Status { task_id }) => {
                ("status", obj(vec![("task_id", s(task_id))]))
            }
            Command::Infra(InfraCmd::Allocate {
                project_id,
                kind,
                size,
            }) => (
                "allocate",
                obj(vec![
                    ("project_id", s(project_id)),
                    ("kind", s(kind.as_str())),
                    ("size", size.and_then(|z| s(z.as_str()))),
                ]),
            ),
            Command::Infra(InfraCmd::List { project_id }) => (
                "list",
                obj(vec![("project_id", project_id.as_deref().and_then(s))]),
            ),
            Command::Respond(RespondArgs { message }) => {
                ("send", obj(vec![("message", s(message))]))
            }
            Command::Admin(AdminCmd::Workers) => ("workers", json!({})),
            Command::Admin(AdminCmd::Cancel { request_id }) => {
                ("cancel", obj(vec![("request_id", s(request_id))]))
            }
        };
        Call {
            group: self.group(),
            action,
            args,
        }
    }
}

// ---------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------

/// The result of a call, ready to be printed.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Process exit code.
    pub exit_code: i32,
    /// The JSON object printed on stdout with `--json`
    /// (`{"ok":true,"data":...}` or `{"ok":false,"error":{...}}`).
    pub json: Value,
    /// Message for stderr (failures only).
    pub error: Option<String>,
}

impl Outcome {
    /// A failure not coming from a gateway response body.
    pub fn failure(exit_code: i32, code: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Outcome {
            exit_code,
            json: json!({ "ok": false, "error": { "code": code, "message": message } }),
            error: Some(message),
        }
    }

    /// The local permission check failed for `group`.
    pub fn permission_denied(group: &str) -> Self {
        Self::failure(
            exit::PERMISSION,
            "permission_denied",
            permission_denied_message(group),
        )
    }

    /// The gateway could not be reached (or is not configured).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::failure(exit::UNAVAILABLE, "backend_unavailable", message)
    }

    /// The `data` of a successful outcome.
    pub fn data(&self) -> Option<&Value> {
        if self.exit_code == exit::OK {
            self.json.get("data")
        } else {
            None
        }
    }
}

/// `(code, message)` of a `{"ok":false,"error":{...}}` body, if present.
fn error_fields(body: &Value) -> Option<(String, String)> {
    let err = body.get("error")?;
    match err {
        Value::Object(m) => {
            let code = m
                .get("code")
                .and_then(Value::as_str)
                .unwrap_or("error")
                .to_owned();
            let message = m
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| code.clone());
            Some((code, message))
        }
        Value::String(s) => Some(("error".to_owned(), s.clone())),
        _ => None,
    }
}

fn snippet(body: &str) -> String {
    let t = body.trim();
    let mut s: String = t.chars().take(200).collect();
    if t.chars().count() > 200 {
        s.push_str("...");
    }
    s
}

/// Turns an HTTP status and response body from the gateway into an outcome.
///
/// * 2xx with `{"ok":true,...}` → 0; 2xx with `{"ok":false,...}` → 1;
///   a 2xx body that is not such an object → 69 (broken backend).
/// * 401 → 1 (`authentication failed: ...`).
/// * 403 → 77 (the gateway's message, or the standard permission message).
/// * other 4xx → 1 with the gateway's message.
/// * 5xx and anything else → 69.
pub fn classify_response(group: &str, status: u16, body: &str) -> Outcome {
    let parsed: Option<Value> = serde_json::from_str::<Value>(body)
        .ok()
        .filter(Value::is_object);
    let fields = parsed.as_ref().and_then(error_fields);
    // Keep the gateway's own `{"ok":false,...}` object for --json when it sent one.
    let with_body = |mut o: Outcome| {
        if let (Some(p), Some(_)) = (&parsed, &fields) {
            if p.get("ok") == Some(&Value::Bool(false)) {
                o.json = p.clone();
            }
        }
        o
    };
    match status {
        200..=299 => match &parsed {
            Some(v) if v.get("ok") == Some(&Value::Bool(true)) => Outcome {
                exit_code: exit::OK,
                json: v.clone(),
                error: None,
            },
            Some(v) if v.get("ok") == Some(&Value::Bool(false)) => {
                let (code, message) = fields
                    .clone()
                    .unwrap_or(("error".into(), "call failed".into()));
                with_body(Outcome::failure(exit::FAILED, &code, message))
            }
            _ => Outcome::failure(
                exit::UNAVAILABLE,
                "invalid_response",
                format!(
                    "backend unavailable: invalid response from the gateway (HTTP {status}): {}",
                    snippet(body)
                ),
            ),
        },
        401 => {
            let detail = fields
                .as_ref()
                .map(|(_, m)| m.clone())
                .unwrap_or_else(|| "the gateway rejected ORCHESTRATOR_API_KEY".to_owned());
            with_body(Outcome::failure(
                exit::FAILED,
                "unauthenticated",
                format!("authentication failed: {detail}"),
            ))
        }
        403 => {
            let message = match &fields {
                Some((_, m)) if m.starts_with("Permission denied") => m.clone(),
                Some((_, m)) => format!("Permission denied: {m}"),
                None => permission_denied_message(group),
            };
            with_body(Outcome::failure(
                exit::PERMISSION,
                "permission_denied",
                message,
            ))
        }
        400..=499 => {
            let (code, message) = fields.clone().unwrap_or_else(|| {
                (
                    format!("http_{status}"),
                    format!("HTTP {status}: {}", snippet(body)),
                )
            });
            with_body(Outcome::failure(exit::FAILED, &code, message))
        }
        _ => {
            let detail = fields
                .as_ref()
                .map(|(_, m)| m.clone())
                .unwrap_or_else(|| snippet(body));
            let message = if detail.is_empty() {
                format!("backend unavailable: HTTP {status}")
            } else {
                format!("backend unavailable: HTTP {status}: {detail}")
            };
            with_body(Outcome::failure(
                exit::UNAVAILABLE,
                "backend_unavailable",
                message,
            ))
        }
    }
}

// ---------------------------------------------------------------------------
// Human-readable output
// ---------------------------------------------------------------------------

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Array(items) if items.iter().all(|i| !i.is_object() && !i.is_array()) => {
            if items.is_empty() {
                "-".to_owned()
            } else {
                items.iter().map(scalar).collect::<Vec<_>>().join(", ")
            }
        }
        other => other.to_string(),
    }
}

/// Keys in display order: identifying keys first, then the rest as given.
fn ordered_keys<'a>(keys: impl IntoIterator<Item = &'a String>) -> Vec<&'a String> {
    const FIRST: &[&str] = &["id", "request_id", "name"];
    let keys: Vec<&String> = keys.into_iter().collect();
    let mut out: Vec<&String> = FIRST
        .iter()
        .filter_map(|f| keys.iter().find(|k| k.as_str() == *f).copied())
        .collect();
    out.extend(keys.iter().filter(|k| !FIRST.contains(&k.as_str())));
    out
}

/// `key: value` lines of an object.
pub fn format_record(m: &Map<String, Value>) -> String {
    ordered_keys(m.keys())
        .into_iter()
        .map(|k| format!("{k}: {}", scalar(&m[k.as_str()])))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One line per item; objects become aligned columns under a header line.
pub fn format_list(name: &str, items: &[Value]) -> String {
    if items.is_empty() {
        return format!("no {name}");
    }
    if !items.iter().all(Value::is_object) {
        return items.iter().map(scalar).collect::<Vec<_>>().join("\n");
    }
    let mut keys: Vec<String> = Vec::new();
    for item in items {
        for k in item.as_object().into_iter().flat_map(Map::keys) {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
    }
    let cols: Vec<&String> = ordered_keys(keys.iter());
    let mut rows: Vec<Vec<String>> = vec![cols.iter().map(|c| c.to_string()).collect()];
    for item in items {
        rows.push(
            cols.iter()
                .map(|c| {
                    item.get(c.as_str())
                        .map(scalar)
                        .unwrap_or_else(|| "-".into())
                })
                .collect(),
        );
    }
    let widths: Vec<usize> = (0..cols.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            let mut line = String::new();
            for (i, cell) in r.iter().enumerate() {
                if i + 1 == r.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    let pad = widths[i] - cell.chars().count() + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            line.trim_end().to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Human-readable rendering of the `data` of a successful call.
///
/// * `respond` prints `sent`;
/// * `{"lines": [...]}` (deploy logs) prints the lines as they are;
/// * `{"<name>": {...}}` prints the object as `key: value` lines;
/// * `{"<name>": [...]}` prints one line per item (a table for objects);
/// * any other object prints as `key: value` lines.
pub fn format_human(call: &Call, data: &Value) -> String {
    if call.group == "respond" {
        return "sent".to_owned();
    }
    match data {
        Value::Object(m) => {
            if let Some(Value::Array(lines)) = m.get("lines") {
                if lines.iter().all(Value::is_string) {
                    return lines.iter().map(scalar).collect::<Vec<_>>().join("\n");
                }
            }
            if m.len() == 1 {
                let (k, v) = m.iter().next().expect("one entry");
                match v {
                    Value::Object(inner) => return format_record(inner),
                    Value::Array(items) => return format_list(k, items),
                    _ => {}
                }
            }
            format_record(m)
        }
        Value::Array(items) => format_list("items", items),
        Value::Null => String::new(),
        other => scalar(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("orchestrator").chain(args.iter().copied()))
    }

    fn call(args: &[&str]) -> Call {
        parse(args).expect("parses").command.to_call()
    }

    // --- allowed tools ---

    #[test]
    fn missing_or_empty_allows_nothing() {
        for g in GROUPS {
            assert!(!is_allowed(None, g));
            assert!(!is_allowed(Some(""), g));
            assert!(!is_allowed(Some(" , ,"), g));
        }
        assert!(allowed_tools(None).is_empty());
    }

    #[test]
    fn whitespace_is_trimmed() {
        let raw = Some(" project ,\trespond\n, deploy");
        assert_eq!(allowed_tools(raw), vec!["project", "respond", "deploy"]);
        assert!(is_allowed(raw, "project"));
        assert!(is_allowed(raw, "respond"));
        assert!(is_allowed(raw, "deploy"));
        assert!(!is_allowed(raw, "infra"));
    }

    #[test]
    fn names_match_exactly() {
        let raw = Some("project,respond");
        assert!(!is_allowed(raw, "admin"));
        assert!(!is_allowed(raw, "proj"));
        assert!(!is_allowed(Some("projects"), "project"));
        assert!(!is_allowed(Some("Project"), "project"));
        assert!(!is_allowed(Some("project respond"), "project"));
        assert!(is_allowed(Some("admin"), "admin"));
    }

    #[test]
    fn permission_message_is_exact() {
        assert_eq!(
            permission_denied_message("admin"),
            "Permission denied: admin is not in ORCHESTRATOR_ALLOWED_TOOLS"
        );
    }

    #[test]
    fn prescan_finds_group() {
        assert_eq!(prescan::<&str>(&[]), Prescan::default());
        assert_eq!(
            prescan(&["--json", "admin", "workers"]),
            Prescan {
                json: true,
                group: Some("admin".into())
            }
        );
        assert!(!prescan(&["admin", "--json"]).json);
        assert_eq!(
            prescan(&["--bogus", "deploy"]).group.as_deref(),
            Some("deploy")
        );
        assert_eq!(prescan(&["--help"]).group, None);
        assert_eq!(prescan(&["--", "admin"]).group.as_deref(), Some("admin"));
        assert_eq!(prescan(&["nuke"]).group.as_deref(), Some("nuke"));
        assert!(is_known_group("admin"));
        assert!(!is_known_group("nuke"));
    }

    // --- parsing and mapping ---

    #[test]
    fn project_commands() {
        let c = call(&["project", "list"]);
        assert_eq!((c.group, c.action, c.args), ("project", "list", json!({})));
        let c = call(&["project", "get", "proj_42"]);
        assert_eq!(
            (c.group, c.action, c.args),
            ("project", "get", json!({"project_id": "proj_42"}))
        );
        let c = call(&["project", "create", "--name", "billing-api"]);
        assert_eq!(
            (c.group, c.action, c.args),
            ("project", "create", json!({"name": "billing-api"}))
        );
        let c = call(&[
            "project",
            "create",
            "--name",
            "billing-api",
            "--description",
            "Invoices and payments",
        ]);
        assert_eq!(
            c.args,
            json!({"name": "billing-api", "description": "Invoices and payments"})
        );
        assert_eq!(c.path(), "/v1/tools/project/create");
    }

    #[test]
    fn deploy_commands() {
        let c = call(&["deploy", "trigger", "proj_42"]);
        assert_eq!(
            (c.group, c.action, c.args),
            (
                "deploy",
                "trigger",
                json!({"project_id": "proj_42", "env": "staging"})
            )
        );
        let c = call(&["deploy", "trigger", "proj_42", "--env", "production"]);
        assert_eq!(
            c.args,
            json!({"project_id": "proj_42", "env": "production"})
        );
        let c = call(&["deploy", "status", "dep_7f3a"]);
        assert_eq!(
            (c.action, c.args),
            ("status", json!({"deploy_id": "dep_7f3a"}))
        );
        let c = call(&["deploy", "logs", "dep_7f3a"]);
        assert_eq!(
            (c.action, c.args),
            ("logs", json!({"deploy_id": "dep_7f3a"}))
        );
        let c = call(&["deploy", "logs", "dep_7f3a", "--tail", "50"]);
        assert_eq!(c.args, json!({"deploy_id": "dep_7f3a", "tail": 50}));
        assert!(parse(&["deploy", "logs", "dep_7f3a", "--tail", "x"]).is_err());
        assert!(parse(&["deploy", "logs", "dep_7f3a", "--tail", "-1"]).is_err());
    }

    #[test]
    fn engineering_commands() {
        let c = call(&[
            "engineering",
            "trigger",
            "proj_42",
            "--task",
            "Fix it; add a test",
        ]);
        assert_eq!(
            (c.group, c.action, c.args),
            (
                "engineering",
                "trigger",
                json!({"project_id": "proj_42", "task": "Fix it; add a test"})
            )
        );
        let c = call(&[
            "engineering",
            "trigger",
            "proj_42",
            "--task",
            "- leading dash",
        ]);
        assert_eq!(c.args["task"], "- leading dash");
        let c = call(&["engineering", "status", "task_81"]);
        assert_eq!(
            (c.action, c.args),
            ("status", json!({"task_id": "task_81"}))
        );
        let e = parse(&["engineering", "trigger", "proj_42"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn infra_commands() {
        let c = call(&[
            "infra",
            "allocate",
            "--project",
            "proj_42",
            "--kind",
            "bucket",
        ]);
        assert_eq!(
            (c.group, c.action, c.args),
            (
                "infra",
                "allocate",
                json!({"project_id": "proj_42", "kind": "bucket"})
            )
        );
        let c = call(&[
            "infra",
            "allocate",
            "--project",
            "proj_42",
            "--kind",
            "db",
            "--size",
            "medium",
        ]);
        assert_eq!(
            c.args,
            json!({"project_id": "proj_42", "kind": "db", "size": "medium"})
        );
        let c = call(&["infra", "list"]);
        assert_eq!((c.action, c.args), ("list", json!({})));
        let c = call(&["infra", "list", "--project", "proj_42"]);
        assert_eq!(c.args, json!({"project_id": "proj_42"}));
        for bad in [
            &["infra", "allocate", "--project", "p", "--kind", "gpu"][..],
            &[
                "infra",
                "allocate",
                "--project",
                "p",
                "--kind",
                "vm",
                "--size",
                "huge",
            ],
            &["infra", "allocate", "--kind", "vm"],
        ] {
            assert_eq!(parse(bad).unwrap_err().exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn respond_command() {
        let c = call(&["respond", "Done: all 3 items completed."]);
        assert_eq!(
            (c.group, c.action, c.args.clone()),
            (
                "respond",
                "send",
                json!({"message": "Done: all 3 items completed."})
            )
        );
        assert_eq!(c.path(), "/v1/tools/respond/send");
        let c = call(&["respond", "- item one\n- item two"]);
        assert_eq!(c.args["message"], "- item one\n- item two");
        // an unquoted message split into several arguments is a usage error
        assert_eq!(
            parse(&["respond", "Done:", "all"]).unwrap_err().exit_code(),
            2
        );
        assert_eq!(parse(&["respond"]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn admin_commands() {
        let c = call(&["admin", "workers"]);
        assert_eq!((c.group, c.action, c.args), ("admin", "workers", json!({})));
        let c = call(&["admin", "cancel", "req_123"]);
        assert_eq!(
            (c.action, c.args),
            ("cancel", json!({"request_id": "req_123"}))
        );
        assert_eq!(parse(&["admin", "cancel"]).unwrap_err().exit_code(), 2);
        assert_eq!(parse(&["admin", "nuke"]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn global_json_flag() {
        assert!(parse(&["--json", "project", "list"]).unwrap().json);
        assert!(!parse(&["project", "list"]).unwrap().json);
        // only before the group, as documented
        assert!(parse(&["project", "list", "--json"]).is_err());
    }

    #[test]
    fn usage_errors_and_help() {
        let e = parse(&[]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let e = parse(&["--help"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp);
        assert_eq!(e.exit_code(), 0);
        assert_eq!(parse(&["nuke"]).unwrap_err().exit_code(), 2);
        assert_eq!(parse(&["project"]).unwrap_err().exit_code(), 2);
        assert_eq!(parse(&["help"]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn help_hides_groups_not_allowed() {
        let help = |raw| {
            parse_args(["orchestrator", "--help"], raw)
                .unwrap_err()
                .render()
                .to_string()
        };
        let h = help(Some("project,respond"));
        assert!(h.contains("project") && h.contains("respond"), "{h}");
        assert!(!h.contains("admin") && !h.contains("infra"), "{h}");
        assert!(help(Some("admin")).contains("admin"));
        let cli = parse_args(["orchestrator", "--json", "respond", "x"], Some("respond")).unwrap();
        assert!(cli.json);
        assert_eq!(cli.command.group(), "respond");
    }

    #[test]
    fn cli_definition_is_valid() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn url_and_body() {
        let c = call(&["admin", "cancel", "req_1"]);
        assert_eq!(
            call_url("http://172.30.0.1:9091/", &c),
            "http://172.30.0.1:9091/v1/tools/admin/cancel"
        );
        assert_eq!(
            call_url("http://h:1", &c),
            "http://h:1/v1/tools/admin/cancel"
        );
        assert_eq!(c.body(), json!({"args": {"request_id": "req_1"}}));
    }

    // --- responses ---

    #[test]
    fn classify_success() {
        let o = classify_response("project", 200, r#"{"ok":true,"data":{"projects":[]}}"#);
        assert_eq!(o.exit_code, 0);
        assert_eq!(o.error, None);
        assert_eq!(o.data(), Some(&json!({"projects": []})));
    }

    #[test]
    fn classify_failures() {
        let nf =
            r#"{"ok":false,"error":{"code":"not_found","message":"project proj_404 not found"}}"#;
        let o = classify_response("project", 404, nf);
        assert_eq!(o.exit_code, 1);
        assert_eq!(o.error.as_deref(), Some("project proj_404 not found"));
        assert_eq!(o.json, serde_json::from_str::<Value>(nf).unwrap());
        assert_eq!(o.data(), None);

        let o = classify_response("project", 200, nf);
        assert_eq!(o.exit_code, 1);

        let o = classify_response(
            "project",
            401,
            r#"{"ok":false,"error":{"code":"unauthenticated","message":"bad key"}}"#,
        );
        assert_eq!(o.exit_code, 1);
        assert_eq!(o.error.as_deref(), Some("authentication failed: bad key"));
        let o = classify_response("project", 401, "");
        assert!(o.error.unwrap().starts_with("authentication failed: "));

        let o = classify_response("admin", 403, "");
        assert_eq!(o.exit_code, 77);
        assert_eq!(
            o.error.as_deref(),
            Some("Permission denied: admin is not in ORCHESTRATOR_ALLOWED_TOOLS")
        );
        assert_eq!(o.json["error"]["code"], "permission_denied");
        let o = classify_response(
            "admin",
            403,
            r#"{"ok":false,"error":{"code":"forbidden","message":"Permission denied: admin is not in ORCHESTRATOR_ALLOWED_TOOLS"}}"#,
        );
        assert_eq!(
            o.error.as_deref(),
            Some("Permission denied: admin is not in ORCHESTRATOR_ALLOWED_TOOLS")
        );
        let o = classify_response(
            "admin",
            403,
            r#"{"ok":false,"error":{"code":"forbidden","message":"worker may not cancel"}}"#,
        );
        assert_eq!(
            o.error.as_deref(),
            Some("Permission denied: worker may not cancel")
        );

        let o = classify_response("deploy", 422, "not json");
        assert_eq!(o.exit_code, 1);
        assert_eq!(o.error.as_deref(), Some("HTTP 422: not json"));
        assert_eq!(o.json["ok"], false);

        for status in [500, 502, 503] {
            let o = classify_response("deploy", status, "upstream down");
            assert_eq!(o.exit_code, 69);
            assert_eq!(
                o.error.unwrap(),
                format!("backend unavailable: HTTP {status}: upstream down")
            );
        }
        let o = classify_response("deploy", 200, "<html>");
        assert_eq!(o.exit_code, 69);
        let o = classify_response("deploy", 302, "");
        assert_eq!(o.exit_code, 69);
    }

    #[test]
    fn local_failures() {
        let o = Outcome::permission_denied("infra");
        assert_eq!(o.exit_code, 77);
        assert_eq!(
            o.json,
            json!({"ok": false, "error": {"code": "permission_denied", "message": "Permission denied: infra is not in ORCHESTRATOR_ALLOWED_TOOLS"}})
        );
        let o = Outcome::unavailable("x");
        assert_eq!(o.exit_code, 69);
    }

    // --- human output ---

    #[test]
    fn human_respond() {
        let c = call(&["respond", "hi"]);
        assert_eq!(
            format_human(&c, &json!({"delivered": true, "message_id": "m"})),
            "sent"
        );
    }

    #[test]
    fn human_single_object() {
        let c = call(&["project", "get", "proj_42"]);
        let data = json!({"project": {
            "created_at": "2024-05-01T10:00:00Z",
            "description": null,
            "id": "proj_42",
            "name": "billing-api"
        }});
        let out = format_human(&c, &data);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "id: proj_42");
        assert_eq!(lines[1], "name: billing-api");
        assert!(lines.contains(&"description: -"));
        assert!(lines.contains(&"created_at: 2024-05-01T10:00:00Z"));
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn human_list() {
        let c = call(&["project", "list"]);
        let data = json!({"projects": [
            {"id": "proj_42", "name": "billing-api"},
            {"id": "proj_7", "name": "landing-page"}
        ]});
        assert_eq!(
            format_human(&c, &data),
            "id       name\nproj_42  billing-api\nproj_7   landing-page"
        );
        assert_eq!(format_human(&c, &json!({"projects": []})), "no projects");
    }

    #[test]
    fn human_workers_table_puts_request_id_first() {
        let c = call(&["admin", "workers"]);
        let data = json!({"workers": [
            {"preset": "po", "request_id": "req_1", "session_id": null},
        ]});
        let out = format_human(&c, &data);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("request_id"), "{out}");
        assert!(lines[1].starts_with("req_1"), "{out}");
        assert!(lines[1].ends_with('-'), "{out}");
    }

    #[test]
    fn human_logs_and_flat_objects() {
        let c = call(&["deploy", "logs", "dep_1"]);
        let data = json!({"deploy_id": "dep_1", "lines": ["a b", "c"]});
        assert_eq!(format_human(&c, &data), "a b\nc");
        let c = call(&["admin", "cancel", "req_1"]);
        let data = json!({"cancelled": true, "request_id": "req_1"});
        assert_eq!(
            format_human(&c, &data),
            "request_id: req_1\ncancelled: true"
        );
        let c = call(&["engineering", "status", "t"]);
        let data = json!({"task": {"id": "t", "links": ["u1", "u2"]}});
        assert_eq!(format_human(&c, &data), "id: t\nlinks: u1, u2");
    }
}

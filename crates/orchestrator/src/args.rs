//! The command line: clap definitions of the groups and their commands, as
//! documented to the agent in `skills/*.md`, and parsing that hides the
//! groups not allowed from the help text. Pure.

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::auth::is_allowed;
use crate::GROUPS;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::parse;

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
}

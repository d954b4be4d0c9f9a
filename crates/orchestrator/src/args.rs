//! The command line, built at run time (clap builder API) from the part of
//! the tool catalog the worker may use ([`crate::auth::usable_catalog`]), so
//! the help text lists only usable groups and actions. Pure.
//!
//! `orchestrator [--json] <group> <action> [args]`, or
//! `orchestrator [--json] <group> [args]` for the default action of a group
//! that declares one (the default action's name is not an action word then:
//! `orchestrator respond send` sends the message `send`). Each catalog
//! argument becomes a clap argument:
//!
//! * positionals in declared order, others as `--flag <value_name>`;
//! * `string`: any value, including ones starting with `-`;
//! * `integer`: an `i64` (anything else is a usage error);
//! * `boolean`: a switch taking no value;
//! * `enum`: one of the declared values;
//! * `required` (without a default) must be given; a `default` is used when
//!   the argument is not given and shown in the help.

use clap::builder::{PossibleValue, PossibleValuesParser};
use clap::error::ErrorKind;
use clap::{value_parser, Arg, ArgAction, Command};

use crate::call::{call_from_matches, Call};
use crate::catalog::{Action, ArgSpec, ArgType, Catalog, Group};

/// Id of the global `--json` flag.
const JSON_ID: &str = "json";

const AFTER_HELP: &str = "Exit codes: 0 success, 1 backend refused or failed the call, \
     2 usage error, 69 backend unavailable or not configured, \
     77 permission denied (not in ORCHESTRATOR_ALLOWED_TOOLS).";

/// A parsed command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    /// `--json` was given (before the group).
    pub json: bool,
    /// The gateway call to make.
    pub call: Call,
}

/// A help line as clap's derive would show a doc comment: without one
/// trailing period.
fn sentence(s: &str) -> String {
    let s = s.trim();
    s.strip_suffix('.')
        .filter(|rest| !rest.ends_with('.'))
        .unwrap_or(s)
        .to_owned()
}

/// Whether the argument must be given on the command line.
fn needed(spec: &ArgSpec) -> bool {
    spec.required && spec.default.is_none()
}

/// The clap argument of a catalog argument (its id is the catalog name).
fn clap_arg(spec: &ArgSpec) -> Arg {
    let mut arg = Arg::new(spec.name.clone());
    if let Some(long) = &spec.long {
        arg = arg.long(long.clone());
    }
    if let Some(help) = &spec.help {
        arg = arg.help(sentence(help));
    }
    if spec.ty != ArgType::Boolean {
        arg = arg
            .action(ArgAction::Set)
            .value_name(spec.value_name.clone().unwrap_or_else(|| spec.name.clone()));
    }
    arg = match &spec.ty {
        ArgType::String => arg.allow_hyphen_values(true),
        ArgType::Integer => arg.value_parser(value_parser!(i64)),
        ArgType::Boolean => arg.action(ArgAction::SetTrue),
        ArgType::Enum(values) => arg.value_parser(PossibleValuesParser::new(
            values.iter().map(|v| PossibleValue::new(v.clone())),
        )),
    };
    if needed(spec) {
        arg = arg.required(true);
    }
    if let Some(default) = &spec.default {
        arg = arg.default_value(default.clone());
    }
    arg
}

fn action_command(action: &Action) -> Command {
    Command::new(action.name.clone())
        .about(sentence(&action.help))
        .args(action.args.iter().map(clap_arg))
}

fn group_command(group: &Group) -> Command {
    let mut cmd = Command::new(group.name.clone()).about(sentence(&group.description));
    let default = group.default();
    match default {
        Some(d) => {
            cmd = cmd.args(d.args.iter().map(clap_arg));
            if group.actions.len() > 1 {
                cmd = cmd
                    .args_conflicts_with_subcommands(true)
                    .subcommand_negates_reqs(true);
            }
            if d.args.iter().any(needed) {
                cmd = cmd.arg_required_else_help(true);
            }
        }
        None => cmd = cmd.subcommand_required(true).arg_required_else_help(true),
    }
    let default_name = default.map(|d| d.name.as_str());
    cmd.subcommands(
        group
            .actions
            .iter()
            .filter(|a| Some(a.name.as_str()) != default_name)
            .map(action_command),
    )
}

/// The `orchestrator` command with one subcommand per group of `catalog`
/// (pass the usable catalog), in catalog order.
pub fn build_command(catalog: &Catalog) -> Command {
    Command::new("orchestrator")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Acts on the orchestrator platform from inside a worker container")
        .disable_help_subcommand(true)
        .subcommand_required(true)
        .arg_required_else_help(true)
        .after_help(AFTER_HELP)
        .arg(
            Arg::new(JSON_ID)
                .long("json")
                .action(ArgAction::SetTrue)
                .help("Machine-readable output: print the gateway's JSON object on one line"),
        )
        .subcommands(catalog.groups.iter().map(group_command))
}

/// Parses the command line (`args` includes `argv[0]`) against `catalog`
/// (the usable catalog): unknown groups, actions and bad arguments are
/// clap errors (exit 2; `--help` and `--version` are "errors" with exit 0).
pub fn parse_args<I, T>(catalog: &Catalog, args: I) -> Result<Invocation, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let mut cmd = build_command(catalog);
    let matches = cmd.try_get_matches_from_mut(args)?;
    let Some(call) = call_from_matches(catalog, &matches) else {
        return Err(cmd.error(ErrorKind::MissingSubcommand, "no action given"));
    };
    Ok(Invocation {
        json: matches.get_flag(JSON_ID),
        call,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{allowed_tools, usable_catalog};
    use crate::test_support::{parse, shipped};

    fn help_of(raw: &str, args: &[&str]) -> String {
        let c = usable_catalog(&shipped(), &allowed_tools(Some(raw)));
        let argv = std::iter::once("orchestrator").chain(args.iter().copied());
        parse_args(&c, argv).unwrap_err().render().to_string()
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
        assert_eq!(e.kind(), ErrorKind::DisplayHelp);
        assert_eq!(e.exit_code(), 0);
        assert_eq!(parse(&["--version"]).unwrap_err().exit_code(), 0);
        assert_eq!(parse(&["nuke"]).unwrap_err().exit_code(), 2);
        assert_eq!(parse(&["project"]).unwrap_err().exit_code(), 2);
        assert_eq!(parse(&["project", "nuke"]).unwrap_err().exit_code(), 2);
        assert_eq!(parse(&["help"]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn help_lists_only_usable_groups_and_actions() {
        let h = help_of("project,respond", &["--help"]);
        assert!(h.contains("project") && h.contains("respond"), "{h}");
        assert!(!h.contains("admin") && !h.contains("infra"), "{h}");
        assert!(h.contains("Look up, list and create projects\n"), "{h}");
        assert!(help_of("admin", &["--help"]).contains("admin"));
        let h = help_of("deploy:status,deploy:logs", &["deploy", "--help"]);
        assert!(h.contains("status") && h.contains("logs"), "{h}");
        assert!(!h.contains("trigger"), "{h}");
        // in the order of the allowed entries
        assert!(h.find("status") < h.find("logs"), "{h}");
        let h = help_of("deploy", &["deploy", "trigger", "--help"]);
        assert!(
            h.contains("Usage: orchestrator deploy trigger [OPTIONS] <project_id>"),
            "{h}"
        );
        assert!(h.contains("--env <environment>"), "{h}");
        assert!(h.contains("[default: staging]"), "{h}");
        let h = help_of("respond", &["respond", "--help"]);
        assert!(h.contains("Usage: orchestrator respond <message>"), "{h}");
        let h = help_of("infra", &["infra", "allocate", "--help"]);
        assert!(h.contains("[possible values: vm, db, bucket]"), "{h}");
    }

    #[test]
    fn nothing_usable_still_parses_help() {
        let c = Catalog::default();
        let e = parse_args(&c, ["orchestrator", "--help"]).unwrap_err();
        assert_eq!(e.exit_code(), 0);
        let e = parse_args(&c, ["orchestrator", "deploy"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn cli_definition_is_valid() {
        build_command(&shipped()).debug_assert();
        build_command(&crate::test_support::review()).debug_assert();
    }

    #[test]
    fn sentences() {
        assert_eq!(sentence("List all. "), "List all");
        assert_eq!(sentence("And so on..."), "And so on...");
        assert_eq!(sentence(""), "");
    }
}

//! Unit tests of the sentences for schema violations, of the warnings and
//! of render problems.

use super::*;
use crate::model::catalog::{Catalog, CatalogIssue, CatalogSources};
use crate::model::config::{ConfigSchema, FieldError, WorkerConfig};
use serde_json::{json, Value};

fn valid() -> Value {
    json!({
        "id": "po_claude_v1",
        "name": "Product Owner (Claude)",
        "image": "universal-worker-base:latest",
        "agent": {"type": "claude-code", "command": ["claude", "-p", "{prompt}"]},
        "allowed_tools": ["project", "deploy", "respond"],
        "has_internet": true,
        "env": {"ANTHROPIC_API_KEY": {"from_env": "ANTHROPIC_API_KEY"}, "MODE": "x"},
        "limits": {"cpu": 2.0, "memory": "4g", "timeout_sec": 600, "ttl_sec": 7200}
    })
}

fn set(mut v: Value, pointer: &str, new: Value) -> Value {
    match v.pointer_mut(pointer) {
        Some(slot) => *slot = new,
        None => {
            let (parent, key) = pointer.rsplit_once('/').unwrap();
            v.pointer_mut(parent).unwrap()[key] = new;
        }
    }
    v
}

fn drop_key(mut v: Value, pointer: &str) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let obj = if parent.is_empty() {
        &mut v
    } else {
        v.pointer_mut(parent).unwrap()
    };
    obj.as_object_mut().unwrap().remove(key);
    v
}

/// (field, message) of every error of `v`.
fn errors(v: &Value) -> Vec<(String, String)> {
    ConfigSchema::new()
        .validate(v)
        .unwrap_err()
        .errors
        .into_iter()
        .map(|e| (e.field, e.message))
        .collect()
}

/// The only error of `v`.
fn error(v: &Value) -> (String, String) {
    let all = errors(v);
    assert_eq!(all.len(), 1, "{all:#?}");
    all.into_iter().next().unwrap()
}

fn message(v: &Value) -> String {
    error(v).1
}

#[test]
fn a_command_without_the_prompt_says_where_it_goes() {
    let v = set(valid(), "/agent/command", json!(["claude", "-p"]));
    assert_eq!(
        error(&v),
        (
            "agent.command".into(),
            r#"agent.command must contain the element "{prompt}" exactly once (the prompt is passed as its own argument), e.g. ["claude", "-p", "{prompt}"]"#.into()
        )
    );
}

#[test]
fn a_prompt_inside_a_longer_argument_is_pointed_out() {
    let v = set(valid(), "/agent/command", json!(["claude", "-p {prompt}"]));
    assert_eq!(
        message(&v),
        r#"agent.command must contain the element "{prompt}" exactly once (the prompt is passed as its own argument): "-p {prompt}" holds it inside a longer string, which is passed as written; make "{prompt}" an element of its own, e.g. ["claude", "-p", "{prompt}"]"#
    );
}

#[test]
fn a_prompt_given_twice_is_counted() {
    let v = set(
        valid(),
        "/agent/command",
        json!(["a", "{prompt}", "{prompt}"]),
    );
    assert_eq!(
        message(&v),
        r#"agent.command must contain the element "{prompt}" exactly once (the prompt is passed as its own argument); it has it 2 times"#
    );
}

#[test]
fn a_memory_that_is_not_a_size_says_how_to_write_one() {
    let v = set(valid(), "/limits/memory", json!("4 gigs"));
    assert_eq!(
        error(&v),
        (
            "limits.memory".into(),
            r#"limits.memory "4 gigs" is not a size: write e.g. 512m or 4g (did you mean "4g"?)"#
                .into()
        )
    );
    let v = set(valid(), "/limits/memory", json!("512MB"));
    assert!(
        message(&v).ends_with(r#"(did you mean "512m"?)"#),
        "{}",
        message(&v)
    );
    let v = set(valid(), "/limits/memory", json!("lots"));
    assert_eq!(
        message(&v),
        r#"limits.memory "lots" is not a size: write e.g. 512m or 4g"#
    );
}

#[test]
fn an_unknown_tool_lists_the_known_ones_and_guesses() {
    let mut p = valid();
    p["allowed_tools"] = json!(["project", "deploi"]);
    let (_, issues) = Catalog::build(
        &CatalogSources {
            presets: vec![(
                format!("{}.json", p["id"].as_str().unwrap()),
                p.to_string().into_bytes(),
            )],
            tools: crate::model::tools::shipped_sources(),
            ..Default::default()
        },
        &ConfigSchema::new(),
        None,
    );
    let i = issues
        .iter()
        .find(|i| i.field.as_deref() == Some("allowed_tools.1"))
        .expect("an issue");
    assert_eq!(
        i.message,
        r#"allowed_tools.1: "deploi" is not a tool group (known: admin, deploy, engineering, infra, project, respond; did you mean "deploy"?)"#
    );
    let v = set(valid(), "/allowed_tools", json!(["Respond"]));
    assert_eq!(error(&v).0, "allowed_tools.0");
}

#[test]
fn a_duplicate_tool_is_named() {
    let v = set(
        valid(),
        "/allowed_tools",
        json!(["project", "respond", "project"]),
    );
    assert_eq!(
        error(&v),
        (
            "allowed_tools".into(),
            r#"allowed_tools lists "project" twice: list each entry once"#.into()
        )
    );
}

#[test]
fn a_misspelt_key_gets_a_did_you_mean_and_no_second_missing_message() {
    let mut v = drop_key(valid(), "/limits");
    v["limit"] = json!({"cpu": 1});
    assert_eq!(
        error(&v),
        (
            "limit".into(),
            r#"limit is not a known field; did you mean "limits"? (limits is required and missing)"#.into()
        )
    );
    let mut v = drop_key(valid(), "/allowed_tools");
    v["alowed_tools"] = json!(["respond"]);
    assert_eq!(
        message(&v),
        r#"alowed_tools is not a known field; did you mean "allowed_tools"? (allowed_tools is required and missing)"#
    );
    let v = set(valid(), "/limits/timeoutSec", json!(5));
    assert_eq!(
        error(&v),
        (
            "limits.timeoutSec".into(),
            r#"limits.timeoutSec is not a known field; did you mean "timeout_sec"?"#.into()
        )
    );
}

#[test]
fn a_key_at_the_wrong_level_says_where_it_belongs() {
    let v = set(valid(), "/timeout_sec", json!(600));
    assert_eq!(
        message(&v),
        "timeout_sec is not a known field here; did you mean limits.timeout_sec? (move it there)"
    );
    let v = set(valid(), "/read_only_root", json!(true));
    assert_eq!(
        message(&v),
        "read_only_root is not a known field here; did you mean security.read_only_root? (move it there)"
    );
}

#[test]
fn keys_named_as_in_other_tools_get_the_full_name() {
    let mut v = drop_key(valid(), "/allowed_tools");
    v["tools"] = json!(["respond"]);
    assert_eq!(
        message(&v),
        r#"tools is not a known field; did you mean "allowed_tools"? (allowed_tools is required and missing)"#
    );
    let v = set(
        valid(),
        "/limits",
        json!({"cpu": 1, "memory": "1g", "timeout": 60, "ttl": 600}),
    );
    assert_eq!(
        errors(&v),
        vec![
            ("limits.timeout".to_string(), r#"limits.timeout is not a known field; did you mean "timeout_sec"? (limits.timeout_sec is required and missing)"#.to_string()),
            ("limits.ttl".to_string(), r#"limits.ttl is not a known field; did you mean "ttl_sec"? (limits.ttl_sec is required and missing)"#.to_string()),
        ]
    );
}

#[test]
fn an_empty_value_is_reported_once() {
    assert_eq!(
        error(&set(valid(), "/image", json!(""))),
        ("image".into(), "image must not be empty".into())
    );
    assert_eq!(
        error(&set(valid(), "/agent/command", json!([]))),
        (
            "agent.command".into(),
            r#"agent.command must not be empty, e.g. ["claude", "-p", "{prompt}"]"#.into()
        )
    );
}

#[test]
fn a_command_written_as_one_string_is_split_into_a_list() {
    assert_eq!(
        message(&set(valid(), "/agent/command", json!("claude -p {prompt}"))),
        r#"agent.command must be a list, got the string "claude -p {prompt}" (a list, one entry per word: ["claude", "-p", "{prompt}"])"#
    );
}

#[test]
fn an_option_outside_its_list_names_the_options() {
    assert_eq!(
        message(&set(valid(), "/agent/delivery", json!("tar"))),
        r#"agent.delivery must be "stdin" or "archive", got the string "tar""#
    );
    assert_eq!(
        message(&set(valid(), "/agent/delivery", json!("Archive"))),
        r#"agent.delivery must be "stdin" or "archive", got the string "Archive"; did you mean "archive"?"#
    );
}

#[test]
fn an_unknown_key_with_no_near_miss_lists_the_known_ones() {
    let v = set(valid(), "/limits/gpu", json!(1));
    assert_eq!(
        error(&v),
        (
            "limits.gpu".into(),
            "limits.gpu is not a known field (known: cpu, memory, pids, timeout_sec, ttl_sec)"
                .into()
        )
    );
}

#[test]
fn wrong_types_say_what_was_expected_and_what_came() {
    let cases = [
        (
            "/limits/cpu",
            json!("two"),
            r#"limits.cpu must be a number, got the string "two" (e.g. 2 or 0.5)"#,
        ),
        (
            "/limits/cpu",
            json!("2"),
            r#"limits.cpu must be a number, got the string "2" (write it without quotes: 2)"#,
        ),
        (
            "/has_internet",
            json!("yes"),
            r#"has_internet must be true or false, got the string "yes" (write true without quotes)"#,
        ),
        (
            "/limits/timeout_sec",
            json!(1.5),
            "limits.timeout_sec must be a whole number, got the number 1.5 (no fraction)",
        ),
        (
            "/system_packages",
            json!("git"),
            r#"system_packages must be a list, got the string "git" (a list, even of one: ["git"])"#,
        ),
        (
            "/network",
            json!(5),
            "network must be a string or null, got the number 5",
        ),
        (
            "/limits/memory",
            json!(4),
            r#"limits.memory must be a string, got the number 4 (e.g. "4g")"#,
        ),
        (
            "/agent",
            json!("claude"),
            r#"agent must be an object, got the string "claude""#,
        ),
    ];
    for (pointer, value, want) in cases {
        assert_eq!(message(&set(valid(), pointer, value)), want, "{pointer}");
    }
    assert_eq!(
        message(&json!([])),
        "the preset must be an object, got an empty list"
    );
}

#[test]
fn a_missing_required_field_says_what_it_is() {
    assert_eq!(
        error(&drop_key(valid(), "/limits/ttl_sec")),
        (
            "limits.ttl_sec".into(),
            "limits.ttl_sec is required but missing: the longest a session or pool container lives, in seconds, e.g. 7200".into()
        )
    );
    assert_eq!(
        message(&drop_key(valid(), "/agent")),
        r#"agent is required but missing: which agent runs and how, e.g. {"type": "claude-code", "command": ["claude", "-p", "{prompt}"]}"#
    );
    assert_eq!(
        message(&drop_key(valid(), "/agent/type")),
        r#"agent.type is required but missing: the agent type (a folder of the templates directory), e.g. "claude-code""#
    );
}

#[test]
fn numbers_out_of_range_give_the_bound_in_words() {
    let cases = [
        (
            "/limits/timeout_sec",
            json!(0),
            "limits.timeout_sec must be at least 1 second, got 0",
        ),
        (
            "/limits/ttl_sec",
            json!(9_999_999),
            "limits.ttl_sec must be at most 2592000 seconds (30 days), got 9999999",
        ),
        (
            "/limits/cpu",
            json!(0),
            "limits.cpu must be at least 0.01, got 0",
        ),
        (
            "/pool",
            json!({"size": 100}),
            "pool.size must be at most 64, got 100",
        ),
        (
            "/limits/pids",
            json!(3),
            "limits.pids must be at least 16, got 3",
        ),
    ];
    for (pointer, value, want) in cases {
        assert_eq!(message(&set(valid(), pointer, value)), want, "{pointer}");
    }
}

#[test]
fn values_of_the_wrong_form_say_the_form_in_words() {
    let cases = [
        (
            "/id",
            json!("PO Claude"),
            r#"id "PO Claude" is not a valid id: lowercase letters, digits, "_", "." and "-", starting with a letter or digit; did you mean "po_claude"?"#,
        ),
        (
            "/locale",
            json!("en_US"),
            r#"locale "en_US" is not a locale: a language code such as "en" or "ru", optionally with a country, "en-US"; did you mean "en-US"?"#,
        ),
        (
            "/image",
            json!("Ubuntu:22.04"),
            r#"image "Ubuntu:22.04" is not an image reference: a lowercase name with an optional registry and tag or digest, e.g. "universal-worker-base:latest" or "ghcr.io/acme/worker:1.2"; did you mean "ubuntu:22.04"?"#,
        ),
        (
            "/agent/type",
            json!("Claude Code"),
            r#"agent.type "Claude Code" is not an agent type: lowercase letters, digits and "-", e.g. "claude-code"; did you mean "claude-code"?"#,
        ),
        (
            "/system_packages",
            json!(["git curl"]),
            r#"system_packages: "git curl" is not a Debian package name: lowercase letters, digits, "+", "." and "-" (one package per entry: ["git", "curl"])"#,
        ),
        (
            "/security",
            json!({"cap_add": ["net_admin"]}),
            r#"security.cap_add: "net_admin" is not a capability name: upper-case letters and "_", e.g. "NET_BIND_SERVICE"; did you mean "NET_ADMIN"?"#,
        ),
        (
            "/env",
            json!({"MY-VAR": "x"}),
            r#"env: "MY-VAR" is not an environment variable name: letters, digits and "_", not starting with a digit; did you mean "MY_VAR"?"#,
        ),
        (
            "/env",
            json!({"K": {"from_env": "1KEY"}}),
            r#"env.K.from_env: "1KEY" is not an environment variable name: letters, digits and "_", not starting with a digit; did you mean "_1KEY"?"#,
        ),
    ];
    for (pointer, value, want) in cases {
        assert_eq!(message(&set(valid(), pointer, value)), want, "{pointer}");
    }
    assert_eq!(error(&set(valid(), "/env", json!({"1BAD": "x"}))).0, "env");
}

#[test]
fn env_values_say_both_allowed_forms() {
    assert_eq!(
        error(&set(valid(), "/env", json!({"A": 1}))),
        (
            "env.A".into(),
            r#"env.A must be a string or {"from_env": "NAME"}, got the number 1"#.into()
        )
    );
    assert_eq!(
        error(&set(valid(), "/env", json!({"A": {"from_env": 5}}))),
        (
            "env.A.from_env".into(),
            "env.A.from_env must be a string, got the number 5".into()
        )
    );
    assert_eq!(
        error(&set(valid(), "/env", json!({"A": {"from": "B"}}))),
        (
            "env.A.from".into(),
            r#"env.A.from is not a known field; did you mean "from_env"? (env.A.from_env is required and missing)"#.into()
        )
    );
}

#[test]
fn lengths_and_counts_are_stated() {
    assert_eq!(
        message(&set(valid(), "/name", json!(""))),
        "name must not be empty"
    );
    let long = "x".repeat(2001);
    let m = message(&set(valid(), "/description", json!(long)));
    assert!(
        m.starts_with("description \"xxxx")
            && m.ends_with("is 2001 characters long; at most 2000 are allowed"),
        "{m}"
    );
    let many: Vec<String> = (0..65).map(|i| format!("p{i}")).collect();
    assert_eq!(
        message(&set(valid(), "/system_packages", json!(many))),
        "system_packages has 65 entries; at most 64 are allowed"
    );
}

#[test]
fn rules_beyond_the_schema_name_their_field() {
    assert_eq!(
        error(&set(valid(), "/limits/memory", json!("1k"))),
        (
            "limits.memory".into(),
            r#"limits.memory "1k" is below Docker's minimum of 6m"#.into()
        )
    );
    assert_eq!(
        message(&set(valid(), "/env", json!({"ORCHESTRATOR_API_KEY": "x"}))),
        "env.ORCHESTRATOR_API_KEY: names starting with ORCHESTRATOR_ are reserved for the daemon, which sets them itself; choose another name"
    );
    let m = message(&set(valid(), "/image", json!("x:")));
    assert!(
        m.starts_with(r#"image "x:" is not a valid image reference: "#),
        "{m}"
    );
}

/// Errors of `instance` against a schema of the test's own, as a
/// later schema rule (a new floor, a new pattern) would give them.
fn errors_against(schema: Value, instance: Value) -> Vec<String> {
    let validator = jsonschema::draft202012::new(&schema).unwrap();
    validator
        .iter_errors(&instance)
        .flat_map(|e| describe(&schema, &e))
        .map(|e| e.message)
        .collect()
}

#[test]
fn rules_without_a_sentence_of_their_own_still_read_well() {
    let schema = json!({
        "type": "object",
        "properties": {
            "limits": {"type": "object", "properties": {
                "timeout_sec": {"type": "integer", "minimum": 10},
                "cpu": {"type": "number", "exclusiveMinimum": 0.1},
                "tag": {"type": "string", "pattern": "^v[0-9]+$"}
            }},
            "list": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]+$"}},
            "mode": {"const": "fast"},
            "names": {"type": "object", "propertyNames": {"pattern": "^[a-z]+$"}}
        }
    });
    let got = errors_against(
        schema,
        json!({
            "limits": {"timeout_sec": 5, "cpu": 0.05, "tag": "1.0"},
            "list": ["ok", "NOT"],
            "mode": "slow",
            "names": {"Bad": 1}
        }),
    );
    let want = [
        "limits.timeout_sec must be at least 10 seconds, got 5",
        "limits.cpu must be more than 0.1, got 0.05",
        r#"limits.tag "1.0" does not have the required form (it must match the regular expression ^v[0-9]+$)"#,
        r#"list "NOT" does not have the required form (it must match the regular expression ^[a-z]+$)"#,
        r#"mode must be "fast", got the string "slow""#,
        r#"names: "Bad" is not a valid name"#,
    ];
    for w in want {
        assert!(got.iter().any(|g| g == w), "missing {w:?} in {got:#?}");
    }
    assert_eq!(got.len(), want.len(), "{got:#?}");
}

fn config(v: Value) -> WorkerConfig {
    ConfigSchema::new().validate(&v).unwrap()
}

fn warnings(v: Value, max_concurrent: Option<usize>) -> Vec<(String, String)> {
    config_warnings(&config(v), &Context { max_concurrent })
        .into_iter()
        .map(|w| (w.field, w.message))
        .collect()
}

#[test]
fn a_sound_preset_has_no_warnings() {
    assert_eq!(warnings(valid(), Some(16)), vec![]);
}

#[test]
fn a_ttl_shorter_than_the_timeout_is_a_warning_naming_both() {
    let v = set(valid(), "/limits/ttl_sec", json!(300));
    assert_eq!(
        warnings(v, None),
        vec![(
            "limits.ttl_sec".into(),
            "limits.ttl_sec (300) is shorter than limits.timeout_sec (600): a session's container lives only ttl_sec, so a task in a session is stopped before its timeout".into()
        )]
    );
}

#[test]
fn a_pool_that_can_never_serve_is_a_warning() {
    let v = set(valid(), "/limits/ttl_sec", json!(600));
    let v = set(v, "/pool", json!({"size": 2}));
    assert_eq!(
        warnings(v, None),
        vec![(
            "pool.size".into(),
            "pool.size is 2 but limits.ttl_sec (600) is not longer than limits.timeout_sec (600): a pool container takes a request only while it has a whole timeout_sec of life left, so this pool never serves one (make ttl_sec longer than timeout_sec)".into()
        )]
    );
}

#[test]
fn a_pool_larger_than_the_daemon_keeps_is_a_warning() {
    let v = set(valid(), "/pool", json!({"size": 10}));
    assert_eq!(warnings(v.clone(), None), vec![]);
    assert_eq!(warnings(v.clone(), Some(20)), vec![]);
    assert_eq!(
        warnings(v, Some(16)),
        vec![(
            "pool.size".into(),
            "pool.size (10) is more than the daemon keeps ready: pools hold at most half of max_concurrent (16 / 2 = 8) containers in all, so at most 8 of these are kept".into()
        )]
    );
}

#[test]
fn a_network_without_internet_is_a_warning() {
    let v = set(valid(), "/has_internet", json!(false));
    let v = set(v, "/network", json!("corp"));
    assert_eq!(
        warnings(v, None),
        vec![(
            "network".into(),
            r#"network "corp" is attached while has_internet is false: has_internet only chooses the daemon's own network, so if "corp" has a route out the worker reaches the internet through it"#.into()
        )]
    );
}

#[test]
fn a_prompt_placeholder_inside_another_argument_is_a_warning() {
    let v = set(
        valid(),
        "/agent/command",
        json!(["claude", "--name={prompt}", "-p", "{prompt}"]),
    );
    assert_eq!(
        warnings(v, None),
        vec![(
            "agent.command.1".into(),
            r#"agent.command[1] "--name={prompt}" contains {prompt} inside a longer string: only the element that is exactly "{prompt}" is replaced by the prompt, this one is passed as written"#.into()
        )]
    );
}

#[test]
fn a_secret_written_into_the_preset_is_a_warning() {
    let v = set(
        valid(),
        "/env",
        json!({"GITHUB_TOKEN": "ghp_x", "MODE": "ci", "API_KEY": {"from_env": "K"}}),
    );
    assert_eq!(
        warnings(v, None),
        vec![(
            "env.GITHUB_TOKEN".into(),
            r#"env.GITHUB_TOKEN is written in the preset as plain text: if it is a secret, put it in the daemon's environment and write {"from_env": "GITHUB_TOKEN"} (then it is kept out of events, results and logs)"#.into()
        )]
    );
}

fn catalog_of(presets: &[Value], templates: &[&str]) -> Catalog {
    let sources = CatalogSources {
        presets: presets
            .iter()
            .map(|p| (format!("{}.json", p["id"].as_str().unwrap()), p.to_string().into_bytes()))
            .collect(),
        skills: ["admin", "deploy", "engineering", "infra", "project", "respond"]
            .iter()
            .map(|t| (format!("{t}.md"), format!("---\nname: {t}\ndescription: d\n---\n").into_bytes()))
            .collect(),
        tools: crate::model::tools::shipped_sources(),
        templates: std::iter::once((
            "claude-code/agent.json".to_string(),
            br#"{"instructions_path": "/workspace/CLAUDE.md", "skill_path": "/workspace/{tool}.md"}"#.to_vec(),
        ))
        .chain(templates.iter().map(|t| (t.to_string(), b"x".to_vec())))
        .collect(),
    };
    let (catalog, issues) = Catalog::build(&sources, &ConfigSchema::new(), None);
    assert_eq!(issues, vec![]);
    catalog
}

#[test]
fn a_role_no_template_knows_is_a_warning_with_a_guess() {
    let p = set(valid(), "/role", json!("develper"));
    let c = catalog_of(
        &[p],
        &["claude-code/developer.md.tera", "claude-code/po.ru.md.tera"],
    );
    let ws = catalog_warnings(&c, &Context::default());
    assert_eq!(
        ws,
        vec![CatalogIssue {
            file: "presets/po_claude_v1.json".into(),
            field: Some("role".into()),
            message: r#"role "develper" has no instruction template for any agent type (no <type>/develper.md.tera), so the instructions come from __builtin__/default.md.tera; roles with templates: developer, po; did you mean "developer"?"#.into(),
        }]
    );
    // A role some agent type knows is fine for the others.
    let p = set(valid(), "/role", json!("po"));
    let c = catalog_of(&[p], &["codex/po.md.tera"]);
    assert_eq!(catalog_warnings(&c, &Context::default()), vec![]);
}

#[test]
fn pools_that_together_exceed_the_budget_are_a_warning() {
    let a = set(set(valid(), "/id", json!("a")), "/pool", json!({"size": 3}));
    let b = set(set(valid(), "/id", json!("b")), "/pool", json!({"size": 3}));
    let c = catalog_of(&[a, b], &[]);
    let ws = catalog_warnings(
        &c,
        &Context {
            max_concurrent: Some(10),
        },
    );
    assert_eq!(
        ws,
        vec![CatalogIssue {
            file: "presets/".into(),
            field: Some("pool.size".into()),
            message: "pool.size of the presets adds up to 6 containers (a: 3, b: 3), but the daemon keeps at most half of max_concurrent (10 / 2 = 5) ready in all".into(),
        }]
    );
    assert_eq!(
        catalog_warnings(
            &c,
            &Context {
                max_concurrent: Some(12)
            }
        ),
        vec![]
    );
}

#[test]
fn render_problems_name_the_file_looked_for() {
    let c = catalog_of(&[], &[]);
    let cfg = config(set(valid(), "/agent/type", json!("claude-cod")));
    let e = crate::model::render::render(&c, &cfg).unwrap_err();
    assert_eq!(
        render_problem(&c, &cfg, &e, "skills", "/t/templates/"),
        FieldError {
            field: "agent.type".into(),
            message: r#"agent.type "claude-cod" is not an agent type: there is no /t/templates/claude-cod/agent.json (known agent types: claude-code; did you mean "claude-code"?)"#.into(),
        }
    );
    let e = crate::model::render::RenderError::MissingSkill("deploy".into());
    let cfg = config(valid());
    assert_eq!(
        render_problem(&c, &cfg, &e, "/s", "t").message,
        r#"allowed_tools: tool "deploy" has no skill file /s/deploy.md (every allowed tool needs one)"#
    );
}

#[test]
fn a_conversation_is_false_or_a_declaration_under_home() {
    assert_eq!(
        error(&set(valid(), "/agent/conversation", json!(true))),
        (
            "agent.conversation".into(),
            "agent.conversation must be false or an object, got true".into()
        )
    );
    let off = set(valid(), "/agent/conversation", json!(false));
    assert!(ConfigSchema::new().validate(&off).is_ok());
    let (field, msg) = error(&set(
        valid(),
        "/agent/conversation",
        json!({"state_dir": "/root/.claude", "id": "derived", "resume": ["--resume", "{agent_session}"]}),
    ));
    assert_eq!(field, "agent.conversation.state_dir");
    assert!(msg.contains("^/home/worker/"), "{msg}");
}

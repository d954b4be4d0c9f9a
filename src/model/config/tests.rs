//! Unit tests of worker configs: the schema and its sentences' fields, the
//! semantic checks, env names, the merge and the hash.

use super::*;
use serde_json::{json, Value};

pub(crate) fn valid() -> Value {
    json!({
        "id": "po_claude_v1",
        "name": "Product Owner (Claude)",
        "image": "universal-worker-base:latest",
        "system_packages": ["git", "curl"],
        "bootstrap_commands": [],
        "agent": {"type": "claude-code", "command": ["claude", "-p", "{prompt}"]},
        "allowed_tools": ["project", "deploy", "respond"],
        "network": "codegen_orchestrator_internal",
        "has_internet": true,
        "env": {"ANTHROPIC_API_KEY": {"from_env": "ANTHROPIC_API_KEY"}, "MODE": "x"},
        "limits": {"cpu": 2.0, "memory": "4g", "timeout_sec": 600, "ttl_sec": 7200}
    })
}

fn field_of(v: Value) -> String {
    ConfigSchema::new()
        .validate(&v)
        .unwrap_err()
        .field()
        .to_string()
}

fn with(mut v: Value, pointer: &str, new: Value) -> Value {
    *v.pointer_mut(pointer).unwrap() = new;
    v
}

fn without(mut v: Value, key: &str) -> Value {
    v.as_object_mut().unwrap().remove(key);
    v
}

#[test]
fn the_shipped_schema_is_a_valid_draft_2020_12_schema() {
    let schema: Value = serde_json::from_str(SCHEMA_JSON).unwrap();
    assert!(jsonschema::draft202012::meta::is_valid(&schema));
    jsonschema::draft202012::new(&schema).unwrap();
}

#[test]
fn a_valid_preset_passes_and_is_typed() {
    let c = ConfigSchema::new().validate(&valid()).unwrap();
    assert_eq!(c.allowed_tools, vec!["project", "deploy", "respond"]);
    assert_eq!(c.limits.memory_bytes().unwrap(), 4 << 30);
    assert_eq!(
        c.env["ANTHROPIC_API_KEY"],
        EnvValue::FromEnv {
            from_env: "ANTHROPIC_API_KEY".into()
        }
    );
}

#[test]
fn each_required_field_is_named_when_missing() {
    for key in ["id", "name", "image", "agent", "allowed_tools", "limits"] {
        assert_eq!(field_of(without(valid(), key)), key);
    }
}

#[test]
fn an_unknown_top_level_field_is_named() {
    let mut v = valid();
    v["colour"] = json!("blue");
    assert_eq!(field_of(v), "colour");
}

#[test]
fn an_unknown_nested_field_is_named() {
    let v = with(
        valid(),
        "/limits",
        json!({"cpu": 1, "memory": "1g", "timeout_sec": 1, "ttl_sec": 1, "gpu": 1}),
    );
    assert_eq!(field_of(v), "limits.gpu");
}

#[test]
fn a_tool_is_spelt_as_a_group_or_group_action() {
    // Whether the group exists is the tool catalog's question (model::tools).
    let ok = with(
        valid(),
        "/allowed_tools",
        json!(["project", "deploy:status", "review"]),
    );
    assert!(ConfigSchema::new().validate(&ok).is_ok());
    for bad in ["Deploy", "deploy:", "a:b:c", "deploy status"] {
        assert_eq!(
            field_of(with(valid(), "/allowed_tools", json!(["project", bad]))),
            "allowed_tools.1",
            "{bad}"
        );
    }
}

#[test]
fn a_bad_id_is_refused() {
    assert_eq!(field_of(with(valid(), "/id", json!("../etc"))), "id");
    assert_eq!(field_of(with(valid(), "/id", json!("UPPER"))), "id");
}

#[test]
fn a_command_without_the_prompt_placeholder_is_refused() {
    assert_eq!(
        field_of(with(valid(), "/agent/command", json!(["claude"]))),
        "agent.command"
    );
}

#[test]
fn a_command_with_two_prompt_placeholders_is_refused() {
    let v = with(
        valid(),
        "/agent/command",
        json!(["a", "{prompt}", "{prompt}"]),
    );
    assert_eq!(field_of(v), "agent.command");
}

#[test]
fn a_tool_that_is_not_a_name_is_refused() {
    assert_eq!(
        field_of(with(valid(), "/allowed_tools", json!(["project", "Nuke!"]))),
        "allowed_tools.1"
    );
}

#[test]
fn duplicate_tools_are_refused() {
    assert_eq!(
        field_of(with(
            valid(),
            "/allowed_tools",
            json!(["project", "project"])
        )),
        "allowed_tools"
    );
}

#[test]
fn wrong_types_are_named() {
    assert_eq!(
        field_of(with(valid(), "/has_internet", json!("yes"))),
        "has_internet"
    );
    assert_eq!(
        field_of(with(valid(), "/limits/cpu", json!("2"))),
        "limits.cpu"
    );
    assert_eq!(
        field_of(with(valid(), "/limits/timeout_sec", json!(1.5))),
        "limits.timeout_sec"
    );
    assert_eq!(
        field_of(with(valid(), "/system_packages", json!("git"))),
        "system_packages"
    );
}

#[test]
fn limits_out_of_range_are_refused() {
    assert_eq!(
        field_of(with(valid(), "/limits/cpu", json!(0))),
        "limits.cpu"
    );
    assert_eq!(
        field_of(with(valid(), "/limits/timeout_sec", json!(0))),
        "limits.timeout_sec"
    );
    assert_eq!(
        field_of(with(valid(), "/limits/memory", json!("4 gigs"))),
        "limits.memory"
    );
    assert_eq!(
        field_of(with(valid(), "/limits/memory", json!("1k"))),
        "limits.memory"
    );
}

/// Every numeric limit at its edges: tiny, zero, negative zero,
/// subnormal, negative, huge. None may reach the engine as 0 ("no
/// limit") or as a value the runtime refuses at start.
#[test]
fn every_numeric_limit_is_refused_at_its_edges() {
    let cases = [
        ("/limits/cpu", json!(1e-10), "limits.cpu"),
        ("/limits/cpu", json!(0.001), "limits.cpu"),
        ("/limits/cpu", json!(0.0099), "limits.cpu"),
        ("/limits/cpu", json!(0), "limits.cpu"),
        ("/limits/cpu", json!(-0.0), "limits.cpu"),
        ("/limits/cpu", json!(5e-324), "limits.cpu"),
        ("/limits/cpu", json!(-1), "limits.cpu"),
        ("/limits/cpu", json!(64.5), "limits.cpu"),
        ("/limits/cpu", json!(1e308), "limits.cpu"),
        ("/limits/memory", json!("0"), "limits.memory"),
        ("/limits/memory", json!("0g"), "limits.memory"),
        ("/limits/memory", json!("0.0000001g"), "limits.memory"),
        ("/limits/memory", json!("5m"), "limits.memory"),
        ("/limits/memory", json!("-1g"), "limits.memory"),
        ("/limits/memory", json!("1e-10g"), "limits.memory"),
        ("/limits/memory", json!("99999999g"), "limits.memory"),
        ("/limits/pids", json!(0), "limits.pids"),
        ("/limits/pids", json!(-0.0), "limits.pids"),
        ("/limits/pids", json!(-1), "limits.pids"),
        ("/limits/pids", json!(15), "limits.pids"),
        ("/limits/pids", json!(65537), "limits.pids"),
        ("/limits/pids", json!(1e300), "limits.pids"),
        ("/limits/timeout_sec", json!(0), "limits.timeout_sec"),
        ("/limits/timeout_sec", json!(-0.0), "limits.timeout_sec"),
        ("/limits/timeout_sec", json!(5e-324), "limits.timeout_sec"),
        ("/limits/timeout_sec", json!(604801), "limits.timeout_sec"),
        ("/limits/ttl_sec", json!(0), "limits.ttl_sec"),
        ("/limits/ttl_sec", json!(-1), "limits.ttl_sec"),
        ("/limits/ttl_sec", json!(1e20), "limits.ttl_sec"),
    ];
    for (pointer, value, field) in cases {
        let mut v = valid();
        v["limits"]["pids"] = json!(64);
        assert_eq!(
            field_of(with(v, pointer, value.clone())),
            field,
            "{pointer} = {value}"
        );
    }
    // The floors themselves are accepted.
    let mut v = valid();
    v["limits"] =
        json!({"cpu": MIN_CPU, "memory": "6m", "timeout_sec": 1, "ttl_sec": 1, "pids": MIN_PIDS});
    ConfigSchema::new().validate(&v).unwrap();
}

#[test]
fn the_cpu_range_check_holds_for_float_edge_cases() {
    for bad in [
        0.0,
        -0.0,
        5e-324,
        1e-10,
        0.001,
        f64::NAN,
        f64::INFINITY,
        -1.0,
        64.01,
    ] {
        assert!(!cpu_in_range(bad), "{bad}");
    }
    for good in [MIN_CPU, 0.5, 1.0, MAX_CPU] {
        assert!(cpu_in_range(good), "{good}");
    }
}

#[test]
fn env_values_must_be_strings_or_from_env() {
    assert_eq!(field_of(with(valid(), "/env", json!({"A": 1}))), "env.A");
    // The misspelt key itself is named.
    assert_eq!(
        field_of(with(valid(), "/env", json!({"A": {"from": "B"}}))),
        "env.A.from"
    );
    assert_eq!(field_of(with(valid(), "/env", json!({"1BAD": "x"}))), "env");
}

#[test]
fn reserved_env_names_are_refused() {
    assert_eq!(
        field_of(with(valid(), "/env", json!({"ORCHESTRATOR_API_KEY": "x"}))),
        "env.ORCHESTRATOR_API_KEY"
    );
    assert_eq!(
        field_of(with(
            valid(),
            "/env",
            json!({"orchestrator_allowed_tools": "x"})
        )),
        "env.orchestrator_allowed_tools"
    );
}

#[test]
fn names_that_change_how_a_process_starts_are_recognised_in_any_case() {
    for name in [
        "BASH_ENV",
        "ENV",
        "PATH",
        "path",
        "PROMPT_COMMAND",
        "SHELLOPTS",
        "PS4",
        "LD_PRELOAD",
        "ld_library_path",
        "NODE_OPTIONS",
        "PYTHONSTARTUP",
        "PYTHONPATH",
        "GIT_SSH_COMMAND",
        "GIT_CONFIG_GLOBAL",
        "PERL5OPT",
        "RUBYOPT",
        "JAVA_TOOL_OPTIONS",
        "HTTPS_PROXY",
        "http_proxy",
        "ANTHROPIC_BASE_URL",
        "BASH_FUNC_x",
        "HOME",
    ] {
        assert!(is_process_start_env(name), "{name}");
    }
    for name in [
        "MODE",
        "LOG_LEVEL",
        "APP_COLOUR",
        "ANTHROPIC_API_KEY",
        "ENVIRONMENT",
        "TZ",
    ] {
        assert!(!is_process_start_env(name), "{name}");
    }
}

#[test]
fn env_overridable_patterns_never_cover_process_start_names() {
    let mut v = valid();
    v["env_overridable"] = json!(["MODE", "APP_*", "L*", "PATH"]);
    let c = ConfigSchema::new().validate(&v).unwrap();
    assert!(c.env_overridable_allows("MODE"));
    assert!(c.env_overridable_allows("APP_X"));
    assert!(c.env_overridable_allows("LOG_LEVEL"));
    assert!(!c.env_overridable_allows("LD_PRELOAD"), "a pattern");
    assert!(c.env_overridable_allows("PATH"), "stated exactly");
    assert!(!c.env_overridable_allows("MODEX"));
    assert!(!c.env_overridable_allows("mode"), "names are exact");
    for bad in [json!(["*"]), json!(["A B"]), json!(["A**"]), json!(["1A"])] {
        let mut v = valid();
        v["env_overridable"] = bad.clone();
        assert_eq!(
            field_of(v).split('.').next(),
            Some("env_overridable"),
            "{bad}"
        );
    }
    let mut v = valid();
    v["env_overridable"] = json!(["MODE", "ORCHESTRATOR_API_URL"]);
    assert_eq!(field_of(v), "env_overridable.1");
}

#[test]
fn bad_image_references_are_refused() {
    for bad in ["UPPER:latest", "a b", "-x", "x:", "x@sha256:zz"] {
        assert_eq!(
            field_of(with(valid(), "/image", json!(bad))),
            "image",
            "{bad}"
        );
    }
}

#[test]
fn system_package_names_are_checked() {
    assert_eq!(
        field_of(with(valid(), "/system_packages", json!(["git; rm -rf /"]))),
        "system_packages.0"
    );
}

#[test]
fn merge_merges_objects() {
    let m = merge(&valid(), &json!({"limits": {"timeout_sec": 300}}));
    assert_eq!(m["limits"]["timeout_sec"], 300);
    assert_eq!(m["limits"]["memory"], "4g");
}

#[test]
fn merge_replaces_arrays() {
    let m = merge(&valid(), &json!({"allowed_tools": ["respond"]}));
    assert_eq!(m["allowed_tools"], json!(["respond"]));
}

#[test]
fn merge_deletes_on_null() {
    let m = merge(&valid(), &json!({"network": null, "env": {"MODE": null}}));
    assert!(m.get("network").is_none());
    assert!(m["env"].get("MODE").is_none());
    assert!(m["env"].get("ANTHROPIC_API_KEY").is_some());
}

#[test]
fn a_merge_that_breaks_the_schema_is_caught_on_revalidation() {
    let m = merge(&valid(), &json!({"limits": {"memory": null}}));
    assert_eq!(field_of(m), "limits.memory");
}

#[test]
fn the_config_hash_ignores_key_order() {
    let a = json!({"a": 1, "b": {"c": 2, "d": 3}});
    let b = json!({"b": {"d": 3, "c": 2}, "a": 1});
    assert_eq!(config_hash(&a), config_hash(&b));
    assert_ne!(config_hash(&a), config_hash(&json!({"a": 2})));
}

#[test]
fn memory_sizes_parse() {
    assert_eq!(parse_memory("512m").unwrap(), 512 << 20);
    assert_eq!(parse_memory("1.5g").unwrap(), 3 << 29);
    assert!(parse_memory("0g").is_err());
}

//! `workers-spawner presets validate|show` run as the real binary against the
//! repository's presets, skills and templates.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn repo_path(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// Runs the binary with the repo's skills and templates, a clean
/// environment plus `envs`, and `args`.
fn run(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_workers-spawner"));
    cmd.env_clear()
        .arg("--skills-dir")
        .arg(repo_path("skills"))
        .arg("--templates-dir")
        .arg(repo_path("templates"))
        .arg("--presets-dir")
        .arg(repo_path("presets"))
        .args(args)
        .envs(envs.iter().copied());
    cmd.output().expect("the binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A copy of the repo's presets in a temporary directory.
fn presets_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(repo_path("presets")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

fn edit_preset(dir: &Path, id: &str, edit: impl FnOnce(&mut Value)) {
    let path = dir.join(format!("{id}.json"));
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

fn validate(dir: &Path) -> Output {
    run(&["presets", "validate", dir.to_str().unwrap()], &[])
}

#[test]
fn validating_the_repos_presets_succeeds() {
    let out = validate(&repo_path("presets"));
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(stdout(&out).contains("5 presets valid"), "{}", stdout(&out));
}

#[test]
fn validating_an_unchanged_copy_succeeds() {
    let dir = presets_copy();
    let out = validate(dir.path());
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
}

#[test]
fn a_preset_with_a_bad_memory_limit_fails_validation_naming_file_and_field() {
    let dir = presets_copy();
    edit_preset(dir.path(), "po_claude_v1", |v| {
        v["limits"]["memory"] = "lots".into()
    });
    let out = validate(dir.path());
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0));
    assert!(err.contains("po_claude_v1.json"), "{err}");
    assert!(err.contains("limits.memory"), "{err}");
    // The other presets are not blamed.
    assert!(!err.contains("developer_codex_v1.json"), "{err}");
}

#[test]
fn a_preset_without_an_agent_fails_validation_naming_file_and_field() {
    let dir = presets_copy();
    edit_preset(dir.path(), "developer_codex_v1", |v| {
        v.as_object_mut().unwrap().remove("agent");
    });
    let out = validate(dir.path());
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0));
    assert!(err.contains("developer_codex_v1.json"), "{err}");
    assert!(err.contains("field agent"), "{err}");
}

#[test]
fn a_preset_that_is_not_json_fails_validation_naming_the_file() {
    let dir = presets_copy();
    std::fs::write(
        dir.path().join("infra_claude_v1.json"),
        "{\"id\": \"infra_claude_v1\",",
    )
    .unwrap();
    let out = validate(dir.path());
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0));
    assert!(err.contains("infra_claude_v1.json"), "{err}");
    assert!(err.contains("not JSON"), "{err}");
}

#[test]
fn a_preset_whose_id_differs_from_its_file_name_fails_validation() {
    let dir = presets_copy();
    std::fs::rename(
        dir.path().join("po_claude_v1.json"),
        dir.path().join("po_claude_v2.json"),
    )
    .unwrap();
    let out = validate(dir.path());
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0));
    assert!(err.contains("po_claude_v2.json: field id"), "{err}");
}

#[test]
fn a_preset_with_an_unknown_agent_type_fails_validation() {
    let dir = presets_copy();
    edit_preset(dir.path(), "po_claude_v1", |v| {
        v["agent"]["type"] = "nope".into()
    });
    let out = validate(dir.path());
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0));
    assert!(err.contains("po_claude_v1.json"), "{err}");
    assert!(err.contains("agent.type"), "{err}");
}

#[test]
fn showing_a_preset_prints_its_config_and_rendered_files() {
    let out = run(&["presets", "show", "po_claude_v1"], &[]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).expect("stdout is JSON");
    assert_eq!(v["config"]["id"], "po_claude_v1");
    let files = v["files"].as_array().expect("files is an array");
    assert!(!files.is_empty());
    for f in files {
        assert!(f["path"].is_string(), "{f}");
        assert!(f["content"].is_string(), "{f}");
    }
    let paths: Vec<&str> = files.iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert!(paths.contains(&"/workspace/CLAUDE.md"), "{paths:?}");
    assert!(
        paths.contains(&"/home/worker/.claude/settings.json"),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"/home/worker/.claude/skills/respond/SKILL.md"),
        "{paths:?}"
    );
    assert!(
        !paths.contains(&"/home/worker/.claude/skills/admin/SKILL.md"),
        "{paths:?}"
    );
}

#[test]
fn showing_a_preset_never_prints_a_secret_from_the_environment() {
    let secret = "sk-test-secret-123456";
    let out = run(
        &["presets", "show", "po_claude_v1"],
        &[("ANTHROPIC_API_KEY", secret)],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(!stdout(&out).contains(secret));
    assert!(!stderr(&out).contains(secret));
    // The config shows the reference, not the value.
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        v["config"]["env"]["ANTHROPIC_API_KEY"]["from_env"],
        "ANTHROPIC_API_KEY"
    );
}

#[test]
fn showing_an_unknown_preset_fails_naming_worker_config_id() {
    let out = run(&["presets", "show", "nope"], &[]);
    assert_ne!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert!(err.contains("worker_config_id"), "{err}");
    assert!(err.contains("nope"), "{err}");
    assert!(stdout(&out).is_empty());
}

#[test]
fn showing_with_a_widening_override_fails_naming_the_field() {
    let out = run(
        &[
            "presets",
            "show",
            "po_claude_v1",
            "--override",
            r#"{"allowed_tools":["admin"]}"#,
        ],
        &[],
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("allowed_tools"), "{}", stderr(&out));
}

#[test]
fn showing_with_a_narrowing_override_renders_the_narrowed_files() {
    let out = run(
        &[
            "presets",
            "show",
            "po_claude_v1",
            "--override",
            r#"{"allowed_tools":["respond"]}"#,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["config"]["allowed_tools"], serde_json::json!(["respond"]));
    let text = stdout(&out);
    assert!(!text.contains("skills/deploy/SKILL.md"));
    assert!(!text.contains("skills/project/SKILL.md"));
}

#[test]
fn showing_with_an_override_that_is_not_json_fails() {
    let out = run(
        &["presets", "show", "po_claude_v1", "--override", "not json"],
        &[],
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("--override"), "{}", stderr(&out));
    let out = run(
        &["presets", "show", "po_claude_v1", "--override", "[1]"],
        &[],
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("object"), "{}", stderr(&out));
}

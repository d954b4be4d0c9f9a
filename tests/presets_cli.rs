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
    assert!(
        err.contains(
            "developer_codex_v1.json: agent is required but missing: which agent runs and how"
        ),
        "{err}"
    );
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
    assert!(
        err.contains("infra_claude_v1.json: not JSON at line 1, column 25: EOF while parsing a value (the file ends too early: a closing }, ] or \" is missing)"),
        "{err}"
    );
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
    assert!(
        err.contains(r#"po_claude_v2.json: id "po_claude_v1" must equal the file name without .json, "po_claude_v2": change the id or rename the file"#),
        "{err}"
    );
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
    assert!(
        err.contains(r#"po_claude_v1.json: agent.type "nope" is not an agent type: there is no "#),
        "{err}"
    );
    assert!(
        err.contains("(known agent types: claude-code, codex, factory-droid)"),
        "{err}"
    );
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
        v["config"]["model_api"]["anthropic"]["key"]["from_env"],
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

// ------------------------------------------- presets as an admin writes them

/// Runs the binary in `cwd` with a clean environment: no catalog flags
/// unless `args` has them.
fn run_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_workers-spawner"))
        .env_clear()
        .current_dir(cwd)
        .args(args)
        .output()
        .expect("the binary runs")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// `<tmp>/site/{presets,skills,templates}` laid out like the repository
/// (and the compose file), plus an unrelated `<tmp>/elsewhere` to run from.
fn site() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let site = tmp.path().join("site");
    copy_dir(&repo_path("presets"), &site.join("presets"));
    copy_dir(&repo_path("skills"), &site.join("skills"));
    copy_dir(&repo_path("templates"), &site.join("templates"));
    std::fs::create_dir(tmp.path().join("elsewhere")).unwrap();
    tmp
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

#[test]
fn validate_works_from_any_folder_with_skills_and_templates_next_to_the_presets() {
    let tmp = site();
    let presets = tmp.path().join("site/presets");
    let out = run_in(
        &tmp.path().join("elsewhere"),
        &["presets", "validate", presets.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let s = tmp.path().join("site").display().to_string();
    assert_eq!(
        stdout(&out).trim(),
        format!("5 presets valid in {s}/presets (skills: {s}/skills, templates: {s}/templates)")
    );
    // Relative, as given.
    let out = run_in(
        &tmp.path().join("elsewhere"),
        &["presets", "validate", "../site/presets"],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(
        stdout(&out).contains("(skills: ../site/skills, templates: ../site/templates)"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn validate_uses_the_skills_and_templates_the_settings_name() {
    let tmp = site();
    // Presets alone in a folder of their own; the rest named by a flag and
    // by the environment.
    let alone = tmp.path().join("alone/presets");
    copy_dir(&tmp.path().join("site/presets"), &alone);
    let s = tmp.path().join("site");
    let out = Command::new(env!("CARGO_BIN_EXE_workers-spawner"))
        .env_clear()
        .current_dir(tmp.path().join("elsewhere"))
        .env("WORKERS_SPAWNER_TEMPLATES_DIR", s.join("templates"))
        .arg("--skills-dir")
        .arg(s.join("skills"))
        .args(["presets", "validate"])
        .arg(&alone)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    // Nothing named and nothing next door: one line per directory saying
    // how to name it, not a missing skill for every preset.
    let out = run_in(
        &tmp.path().join("elsewhere"),
        &["presets", "validate", alone.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(
        lines(&err),
        vec![
            "./skills: cannot read the skills directory (No such file or directory (os error 2)): give it with --skills-dir DIR, WORKERS_SPAWNER_SKILLS_DIR or skills_dir in the config file",
            "./templates: cannot read the templates directory (No such file or directory (os error 2)): give it with --templates-dir DIR, WORKERS_SPAWNER_TEMPLATES_DIR or templates_dir in the config file",
            "2 problem(s) found",
        ],
        "{err}"
    );
}

/// A preset typed by hand, with the slips people make.
const TYPOS: &str = r#"{
  "id": "typos_v1",
  "name": "Typos",
  "image": "universal-worker-base:latest",
  "agent": { "type": "claude-code", "command": ["claude", "-p"] },
  "alowed_tools": ["project", "deploi"],
  "limit": { "cpu": 1 },
  "has_internet": "yes"
}
"#;

/// Types wrong in a preset that is otherwise fine.
const TYPES: &str = r#"{
  "id": "types_v1",
  "name": "Types",
  "image": "universal-worker-base:latest",
  "agent": { "type": "claude-code", "command": ["claude", "-p", "{prompt}"] },
  "allowed_tools": ["project", "deploi"],
  "limits": { "cpu": "two", "memory": "4 gigs", "timeout_sec": 600, "ttl_sec": 7200 }
}
"#;

#[test]
fn broken_presets_get_one_line_per_problem_with_path_field_and_what_is_valid() {
    let tmp = site();
    let dir = tmp.path().join("site/presets");
    std::fs::write(dir.join("typos_v1.json"), TYPOS).unwrap();
    std::fs::write(dir.join("types_v1.json"), TYPES).unwrap();
    // Copied from another preset and only renamed: the id is stale.
    std::fs::copy(dir.join("po_claude_v1.json"), dir.join("po_claude_v2.json")).unwrap();
    // Edited with a comment, as in other config files.
    std::fs::write(
        dir.join("commented_v1.json"),
        "{\n  \"id\": \"commented_v1\",\n  // the name\n  \"name\": \"x\"\n}\n",
    )
    .unwrap();
    let out = run_in(
        &tmp.path().join("elsewhere"),
        &["presets", "validate", "../site/presets"],
    );
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "");
    let err = stderr(&out);
    let want = [
        r#"../site/presets/commented_v1.json: not JSON at line 3, column 3: key must be a string (keys take double quotes: "name": ...)"#,
        r#"../site/presets/po_claude_v2.json: id "po_claude_v1" must equal the file name without .json, "po_claude_v2": change the id or rename the file"#,
        r#"../site/presets/types_v1.json: allowed_tools.1: "deploi" is not a tool group (known: admin, deploy, engineering, infra, project, respond; did you mean "deploy"?)"#,
        r#"../site/presets/types_v1.json: limits.cpu must be a number, got the string "two" (e.g. 2 or 0.5)"#,
        r#"../site/presets/types_v1.json: limits.memory "4 gigs" is not a size: write e.g. 512m or 4g (did you mean "4g"?)"#,
        r#"../site/presets/typos_v1.json: agent.command must contain the element "{prompt}" exactly once (the prompt is passed as its own argument), e.g. ["claude", "-p", "{prompt}"]"#,
        r#"../site/presets/typos_v1.json: has_internet must be true or false, got the string "yes" (write true without quotes)"#,
        r#"../site/presets/typos_v1.json: alowed_tools is not a known field; did you mean "allowed_tools"? (allowed_tools is required and missing)"#,
        r#"../site/presets/typos_v1.json: limit is not a known field; did you mean "limits"? (limits is required and missing)"#,
        "9 problem(s) found",
    ];
    assert_eq!(lines(&err), want, "{err}");
}

/// A preset that loads but contradicts itself and the daemon's settings.
const CONTRADICTIONS: &str = r#"{
  "id": "pooled_v1",
  "name": "Pooled",
  "image": "universal-worker-base:latest",
  "agent": { "type": "claude-code", "command": ["claude", "-p", "{prompt}"] },
  "allowed_tools": ["respond"],
  "network": "corp",
  "has_internet": false,
  "limits": { "cpu": 1, "memory": "1g", "timeout_sec": 900, "ttl_sec": 600 },
  "pool": { "size": 3 }
}
"#;

#[test]
fn contradictions_are_warnings_that_name_both_fields_and_fail_only_when_strict() {
    let tmp = site();
    let dir = tmp.path().join("site/presets");
    std::fs::write(dir.join("pooled_v1.json"), CONTRADICTIONS).unwrap();
    let args = [
        "--max-concurrent",
        "4",
        "presets",
        "validate",
        "../site/presets",
    ];
    let out = run_in(&tmp.path().join("elsewhere"), &args);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(
        stdout(&out).starts_with("6 presets valid in ../site/presets"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).trim_end().ends_with(", 4 warnings"),
        "{}",
        stdout(&out)
    );
    let err = stderr(&out);
    let f = "../site/presets/pooled_v1.json: warning:";
    let want = [
        format!("{f} limits.ttl_sec (600) is shorter than limits.timeout_sec (900): a session's container lives only ttl_sec, so a task in a session is stopped before its timeout"),
        format!("{f} pool.size is 3 but limits.ttl_sec (600) is not longer than limits.timeout_sec (900): a pool container takes a request only while it has a whole timeout_sec of life left, so this pool never serves one (make ttl_sec longer than timeout_sec)"),
        format!("{f} pool.size (3) is more than the daemon keeps ready: pools hold at most half of max_concurrent (4 / 2 = 2) containers in all, so at most 2 of these are kept"),
        format!(r#"{f} network "corp" is attached while has_internet is false: has_internet only chooses the daemon's own network, so if "corp" has a route out the worker reaches the internet through it"#),
    ];
    assert_eq!(lines(&err), want, "{err}");
    let strict: Vec<&str> = args[..3]
        .iter()
        .copied()
        .chain(["validate", "--strict", "../site/presets"])
        .collect();
    let out = run_in(&tmp.path().join("elsewhere"), &strict);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).ends_with("--strict: warnings count as problems\n"),
        "{}",
        stderr(&out)
    );
}

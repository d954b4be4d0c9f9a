//! The catalog: every preset, skill, agent layout and instruction template
//! the daemon knows, built from file contents handed in by the loader.
//!
//! This module does no I/O: [`Catalog::build`] takes the files' names and
//! bytes. A bad file is reported as a [`CatalogIssue`] and, when a previous
//! catalog had a valid version of it, that version stays in force.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::config::{is_valid_slug, ConfigSchema, WorkerConfig};
use crate::model::tools::{check_grants, parse_group, ToolGroup};

/// Name under which the compiled-in instruction template is registered.
pub const BUILTIN_TEMPLATE: &str = "__builtin__/default.md.tera";
const BUILTIN_TEMPLATE_SOURCE: &str = include_str!("default_instructions.md.tera");

/// Roots inside the container under which rendered files may be placed.
pub const FILE_ROOTS: [&str; 2] = ["/workspace/", "/home/worker/"];

/// What is wrong with a file: (field, message) per problem, each message a
/// sentence that names its field.
pub type Problems = Vec<(Option<String>, String)>;

/// Validates one file's bytes: `Err(problems)` when it is bad.
type FileCheck<'a> = &'a dyn Fn(&[u8]) -> Result<(), Problems>;

/// A validated preset.
#[derive(Debug, Clone, PartialEq)]
pub struct Preset {
    /// The typed config.
    pub config: WorkerConfig,
    /// The config as JSON (the base an override is merged into).
    pub json: Value,
}

/// A skill file (`skills/<tool>.md`).
#[derive(Debug, Clone, PartialEq)]
pub struct Skill {
    /// The tool group it documents.
    pub tool: String,
    /// `description` from its front matter.
    pub description: String,
    /// The whole file, front matter included.
    pub content: String,
}

/// How an agent type lays out its files (`templates/<type>/agent.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentLayout {
    /// Where the instruction file goes (`/workspace/CLAUDE.md`).
    pub instructions_path: String,
    /// Where each skill goes; `{tool}` is replaced by the tool name.
    pub skill_path: String,
    /// Further templated files (e.g. Claude Code's `settings.json`).
    #[serde(default)]
    pub extra_files: Vec<ExtraFile>,
    /// How a session's tasks continue one conversation of the agent; none:
    /// every task starts afresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation: Option<crate::model::conversation::Conversation>,
}

/// A templated file of an agent layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraFile {
    /// Absolute path in the container.
    pub path: String,
    /// Template name relative to the agent type's folder.
    pub template: String,
}

/// A file that was rejected while building the catalog.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CatalogIssue {
    /// The file: `presets/x.json` style (relative to the kind of file) as
    /// [`Catalog::build`] reports it; the loader turns that into the path
    /// as the directory was given (`/etc/ws/presets/x.json`).
    pub file: String,
    /// The offending field, when there is one.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// File contents from which a catalog is built; names are relative to
/// their directory.
#[derive(Debug, Clone, Default)]
pub struct CatalogSources {
    /// `presets/*.json`: (file name, bytes).
    pub presets: Vec<(String, Vec<u8>)>,
    /// `skills/*.md`: (file name, bytes).
    pub skills: Vec<(String, Vec<u8>)>,
    /// `skills/*.json`, the tool groups' declarations: (file name, bytes).
    pub tools: Vec<(String, Vec<u8>)>,
    /// `templates/**`: (relative path with `/`, bytes).
    pub templates: Vec<(String, Vec<u8>)>,
}

/// Everything needed to resolve a request, immutable once built.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// Presets by id.
    pub presets: BTreeMap<String, Preset>,
    /// Skills by tool group.
    pub skills: BTreeMap<String, Skill>,
    /// Tool groups by name (`skills/<group>.json`).
    pub tools: BTreeMap<String, ToolGroup>,
    /// Agent layouts by agent type.
    pub layouts: BTreeMap<String, AgentLayout>,
    pub(crate) tera: Arc<tera::Tera>,
    pub(crate) template_names: BTreeSet<String>,
    /// Last accepted source bytes per file, to keep them when a new version is bad.
    sources: BTreeMap<String, Vec<u8>>,
}

/// Whether `path` is a clean absolute path under one of [`FILE_ROOTS`].
pub fn is_safe_container_path(path: &str) -> bool {
    FILE_ROOTS.iter().any(|r| path.starts_with(r))
        && path.len() <= 1024
        && !path.contains('\0')
        && !path.contains('\\')
        && path[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Parses `---\nname: x\ndescription: y\n---` front matter.
fn front_matter(text: &str) -> Option<BTreeMap<String, String>> {
    let rest = text
        .strip_prefix("---\n")
        .or_else(|| text.strip_prefix("---\r\n"))?;
    let end = rest.find("\n---")?;
    Some(
        rest[..end]
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| {
                let v = v.trim().trim_matches('"').trim_matches('\'');
                (k.trim().to_string(), v.to_string())
            })
            .collect(),
    )
}

fn new_tera() -> tera::Tera {
    let mut tera = tera::Tera::default();
    tera.autoescape_on(vec![]);
    // Templates must never read the daemon's environment (secrets live there).
    tera.register_function("get_env", |_: &std::collections::HashMap<String, Value>| {
        Err(tera::Error::msg(
            "get_env is disabled: templates cannot read the environment",
        ))
    });
    tera
}

impl Catalog {
    /// An empty catalog (only the compiled-in template).
    pub fn empty() -> Self {
        Self::build(&CatalogSources::default(), &ConfigSchema::new(), None).0
    }

    /// Builds a catalog from `sources`. A file that fails validation is
    /// reported; if `previous` held a valid version of it, that version is kept.
    pub fn build(
        sources: &CatalogSources,
        schema: &ConfigSchema,
        previous: Option<&Catalog>,
    ) -> (Catalog, Vec<CatalogIssue>) {
        let mut issues = Vec::new();
        let mut kept: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut issue = |file: String, field: Option<String>, message: String| {
            issues.push(CatalogIssue {
                file,
                field,
                message,
            });
        };
        // Choose, per file, the new bytes if valid, else the previous valid bytes.
        let mut pick = |key: String, bytes: &[u8], check: FileCheck<'_>| -> Option<Vec<u8>> {
            match check(bytes) {
                Ok(()) => Some(bytes.to_vec()),
                Err(problems) => {
                    for (field, message) in problems {
                        issue(key.clone(), field, message);
                    }
                    previous.and_then(|p| p.sources.get(&key).cloned())
                }
            }
        };

        let mut tools = BTreeMap::new();
        for (name, bytes) in &sources.tools {
            let key = format!("skills/{name}");
            let stem = name.strip_suffix(".json").unwrap_or(name);
            let check_tool = |b: &[u8]| parse_group(stem, b).map(|_| ());
            if let Some(good) = pick(key.clone(), bytes, &check_tool) {
                if let Ok(t) = parse_group(stem, &good) {
                    tools.insert(t.name.clone(), t);
                    kept.insert(key, good);
                }
            }
        }

        let mut skills = BTreeMap::new();
        for (name, bytes) in &sources.skills {
            let key = format!("skills/{name}");
            let check_skill = |b: &[u8]| {
                parse_skill(name, b, &tools)
                    .map(|_| ())
                    .map_err(|e| vec![e])
            };
            if let Some(good) = pick(key.clone(), bytes, &check_skill) {
                if let Ok(s) = parse_skill(name, &good, &tools) {
                    skills.insert(s.tool.clone(), s);
                    kept.insert(key, good);
                }
            }
        }

        let mut presets = BTreeMap::new();
        for (name, bytes) in &sources.presets {
            let key = format!("presets/{name}");
            let check_preset = |b: &[u8]| parse_preset(name, b, schema, &tools).map(|_| ());
            if let Some(good) = pick(key.clone(), bytes, &check_preset) {
                if let Ok(p) = parse_preset(name, &good, schema, &tools) {
                    presets.insert(p.config.id.clone(), p);
                    kept.insert(key, good);
                }
            }
        }

        let mut layouts = BTreeMap::new();
        let mut tera = new_tera();
        tera.add_raw_template(BUILTIN_TEMPLATE, BUILTIN_TEMPLATE_SOURCE)
            .expect("the compiled-in template parses");
        let mut template_names = BTreeSet::new();
        for (path, bytes) in &sources.templates {
            let key = format!("templates/{path}");
            if let Some(agent_type) = path.strip_suffix("/agent.json") {
                let check_layout =
                    |b: &[u8]| parse_layout(agent_type, b).map(|_| ()).map_err(|e| vec![e]);
                if let Some(good) = pick(key.clone(), bytes, &check_layout) {
                    if let Ok(l) = parse_layout(agent_type, &good) {
                        layouts.insert(agent_type.to_string(), l);
                        kept.insert(key, good);
                    }
                }
            } else if path.ends_with(".tera") {
                let check_template = |b: &[u8]| {
                    let text = std::str::from_utf8(b)
                        .map_err(|e| vec![(None, format!("not UTF-8: {e}"))])?;
                    new_tera()
                        .add_raw_template(path, text)
                        .map(|_| ())
                        .map_err(|e| vec![(None, tera_error_chain(&e))])
                };
                if let Some(good) = pick(key.clone(), bytes, &check_template) {
                    let text = String::from_utf8_lossy(&good).into_owned();
                    if tera.add_raw_template(path, &text).is_ok() {
                        template_names.insert(path.clone());
                        kept.insert(key, good);
                    }
                }
            }
        }
        // Templates referenced by layouts must exist.
        for (agent_type, layout) in &layouts {
            for extra in &layout.extra_files {
                let name = format!("{agent_type}/{}", extra.template);
                if !template_names.contains(&name) {
                    issues.push(CatalogIssue {
                        file: format!("templates/{agent_type}/agent.json"),
                        field: Some("extra_files.template".into()),
                        message: format!(
                            "extra_files.template: the layout names template {:?}, but there is no templates/{name}",
                            extra.template
                        ),
                    });
                }
            }
        }
        let catalog = Catalog {
            presets,
            skills,
            tools,
            layouts,
            tera: Arc::new(tera),
            template_names,
            sources: kept,
        };
        (catalog, issues)
    }

    /// Whether the catalog holds a template of this name.
    pub fn has_template(&self, name: &str) -> bool {
        self.template_names.contains(name)
    }
}

/// Parses and validates one preset file; every problem found is reported.
pub fn parse_preset(
    file_name: &str,
    bytes: &[u8],
    schema: &ConfigSchema,
    tools: &BTreeMap<String, ToolGroup>,
) -> Result<Preset, Problems> {
    let id = file_name.strip_suffix(".json").ok_or_else(|| {
        vec![(
            None,
            format!("{file_name:?} is not a preset file: a preset file's name ends in .json"),
        )]
    })?;
    if !is_valid_slug(id) {
        return Err(vec![(
            Some("id".into()),
            format!(
                "id: the file name {file_name:?} does not give a valid preset id: name the file <id>.json with lowercase letters, digits, \"_\", \".\" and \"-\""
            ),
        )]);
    }
    let json: Value = serde_json::from_slice(bytes)
        .map_err(|e| vec![(None, crate::model::diagnose::json_error(bytes, &e))])?;
    // The tools must exist in the tool catalog (the schema knows only
    // their spelling); with no catalog at all its directory's own problem
    // says why.
    let unknown_tool = || -> Option<(Option<String>, String)> {
        if tools.is_empty() {
            return None;
        }
        let named: Vec<String> = json
            .get("allowed_tools")?
            .as_array()?
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_string())
            .collect();
        let (i, message) = check_grants(&named, tools)?;
        Some((
            Some(format!("allowed_tools.{i}")),
            format!("allowed_tools.{i}: {message}"),
        ))
    };
    let config = schema.validate(&json).map_err(|e| {
        let mut problems: Problems = e
            .errors
            .into_iter()
            .map(|e| (Some(e.field), e.message))
            .collect();
        if let Some(p) = unknown_tool() {
            if !problems.iter().any(|(f, _)| f == &p.0) {
                problems.insert(0, p);
            }
        }
        problems
    })?;
    if let Err((field, message)) =
        crate::model::workspace::check_config(config.workspace.as_ref(), &config.artifacts)
    {
        return Err(vec![(Some(field.clone()), format!("{field}: {message}"))]);
    }
    if config.id != id {
        return Err(vec![(
            Some("id".into()),
            format!(
                "id {:?} must equal the file name without .json, {id:?}: change the id or rename the file",
                config.id
            ),
        )]);
    }
    if let Some(p) = unknown_tool() {
        return Err(vec![p]);
    }
    if let Some((field, message)) = config
        .agent
        .conversation
        .as_ref()
        .and_then(|c| c.declared())
        .and_then(|c| c.problem())
    {
        return Err(vec![(
            Some(format!("agent.{field}")),
            format!("agent.{field}: {message}"),
        )]);
    }
    Ok(Preset { config, json })
}

fn parse_skill(
    file_name: &str,
    bytes: &[u8],
    tools: &BTreeMap<String, ToolGroup>,
) -> Result<Skill, (Option<String>, String)> {
    let stem = file_name
        .strip_suffix(".md")
        .ok_or((None, "a skill file must end in .md".to_string()))?;
    if !tools.contains_key(stem) {
        return Err((
            None,
            format!("{stem:?} is not a declared tool group: declare it in skills/{stem}.json beside this file"),
        ));
    }
    let tool = stem.to_string();
    let content =
        String::from_utf8(bytes.to_vec()).map_err(|e| (None, format!("not UTF-8: {e}")))?;
    let fm = front_matter(&content).ok_or((
        None,
        "a skill must start with front matter (---, name:, description:, ---)".to_string(),
    ))?;
    if fm.get("name").map(String::as_str) != Some(stem) {
        return Err((
            Some("name".into()),
            format!("front matter name must be {stem:?}"),
        ));
    }
    let description = fm
        .get("description")
        .filter(|d| !d.is_empty())
        .ok_or((
            Some("description".into()),
            "front matter needs a description".to_string(),
        ))?
        .clone();
    Ok(Skill {
        tool,
        description,
        content,
    })
}

fn parse_layout(agent_type: &str, bytes: &[u8]) -> Result<AgentLayout, (Option<String>, String)> {
    if agent_type.contains('/') || !is_valid_slug(agent_type) {
        return Err((None, format!("{agent_type:?} is not a valid agent type")));
    }
    let layout: AgentLayout =
        serde_json::from_slice(bytes).map_err(|e| (None, format!("invalid agent.json: {e}")))?;
    if !is_safe_container_path(&layout.instructions_path) {
        return Err((
            Some("instructions_path".into()),
            unsafe_path(&layout.instructions_path),
        ));
    }
    if !layout.skill_path.contains("{tool}")
        || !is_safe_container_path(&layout.skill_path.replace("{tool}", "x"))
    {
        return Err((
            Some("skill_path".into()),
            format!(
                "{} (and it must contain {{tool}})",
                unsafe_path(&layout.skill_path)
            ),
        ));
    }
    for extra in &layout.extra_files {
        if !is_safe_container_path(&extra.path) {
            return Err((Some("extra_files.path".into()), unsafe_path(&extra.path)));
        }
        if extra.template.contains("..") || extra.template.starts_with('/') {
            return Err((
                Some("extra_files.template".into()),
                format!("template name {:?} must be relative", extra.template),
            ));
        }
    }
    if let Some((field, message)) = layout.conversation.as_ref().and_then(|c| c.problem()) {
        return Err((Some(field.into()), message));
    }
    Ok(layout)
}

fn unsafe_path(p: &str) -> String {
    format!(
        "path {p:?} must be a clean absolute path under {}",
        FILE_ROOTS.join(" or ")
    )
}

/// Tera's error with its causes, on one line.
pub fn tera_error_chain(e: &tera::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_paths_must_stay_under_their_roots() {
        assert!(is_safe_container_path("/workspace/CLAUDE.md"));
        assert!(is_safe_container_path(
            "/home/worker/.claude/skills/x/SKILL.md"
        ));
        for bad in [
            "/etc/passwd",
            "/workspace/../etc/passwd",
            "workspace/x",
            "/workspace//x",
            "/workspace/./x",
            "/workspace/x\0",
            "/home/worker/..",
        ] {
            assert!(!is_safe_container_path(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_skill_needs_front_matter_naming_its_tool() {
        let ok = b"---\nname: deploy\ndescription: Ship it.\n---\nbody";
        let tools = crate::model::tools::shipped();
        assert_eq!(
            parse_skill("deploy.md", ok, &tools).unwrap().description,
            "Ship it."
        );
        assert!(parse_skill("deploy.md", b"no front matter", &tools).is_err());
        // No skills/nuke.json: not a declared group.
        let e = parse_skill("nuke.md", ok, &tools).unwrap_err().1;
        assert!(e.contains("skills/nuke.json"), "{e}");
        assert!(parse_skill("project.md", ok, &tools).is_err());
    }

    #[test]
    fn a_layout_that_writes_outside_the_roots_is_refused() {
        let bad =
            br#"{"instructions_path": "/etc/CLAUDE.md", "skill_path": "/workspace/{tool}.md"}"#;
        assert_eq!(
            parse_layout("x", bad).unwrap_err().0.as_deref(),
            Some("instructions_path")
        );
        let bad =
            br#"{"instructions_path": "/workspace/A.md", "skill_path": "/workspace/../{tool}.md"}"#;
        assert_eq!(
            parse_layout("x", bad).unwrap_err().0.as_deref(),
            Some("skill_path")
        );
        assert!(parse_layout("../x", b"{}").is_err());
    }

    #[test]
    fn a_preset_whose_id_differs_from_its_file_name_is_refused() {
        let schema = ConfigSchema::new();
        let json = br#"{"id":"a","name":"A","image":"x","agent":{"type":"t","command":["{prompt}"]},"allowed_tools":[],"limits":{"cpu":1,"memory":"1g","timeout_sec":1,"ttl_sec":1}}"#;
        assert!(parse_preset("a.json", json, &schema, &crate::model::tools::shipped()).is_ok());
        assert_eq!(
            parse_preset("b.json", json, &schema, &crate::model::tools::shipped()).unwrap_err(),
            vec![(
                Some("id".to_string()),
                r#"id "a" must equal the file name without .json, "b": change the id or rename the file"#
                    .to_string()
            )]
        );
    }

    #[test]
    fn every_problem_of_a_preset_is_its_own_issue() {
        let schema = ConfigSchema::new();
        let bad = br#"{"id":"a","name":"A","image":"x","agent":{"type":"t","command":["{prompt}"]},"allowed_tools":["Deploi!"],"limits":{"cpu":"two","memory":"1g","timeout_sec":1,"ttl_sec":1}}"#;
        let sources = CatalogSources {
            presets: vec![("a.json".into(), bad.to_vec())],
            ..Default::default()
        };
        let (_, issues) = Catalog::build(&sources, &schema, None);
        let fields: Vec<_> = issues.iter().map(|i| i.field.as_deref()).collect();
        assert_eq!(fields, vec![Some("allowed_tools.0"), Some("limits.cpu")]);
        assert!(issues.iter().all(|i| i.file == "presets/a.json"));
        assert_eq!(
            issues[1].message,
            r#"limits.cpu must be a number, got the string "two" (e.g. 2 or 0.5)"#
        );
    }

    #[test]
    fn a_preset_that_is_not_json_is_reported_with_line_and_column() {
        let schema = ConfigSchema::new();
        let problems = parse_preset(
            "a.json",
            b"{\n  \"id\": \"a\",\n}\n",
            &schema,
            &crate::model::tools::shipped(),
        )
        .unwrap_err();
        assert_eq!(
            problems,
            vec![(
                None,
                "not JSON at line 3, column 1: trailing comma (JSON allows no comma after the last entry of an object or list)".to_string()
            )]
        );
    }

    #[test]
    fn a_broken_file_keeps_its_last_valid_version() {
        let schema = ConfigSchema::new();
        let good = br#"{"id":"a","name":"A","image":"x","agent":{"type":"t","command":["{prompt}"]},"allowed_tools":[],"limits":{"cpu":1,"memory":"1g","timeout_sec":1,"ttl_sec":1}}"#;
        let first = CatalogSources {
            presets: vec![("a.json".into(), good.to_vec())],
            ..Default::default()
        };
        let (c1, issues) = Catalog::build(&first, &schema, None);
        assert!(issues.is_empty());
        let second = CatalogSources {
            presets: vec![("a.json".into(), b"{broken".to_vec())],
            ..Default::default()
        };
        let (c2, issues) = Catalog::build(&second, &schema, Some(&c1));
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].file, "presets/a.json");
        assert_eq!(c2.presets["a"], c1.presets["a"]);
        // A deleted file is gone even if it used to be valid.
        let (c3, _) = Catalog::build(&CatalogSources::default(), &schema, Some(&c2));
        assert!(c3.presets.is_empty());
    }
}

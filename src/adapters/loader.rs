//! Reads the presets, skills and templates directories from disk into
//! [`CatalogSources`], and keeps the live catalog current as files change.
//!
//! This is the only module that reads those directories.

use std::path::{Path, PathBuf};

use crate::model::catalog::{Catalog, CatalogIssue, CatalogSources};
use crate::model::config::ConfigSchema;

/// Where the catalog's files live.
#[derive(Debug, Clone)]
pub struct CatalogDirs {
    /// `presets/`
    pub presets: PathBuf,
    /// `skills/`
    pub skills: PathBuf,
    /// `templates/`
    pub templates: PathBuf,
}

impl CatalogDirs {
    /// The path of a catalog file as its directory was given (relative to
    /// the current folder or absolute): `presets/x.json` (the form
    /// [`Catalog::build`] reports) becomes `<presets dir>/x.json`. A name
    /// of another form is returned as it is.
    pub fn path_of(&self, key: &str) -> String {
        let (dir, rest) = if let Some(r) = key.strip_prefix("presets/") {
            (&self.presets, r)
        } else if let Some(r) = key.strip_prefix("skills/") {
            (&self.skills, r)
        } else if let Some(r) = key.strip_prefix("templates/") {
            (&self.templates, r)
        } else {
            return key.to_string();
        };
        if rest.is_empty() {
            dir.display().to_string()
        } else {
            dir.join(rest).display().to_string()
        }
    }

    /// `issues` with their files as paths (see [`CatalogDirs::path_of`]).
    pub fn with_paths(&self, issues: Vec<CatalogIssue>) -> Vec<CatalogIssue> {
        issues
            .into_iter()
            .map(|i| CatalogIssue {
                file: self.path_of(&i.file),
                ..i
            })
            .collect()
    }
}

/// Largest file read into the catalog; bigger ones are reported, not read.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

fn read_flat(
    dir: &Path,
    ext: &str,
    issues: &mut Vec<CatalogIssue>,
    label: &str,
) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            let setting = format!("{label}_dir");
            issues.push(CatalogIssue {
                file: dir.display().to_string(),
                field: None,
                message: format!(
                    "cannot read the {label} directory ({e}): give it with --{flag} DIR, WORKERS_SPAWNER_{env} or {setting} in the config file",
                    flag = setting.replace('_', "-"),
                    env = setting.to_uppercase(),
                ),
            });
            return out;
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // Editors' temp files and ConfigMap internals (`..data`) are not ours.
        if name.starts_with('.') || !name.ends_with(ext) {
            continue;
        }
        let path = entry.path();
        if let Some(bytes) = read_file(&path, &path.display().to_string(), issues) {
            out.push((name, bytes));
        }
    }
    out.sort();
    out
}

fn read_file(path: &Path, shown: &str, issues: &mut Vec<CatalogIssue>) -> Option<Vec<u8>> {
    // metadata() follows symlinks, as a ConfigMap mount needs.
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => None,
        Ok(m) if m.len() > MAX_FILE_BYTES => {
            issues.push(CatalogIssue {
                file: shown.to_string(),
                field: None,
                message: format!(
                    "the file is {} bytes, the limit is {MAX_FILE_BYTES}: it was not read",
                    m.len()
                ),
            });
            None
        }
        Ok(_) => match std::fs::read(path) {
            Ok(b) => Some(b),
            Err(e) => {
                issues.push(CatalogIssue {
                    file: shown.to_string(),
                    field: None,
                    message: format!("cannot read the file: {e}"),
                });
                None
            }
        },
        Err(_) => None,
    }
}

fn read_templates(dir: &Path, issues: &mut Vec<CatalogIssue>) -> Vec<(String, Vec<u8>)> {
    let mut out = read_flat(dir, ".tera", issues, "templates");
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !entry.path().is_dir() {
                continue;
            }
            let mut sub_issues = Vec::new();
            for (file, bytes) in read_flat(&entry.path(), "", &mut sub_issues, "templates") {
                if file.ends_with(".tera") || file == "agent.json" {
                    out.push((format!("{name}/{file}"), bytes));
                }
            }
            issues.extend(sub_issues);
        }
    }
    out.sort();
    out
}

/// Reads every catalog file; unreadable directories and files are reported.
pub fn read_sources(dirs: &CatalogDirs) -> (CatalogSources, Vec<CatalogIssue>) {
    let mut issues = Vec::new();
    let sources = CatalogSources {
        presets: read_flat(&dirs.presets, ".json", &mut issues, "presets"),
        skills: read_flat(&dirs.skills, ".md", &mut issues, "skills"),
        // Tool declarations live beside their skills (an unreadable
        // directory is reported once, above).
        tools: read_flat(&dirs.skills, ".json", &mut Vec::new(), "skills"),
        templates: read_templates(&dirs.templates, &mut issues),
    };
    (sources, issues)
}

/// Reads the directories and builds a catalog over `previous`. Every
/// issue names its file by its path (see [`CatalogDirs::path_of`]).
pub fn load(
    dirs: &CatalogDirs,
    schema: &ConfigSchema,
    previous: Option<&Catalog>,
) -> (Catalog, Vec<CatalogIssue>) {
    let (sources, mut issues) = read_sources(dirs);
    let (catalog, more) = Catalog::build(&sources, schema, previous);
    issues.extend(dirs.with_paths(more));
    (catalog, issues)
}

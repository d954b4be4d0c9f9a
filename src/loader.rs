//! Reads the presets, skills and templates directories from disk into
//! [`CatalogSources`], and keeps the live catalog current as files change.
//!
//! This is the only module that reads those directories.

use std::path::{Path, PathBuf};

use crate::catalog::{Catalog, CatalogIssue, CatalogSources};
use crate::config::ConfigSchema;

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

/// Largest file read into the catalog; bigger ones are reported, not read.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

fn read_flat(
    dir: &Path,
    ext: &str,
    issues: &mut Vec<CatalogIssue>,
    label: &str,
) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        issues.push(CatalogIssue {
            file: dir.display().to_string(),
            field: None,
            message: format!("cannot read the {label} directory"),
        });
        return out;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // Editors' temp files and ConfigMap internals (`..data`) are not ours.
        if name.starts_with('.') || !name.ends_with(ext) {
            continue;
        }
        if let Some(bytes) = read_file(&entry.path(), &format!("{label}/{name}"), issues) {
            out.push((name, bytes));
        }
    }
    out.sort();
    out
}

fn read_file(path: &Path, key: &str, issues: &mut Vec<CatalogIssue>) -> Option<Vec<u8>> {
    // metadata() follows symlinks, as a ConfigMap mount needs.
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => None,
        Ok(m) if m.len() > MAX_FILE_BYTES => {
            issues.push(CatalogIssue {
                file: key.to_string(),
                field: None,
                message: format!("file is {} bytes, the limit is {MAX_FILE_BYTES}", m.len()),
            });
            None
        }
        Ok(_) => match std::fs::read(path) {
            Ok(b) => Some(b),
            Err(e) => {
                issues.push(CatalogIssue {
                    file: key.to_string(),
                    field: None,
                    message: e.to_string(),
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
        templates: read_templates(&dirs.templates, &mut issues),
    };
    (sources, issues)
}

/// Reads the directories and builds a catalog over `previous`.
pub fn load(
    dirs: &CatalogDirs,
    schema: &ConfigSchema,
    previous: Option<&Catalog>,
) -> (Catalog, Vec<CatalogIssue>) {
    let (sources, mut issues) = read_sources(dirs);
    let (catalog, more) = Catalog::build(&sources, schema, previous);
    issues.extend(more);
    (catalog, issues)
}

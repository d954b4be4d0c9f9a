//! Derived images: a preset's `system_packages` and `bootstrap_commands`
//! are baked once into an image tagged by the hash of what goes into it
//! (base image id, packages, commands), never re-run on each spawn.
//! Concurrent spawns that need the same image wait for one build.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use crate::config::WorkerConfig;
use crate::docker::{Engine, EngineError};
use crate::metrics::Metrics;

/// Repository of derived images.
pub const DERIVED_REPO: &str = "ws-derived";
/// Label on every derived image and its build's intermediate images.
pub const BUILD_LABEL: &str = "io.workers-spawner.build";

/// Why a derived image could not be had.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The base image is missing.
    #[error("image {0:?} does not exist on this engine")]
    BaseMissing(String),
    /// The build failed; the last lines of its output say why.
    #[error("building the derived image failed: {message}\n{}", .last_lines.join("\n"))]
    Failed {
        /// Docker's error message.
        message: String,
        /// The build's last output lines.
        last_lines: Vec<String>,
    },
    /// Docker trouble.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Whether a config needs a derived image.
pub fn needs_build(c: &WorkerConfig) -> bool {
    !c.system_packages.is_empty() || !c.bootstrap_commands.is_empty()
}

/// The tag of the derived image for `base_id` plus the config's setup.
pub fn derived_tag(base_id: &str, c: &WorkerConfig) -> String {
    let mut h = Sha256::new();
    h.update(base_id.as_bytes());
    h.update(b"\0");
    h.update(serde_json::to_vec(&c.system_packages).expect("serialize"));
    h.update(b"\0");
    h.update(serde_json::to_vec(&c.bootstrap_commands).expect("serialize"));
    format!("{DERIVED_REPO}:{}", &hex::encode(h.finalize())[..24])
}

/// The Dockerfile of a derived image. Commands use the exec form with
/// JSON-escaped arguments, so no preset text can break out of its line.
pub fn dockerfile(base_id: &str, base_name: &str, c: &WorkerConfig, build_id: &str) -> String {
    let q = |s: &str| serde_json::to_string(s).expect("serialize");
    let mut d = format!(
        "FROM {base_id}\nLABEL {BUILD_LABEL}={} io.workers-spawner.derived-from={}\nUSER root\n",
        q(build_id),
        q(base_name)
    );
    if !c.system_packages.is_empty() {
        let cmd = format!(
            "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {} && rm -rf /var/lib/apt/lists/*",
            c.system_packages.join(" ")
        );
        d.push_str(&format!("RUN [\"/bin/sh\", \"-c\", {}]\n", q(&cmd)));
    }
    for cmd in &c.bootstrap_commands {
        d.push_str(&format!("RUN [\"/bin/sh\", \"-c\", {}]\n", q(cmd)));
    }
    d.push_str(&format!("USER {}\n", crate::docker::WORKER_USER));
    d
}

fn context_tar(dockerfile: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(dockerfile.len() as u64);
    h.set_mode(0o644);
    let _ = b.append_data(&mut h, "Dockerfile", dockerfile.as_bytes());
    b.into_inner().unwrap_or_default()
}

/// Builds derived images, one build per tag at a time.
#[derive(Clone)]
pub struct ImageBuilder {
    engine: Engine,
    metrics: Arc<Metrics>,
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl ImageBuilder {
    /// A builder on `engine`.
    pub fn new(engine: Engine, metrics: Arc<Metrics>) -> Self {
        ImageBuilder {
            engine,
            metrics,
            locks: Arc::default(),
        }
    }

    /// The image to run for `c`: its own image, or the derived one (built
    /// now if missing; build output goes to `on_line`).
    pub async fn image_for(
        &self,
        c: &WorkerConfig,
        mut on_line: impl FnMut(String) + Send,
    ) -> Result<String, BuildError> {
        if !needs_build(c) {
            return Ok(c.image.clone());
        }
        let docker = self.engine.client();
        let base = match docker.inspect_image(&c.image).await {
            Ok(i) => i,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => return Err(BuildError::BaseMissing(c.image.clone())),
            Err(e) => return Err(EngineError::Api(e).into()),
        };
        let base_id = base.id.unwrap_or_default();
        let tag = derived_tag(&base_id, c);
        let lock = self
            .locks
            .lock()
            .expect("build locks")
            .entry(tag.clone())
            .or_default()
            .clone();
        let _guard = lock.lock().await;
        if self.engine.image_exists(&tag).await? {
            return Ok(tag);
        }
        let build_id = tag.rsplit(':').next().unwrap_or_default().to_string();
        let df = dockerfile(&base_id, &c.image, c, &build_id);
        let opts = bollard::query_parameters::BuildImageOptions {
            dockerfile: "Dockerfile".into(),
            t: Some(tag.clone()),
            rm: true,
            forcerm: true,
            ..Default::default()
        };
        self.metrics.image_builds.inc();
        on_line(format!("building {tag} from {}", c.image));
        let mut stream = docker.build_image(
            opts,
            None,
            Some(bollard::body_full(context_tar(&df).into())),
        );
        let mut last: Vec<String> = Vec::new();
        let mut failure = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(s) = info.stream {
                        for line in s.lines().filter(|l| !l.trim().is_empty()) {
                            last.push(line.to_string());
                            if last.len() > 20 {
                                last.remove(0);
                            }
                            on_line(line.to_string());
                        }
                    }
                    if let Some(e) = info.error {
                        failure = Some(e);
                    }
                }
                Err(e) => {
                    failure = Some(e.to_string());
                    break;
                }
            }
        }
        if let Some(message) = failure {
            self.prune_failed(&build_id).await;
            return Err(BuildError::Failed {
                message,
                last_lines: last,
            });
        }
        if !self.engine.image_exists(&tag).await? {
            self.prune_failed(&build_id).await;
            return Err(BuildError::Failed {
                message: "the build ended without producing the image".into(),
                last_lines: last,
            });
        }
        Ok(tag)
    }

    /// Removes the dangling intermediate images a failed build left.
    async fn prune_failed(&self, build_id: &str) {
        let mut filters = HashMap::new();
        filters.insert("dangling".to_string(), vec!["true".to_string()]);
        filters.insert(
            "label".to_string(),
            vec![format!("{BUILD_LABEL}={build_id}")],
        );
        let opts = bollard::query_parameters::PruneImagesOptions {
            filters: Some(filters),
        };
        if let Err(e) = self.engine.client().prune_images(Some(opts)).await {
            tracing::warn!(error = %e, "pruning a failed build's images failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigSchema;
    use serde_json::json;

    fn config(packages: &[&str], commands: &[&str]) -> WorkerConfig {
        ConfigSchema::new()
            .validate(&json!({
                "id": "p", "name": "P", "image": "base:1",
                "system_packages": packages, "bootstrap_commands": commands,
                "agent": {"type": "t", "command": ["{prompt}"]},
                "allowed_tools": [],
                "limits": {"cpu": 1, "memory": "1g", "timeout_sec": 1, "ttl_sec": 1}
            }))
            .unwrap()
    }

    #[test]
    fn the_tag_depends_on_base_packages_and_commands() {
        let a = derived_tag("sha256:1", &config(&["git"], &[]));
        assert_eq!(a, derived_tag("sha256:1", &config(&["git"], &[])));
        assert_ne!(a, derived_tag("sha256:2", &config(&["git"], &[])));
        assert_ne!(a, derived_tag("sha256:1", &config(&["curl"], &[])));
        assert_ne!(a, derived_tag("sha256:1", &config(&["git"], &["true"])));
    }

    #[test]
    fn commands_cannot_break_out_of_their_dockerfile_line() {
        let d = dockerfile(
            "sha256:1",
            "base:1",
            &config(&[], &["echo hi\nUSER root\nRUN evil"]),
            "b",
        );
        let runs: Vec<&str> = d.lines().filter(|l| l.starts_with("RUN")).collect();
        assert_eq!(runs.len(), 1);
        assert!(d.lines().last().unwrap().starts_with("USER 1000"));
    }
}

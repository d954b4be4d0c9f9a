//! Derived images. Two kinds, both made once and reused by every later
//! spawn, both tagged `ws-derived:…` by the hash of what goes into them:
//!
//! - *setup images*: a preset's `system_packages` and `bootstrap_commands`
//!   baked into the base image (a Docker build), never re-run per spawn;
//! - *prepared images*: every image a worker runs on, the setup image or the
//!   preset's own, gets the prepared layer of [`crate::model::prepare`] (the shim,
//!   the worker's folders, a user), put in with the archive API into a
//!   container that never starts and committed; no shell, no registry and
//!   nothing from the admin is needed.
//!
//! Concurrent spawns that need the same image wait for one build. Which
//! prepared image a name stands for is remembered and checked again (one
//! image inspect) when older than [`RECHECK`], so a re-tagged image is
//! prepared anew.

use crate::model::outcome::ErrorCode;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use crate::adapters::engine::{Engine, EngineError};
use crate::metrics::Metrics;
use crate::model::config::WorkerConfig;

/// Repository of derived images.
pub use crate::model::prepare::DERIVED_REPO;
/// Label on every derived image and its build's intermediate images.
pub const BUILD_LABEL: &str = "io.workers-spawner.build";

/// Label on a preparation container (never started; removed once the
/// prepared image is committed, or as stale).
pub const PREPARING_LABEL: &str = "io.workers-spawner.preparing";

/// Age after which a preparation container is taken as left by a dead daemon.
pub const STALE_PREPARATION: Duration = Duration::from_secs(600);

/// How long a name's prepared image is used without checking the name again.
pub const RECHECK: Duration = Duration::from_secs(10);

/// The most of an image's `/workspace` or `/home/worker` that is re-owned
/// by the worker when the image is prepared; a larger folder keeps its
/// owners (only the folder itself becomes the worker's).
pub const REOWN_LIMIT: usize = 256 << 20;

/// Why a derived image could not be had.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The base image is missing.
    #[error(
        "image {0:?} does not exist on this engine (nothing is pulled: build or load it first)"
    )]
    BaseMissing(String),
    /// The image is for another platform.
    #[error("{0}")]
    Platform(String),
    /// Preparing the image failed.
    #[error("preparing image {image:?} for workers failed: {message}")]
    Prepare {
        /// The image.
        image: String,
        /// What went wrong.
        message: String,
    },
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

impl BuildError {
    /// The result's error code and field for this failure.
    pub fn code_and_field(&self) -> (ErrorCode, Option<&'static str>) {
        match self {
            BuildError::BaseMissing(_) => (ErrorCode::ImageNotFound, Some("image")),
            BuildError::Platform(_) => (ErrorCode::ImagePlatform, Some("image")),
            BuildError::Prepare { .. } => (ErrorCode::ImagePrepareFailed, Some("image")),
            BuildError::Failed { .. } => (ErrorCode::ImageBuildFailed, Some("system_packages")),
            BuildError::Engine(_) => (ErrorCode::DockerError, None),
        }
    }

    /// Whether trying again later may succeed (the engine was unreachable).
    pub fn is_transient(&self) -> bool {
        matches!(self, BuildError::Engine(e) if e.is_transient())
    }

    /// The result's error for this failure.
    pub fn info(&self) -> crate::model::protocol::ErrorInfo {
        let (code, field) = self.code_and_field();
        code.info(field, self.to_string())
    }
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
    d.push_str(&format!("USER {}\n", crate::model::container::WORKER_USER));
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

/// The image a worker runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerImage {
    /// The prepared image the container is created from.
    pub run: String,
    /// What events and results name: the preset's image, or its setup image.
    pub named: String,
}

/// A name's prepared image, as last checked.
#[derive(Debug, Clone)]
struct Prepared {
    base_id: String,
    tag: String,
    checked: Instant,
}

/// Builds derived images, one build per tag at a time.
#[derive(Clone)]
pub struct ImageBuilder {
    engine: Engine,
    metrics: Arc<Metrics>,
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    prepared: Arc<Mutex<HashMap<String, Prepared>>>,
}

impl ImageBuilder {
    /// A builder on `engine`.
    pub fn new(engine: Engine, metrics: Arc<Metrics>) -> Self {
        ImageBuilder {
            engine,
            metrics,
            locks: Arc::default(),
            prepared: Arc::default(),
        }
    }

    fn lock_for(&self, tag: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .expect("build locks")
            .entry(tag.to_string())
            .or_default()
            .clone()
    }

    /// The image to run for `c`: its own image or its setup image, prepared
    /// for workers (built now if missing; build output goes to `on_line`).
    pub async fn image_for(
        &self,
        c: &WorkerConfig,
        on_line: impl FnMut(String) + Send,
    ) -> Result<String, BuildError> {
        Ok(self.worker_image(c, on_line).await?.run)
    }

    /// Like [`ImageBuilder::image_for`], with the name results show.
    pub async fn worker_image(
        &self,
        c: &WorkerConfig,
        on_line: impl FnMut(String) + Send,
    ) -> Result<WorkerImage, BuildError> {
        let named = if needs_build(c) {
            self.setup_image(c, on_line).await?
        } else {
            c.image.clone()
        };
        let run = self.prepared_image(&named).await?;
        Ok(WorkerImage { run, named })
    }

    /// Forgets what `image` (a name or a prepared tag) was prepared as, so
    /// the next spawn checks again: after the engine said a prepared image
    /// is gone.
    pub fn forget(&self, image: &str) {
        self.prepared
            .lock()
            .expect("prepared lock")
            .retain(|name, p| name != image && p.tag != image);
    }

    /// The prepared image of the image named `name`.
    pub async fn prepared_image(&self, name: &str) -> Result<String, BuildError> {
        if let Some(p) = self.prepared.lock().expect("prepared lock").get(name) {
            if p.checked.elapsed() < RECHECK {
                return Ok(p.tag.clone());
            }
        }
        let info = match self.engine.client().inspect_image(name).await {
            Ok(i) => i,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => return Err(BuildError::BaseMissing(name.to_string())),
            Err(e) => return Err(EngineError::Api(e).into()),
        };
        let base_id = info.id.clone().unwrap_or_default();
        let labels = info
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default();
        // A prepared image (named by an admin, or a setup image built on
        // one) needs nothing more.
        let tag = if labels
            .get(crate::model::prepare::PREPARED_LABEL)
            .map(String::as_str)
            == Some(crate::model::prepare::RECIPE)
        {
            name.to_string()
        } else {
            let known = self
                .prepared
                .lock()
                .expect("prepared lock")
                .get(name)
                .filter(|p| p.base_id == base_id)
                .map(|p| p.tag.clone());
            match known {
                Some(t) => t,
                None => {
                    if let Some(why) = crate::model::prepare::platform_problem(
                        name,
                        info.os.as_deref().unwrap_or_default(),
                        info.architecture.as_deref().unwrap_or_default(),
                    ) {
                        return Err(BuildError::Platform(why));
                    }
                    let tag = crate::model::prepare::prepared_tag(
                        &base_id,
                        crate::model::delivery::SHIM_BINARY,
                    );
                    let lock = self.lock_for(&tag);
                    let _guard = lock.lock().await;
                    if !self.engine.image_exists(&tag).await? {
                        self.prepare(name, &base_id, &info, &tag).await?;
                    }
                    tag
                }
            }
        };
        self.prepared.lock().expect("prepared lock").insert(
            name.to_string(),
            Prepared {
                base_id,
                tag: tag.clone(),
                checked: Instant::now(),
            },
        );
        Ok(tag)
    }

    /// Commits the prepared layer onto `base_id` as `tag`: a container that
    /// never starts, the layer put in with the archive API, a commit.
    async fn prepare(
        &self,
        name: &str,
        base_id: &str,
        info: &bollard::models::ImageInspect,
        tag: &str,
    ) -> Result<(), BuildError> {
        let started = Instant::now();
        let fail = |message: String| BuildError::Prepare {
            image: name.to_string(),
            message,
        };
        let docker = self.engine.client();
        let short = tag.rsplit(':').next().unwrap_or_default().to_string();
        // Other daemons on the engine may prepare the same image at the same
        // moment: each uses a container of its own and commits the same
        // content to the same tag, whichever lands last.
        let container = format!(
            "ws-prepare-{short}-{}",
            &crate::model::worker_key::new_key()[4..12]
        );
        let config = info.config.clone().unwrap_or_default();
        let mut labels = config.labels.clone().unwrap_or_default();
        labels.insert(BUILD_LABEL.to_string(), short.clone());
        labels.insert(
            "io.workers-spawner.derived-from".to_string(),
            name.to_string(),
        );
        labels.insert(
            crate::model::prepare::PREPARED_LABEL.to_string(),
            crate::model::prepare::RECIPE.to_string(),
        );
        let mut container_labels = labels.clone();
        container_labels.insert(PREPARING_LABEL.to_string(), short.clone());
        let no_command = config.cmd.as_ref().is_none_or(|c| c.is_empty())
            && config.entrypoint.as_ref().is_none_or(|c| c.is_empty());
        let body = bollard::models::ContainerCreateBody {
            image: Some(base_id.to_string()),
            // An image without any command cannot even be created; the
            // container never starts, and a worker always brings its own.
            cmd: no_command.then(|| vec![crate::model::delivery::SHIM_PATH.to_string()]),
            labels: Some(container_labels),
            network_disabled: Some(true),
            host_config: Some(bollard::models::HostConfig {
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.remove_stale_preparations().await;
        let id = match self.engine.create(&container, body).await {
            Ok(id) => id,
            Err(e) if e.is_transient() => return Err(e.into()),
            Err(e) => return Err(fail(format!("creating its preparation container: {e}"))),
        };
        let result = async {
            let files = crate::model::prepare::ImageFiles {
                passwd: self.read_file(&id, "/etc/passwd").await?,
                group: self.read_file(&id, "/etc/group").await?,
                has_tmp: self.download(&id, "/tmp", 1 << 20).await?.is_some(),
                workspace: self
                    .download(&id, crate::model::render::WORKSPACE, REOWN_LIMIT)
                    .await?,
                home: self
                    .download(&id, crate::model::render::HOME, REOWN_LIMIT)
                    .await?,
            };
            let layer = crate::model::prepare::layer(&files, crate::model::delivery::SHIM_BINARY)
                .map_err(|e| fail(format!("building its layer: {e}")))?;
            let opts = bollard::query_parameters::UploadToContainerOptions {
                path: "/".to_string(),
                ..Default::default()
            };
            docker
                .upload_to_container(&id, Some(opts), bollard::body_full(layer.into()))
                .await
                .map_err(|e| fail(format!("writing its layer: {e}")))?;
            let (repo, t) = tag.split_once(':').unwrap_or((tag, "latest"));
            let opts = bollard::query_parameters::CommitContainerOptions {
                container: Some(id.clone()),
                repo: Some(repo.to_string()),
                tag: Some(t.to_string()),
                comment: Some(format!("workers-spawner {}", crate::model::prepare::RECIPE)),
                pause: false,
                ..Default::default()
            };
            docker
                .commit_container(opts, bollard::models::ContainerConfig::default())
                .await
                .map_err(|e| fail(format!("committing it: {e}")))?;
            Ok::<(), BuildError>(())
        }
        .await;
        let _ = self.engine.remove(&id).await;
        result?;
        self.metrics.image_preparations.inc();
        tracing::info!(
            image = name,
            prepared = tag,
            ms = started.elapsed().as_millis() as u64,
            "image prepared for workers"
        );
        Ok(())
    }

    /// Removes preparation containers older than [`STALE_PREPARATION`]:
    /// left by a daemon that died while preparing (a live preparation takes
    /// seconds).
    async fn remove_stale_preparations(&self) {
        let mut filters = HashMap::new();
        filters.insert("label".to_string(), vec![PREPARING_LABEL.to_string()]);
        let opts = bollard::query_parameters::ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let Ok(list) = self.engine.client().list_containers(Some(opts)).await else {
            return;
        };
        let now = chrono::Utc::now().timestamp();
        for c in list {
            let old = c
                .created
                .is_some_and(|t| now - t > STALE_PREPARATION.as_secs() as i64);
            if let (true, Some(id)) = (old, c.id) {
                let _ = self.engine.remove(&id).await;
            }
        }
    }

    /// A file of a container (`None` when it has none, or it is no file).
    async fn read_file(&self, id: &str, path: &str) -> Result<Option<Vec<u8>>, BuildError> {
        let Some(tar) = self.download(id, path, 4 << 20).await? else {
            return Ok(None);
        };
        let mut a = tar::Archive::new(tar.as_slice());
        let Ok(mut entries) = a.entries() else {
            return Ok(None);
        };
        match entries.next() {
            Some(Ok(mut e)) if e.header().entry_type().is_file() => {
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut data).map_err(|e| BuildError::Prepare {
                    image: id.to_string(),
                    message: format!("reading {path}: {e}"),
                })?;
                Ok(Some(data))
            }
            _ => Ok(None),
        }
    }

    /// Docker's archive of `path` in a container, `None` when the path does
    /// not exist or its archive is larger than `limit` bytes.
    async fn download(
        &self,
        id: &str,
        path: &str,
        limit: usize,
    ) -> Result<Option<Vec<u8>>, BuildError> {
        let (tar, too_big) = self.engine.download(id, path, limit as u64).await?;
        if too_big {
            tracing::warn!(
                container = id,
                path,
                limit,
                "folder too large to re-own; only the folder itself becomes the worker's"
            );
        }
        Ok(tar)
    }

    /// The setup image of `c` (built now if missing).
    async fn setup_image(
        &self,
        c: &WorkerConfig,
        mut on_line: impl FnMut(String) + Send,
    ) -> Result<String, BuildError> {
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
        let lock = self.lock_for(&tag);
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
    use crate::model::config::ConfigSchema;
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

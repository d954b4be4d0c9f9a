//! Docker: the container of a worker, from create to remove, through the
//! Engine API (bollard). This is the only module that talks to Docker.
//!
//! It never touches a container without the managed-by label, and every
//! container it creates carries the labels of PROTOCOL.md section 5, which
//! are the durable record of the work (see `ARCHITECTURE.md`).

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, KillContainerOptions, ListContainersOptions,
    LogsOptions, RemoveContainerOptions, StopContainerOptions, UploadToContainerOptions,
    WaitContainerOptions,
};
use bollard::Docker;
use futures_util::{Stream, StreamExt};

use crate::model::container::{
    files_tar_at, icc_enabled, labels, upload_groups, worker_network_options, WORKER_USER,
};
use crate::model::render::RenderedFile;

/// A Docker failure.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The image does not exist locally (nothing is pulled).
    #[error("image {0:?} does not exist on this engine")]
    ImageNotFound(String),
    /// A container of that name already exists.
    #[error("container {0} already exists")]
    Conflict(String),
    /// The container does not exist.
    #[error("container {0} does not exist")]
    NotFound(String),
    /// Writing to the container's attached stdin failed.
    #[error("writing the worker's files to its stdin: {0}")]
    Stdin(#[from] std::io::Error),
    /// Anything else from the engine or the transport.
    #[error("docker: {0}")]
    Api(#[from] bollard::errors::Error),
}

/// The write side of a container's attached stdin.
pub type Stdin = std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>;

impl EngineError {
    /// Whether retrying later may help (transport or server trouble).
    pub fn is_transient(&self) -> bool {
        match self {
            EngineError::Api(bollard::errors::Error::DockerResponseServerError {
                status_code,
                ..
            }) => *status_code >= 500,
            EngineError::Api(_) | EngineError::Stdin(_) => true,
            _ => false,
        }
    }
}

fn status_of(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// A workers' network as the daemon uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerNetwork {
    /// The host's address on it (where the gateway listens).
    pub gateway: String,
    /// Its bridge interface.
    pub bridge: String,
    /// Whether its containers reach each other (a network created before
    /// the daemon turned that off keeps its options).
    pub icc: bool,
}

/// The facts of a container that matter to the supervisor.
#[derive(Debug, Clone, Default)]
pub struct ContainerFacts {
    /// Container id.
    pub id: String,
    /// Name without the leading `/`.
    pub name: String,
    /// Whether it runs now.
    pub running: bool,
    /// Whether it was ever started.
    pub started: bool,
    /// Exit code, when it exited.
    pub exit_code: Option<i64>,
    /// Whether the OOM killer struck.
    pub oom_killed: bool,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// RFC 3339 start time.
    pub started_at: Option<String>,
    /// RFC 3339 finish time.
    pub finished_at: Option<String>,
    /// Image.
    pub image: String,
    /// The worker's gateway key, read back from its env (inspect only).
    pub api_key: Option<String>,
    /// Its addresses on the networks it is attached to (inspect only).
    pub ips: Vec<String>,
    /// The source of its egress folder's bind mount (inspect only).
    pub egress_folder: Option<String>,
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    /// stdout
    Stdout,
    /// stderr
    Stderr,
}

impl OutputStream {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
        }
    }
}

/// Output of a process: chunks tagged with their stream.
pub type ExecOutput =
    std::pin::Pin<Box<dyn Stream<Item = Result<(OutputStream, bytes::Bytes), EngineError>> + Send>>;

/// Chunks of a multiplexed Docker output stream, tagged with their stream.
fn output_chunks(
    s: impl Stream<Item = Result<bollard::container::LogOutput, bollard::errors::Error>> + Send,
) -> impl Stream<Item = Result<(OutputStream, bytes::Bytes), EngineError>> + Send {
    s.filter_map(|r| async move {
        use bollard::container::LogOutput;
        match r {
            Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                Some(Ok((OutputStream::Stdout, message)))
            }
            Ok(LogOutput::StdErr { message }) => Some(Ok((OutputStream::Stderr, message))),
            Ok(LogOutput::StdIn { .. }) => None,
            Err(e) => Some(Err(e.into())),
        }
    })
}

use crate::model::docker_host::DockerTarget;

/// The Docker engine.
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    /// `NanoCpus` of every CPU the engine has (it refuses more).
    max_nano_cpus: Option<i64>,
}

impl Engine {
    /// Connects to `target` (`model::docker_host`) and negotiates the API
    /// version; fails fast when the engine is unreachable.
    pub async fn connect(target: &DockerTarget) -> Result<Engine, EngineError> {
        const T: u64 = 120;
        let docker = match target {
            DockerTarget::Local => Docker::connect_with_local_defaults()?,
            DockerTarget::Unix(path) => {
                Docker::connect_with_unix(&path.to_string_lossy(), T, bollard::API_DEFAULT_VERSION)?
            }
            DockerTarget::Http(addr) => {
                Docker::connect_with_http(addr, T, bollard::API_DEFAULT_VERSION)?
            }
            DockerTarget::Tls {
                addr,
                ca,
                cert,
                key,
            } => Docker::connect_with_ssl(addr, key, cert, ca, T, bollard::API_DEFAULT_VERSION)?,
        };
        let docker = docker
            .with_timeout(Duration::from_secs(T))
            .negotiate_version()
            .await?;
        docker.ping().await?;
        let max_nano_cpus = match docker.info().await {
            Ok(i) => i.ncpu.filter(|n| *n > 0).map(|n| n * 1_000_000_000),
            Err(_) => None,
        };
        Ok(Engine {
            docker,
            max_nano_cpus,
        })
    }

    /// `GET /_ping`.
    pub async fn ping(&self) -> Result<(), EngineError> {
        self.docker.ping().await?;
        Ok(())
    }

    /// The bollard client, for the few callers (image builds) that need more.
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// Whether `image` exists locally.
    pub async fn image_exists(&self, image: &str) -> Result<bool, EngineError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) if status_of(&e) == Some(404) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates the container; returns its id. A CPU limit above what the
    /// engine has becomes all of its CPUs: the engine refuses more, and a
    /// preset written for a bigger machine should still run here.
    pub async fn create(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> Result<String, EngineError> {
        let mut body = body;
        if let (Some(max), Some(hc)) = (self.max_nano_cpus, body.host_config.as_mut()) {
            if let Some(n) = hc.nano_cpus.as_mut() {
                *n = (*n).min(max);
            }
        }
        let image = body.image.clone().unwrap_or_default();
        let opts = CreateContainerOptions {
            name: Some(name.to_string()),
            ..Default::default()
        };
        match self.docker.create_container(Some(opts), body).await {
            Ok(r) => Ok(r.id),
            Err(e) if status_of(&e) == Some(409) => Err(EngineError::Conflict(name.to_string())),
            Err(e) if status_of(&e) == Some(404) => Err(EngineError::ImageNotFound(image)),
            Err(e) => Err(e.into()),
        }
    }

    /// Extracts `files` into the container, each group at its writable
    /// root: Docker refuses an extraction at `/` of a read-only root even
    /// when every file lands in a volume.
    pub async fn upload(&self, id: &str, files: &[RenderedFile]) -> Result<(), EngineError> {
        self.upload_grouped(id, upload_groups(files)).await
    }

    /// Like [`Engine::upload`], in one extraction at `/` (one mount of the
    /// container's filesystem instead of one per writable root): only for
    /// a container whose root is writable.
    pub async fn upload_at_root(
        &self,
        id: &str,
        files: &[RenderedFile],
    ) -> Result<(), EngineError> {
        self.upload_grouped(id, vec![("/".to_string(), files.to_vec())])
            .await
    }

    async fn upload_grouped(
        &self,
        id: &str,
        groups: Vec<(String, Vec<RenderedFile>)>,
    ) -> Result<(), EngineError> {
        for (root, group) in groups {
            let put = |at: &str| {
                let tar = files_tar_at(at, &group);
                let opts = UploadToContainerOptions {
                    path: at.to_string(),
                    ..Default::default()
                };
                self.docker
                    .upload_to_container(id, Some(opts), bollard::body_full(tar.into()))
            };
            match put(&root).await {
                Ok(()) => {}
                // An image without that directory: extract at `/`, which creates it.
                Err(e) if status_of(&e) == Some(404) && root != "/" => put("/").await?,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Extracts the tar `archive` in the container at `at` (a created or
    /// stopped container too: the archive API needs no process in it).
    pub async fn upload_tar(
        &self,
        id: &str,
        at: &str,
        archive: Vec<u8>,
    ) -> Result<(), EngineError> {
        let opts = UploadToContainerOptions {
            path: at.to_string(),
            ..Default::default()
        };
        self.docker
            .upload_to_container(id, Some(opts), bollard::body_full(archive.into()))
            .await
            .map_err(|e| self.not_found(e, id))
    }

    /// The tar of `path` in the container (running or stopped), or `None`
    /// when the path is not there or the tar grows past `limit` bytes
    /// (then the second value says so).
    pub async fn download(
        &self,
        id: &str,
        path: &str,
        limit: u64,
    ) -> Result<(Option<Vec<u8>>, bool), EngineError> {
        let opts = bollard::query_parameters::DownloadFromContainerOptions {
            path: path.to_string(),
        };
        let mut stream = self.docker.download_from_container(id, Some(opts));
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(b) => {
                    out.extend_from_slice(&b);
                    if out.len() as u64 > limit {
                        return Ok((None, true));
                    }
                }
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => return Ok((None, false)),
                Err(e) => return Err(self.not_found(e, id)),
            }
        }
        Ok((Some(out), false))
    }

    /// Writes the tar of `path` in the container (running or stopped) to
    /// the file `to`, up to `limit` bytes; the bytes written, `None` when
    /// the path is not there, or `Some(Err(limit))` past the limit.
    pub async fn download_to_file(
        &self,
        id: &str,
        path: &str,
        limit: u64,
        to: &std::path::Path,
    ) -> Result<Option<Result<u64, u64>>, EngineError> {
        use tokio::io::AsyncWriteExt;
        let opts = bollard::query_parameters::DownloadFromContainerOptions {
            path: path.to_string(),
        };
        let mut file = tokio::fs::File::create(to)
            .await
            .map_err(EngineError::Stdin)?;
        let mut stream = self.docker.download_from_container(id, Some(opts));
        let mut written = 0u64;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(b) => {
                    written += b.len() as u64;
                    if written > limit {
                        return Ok(Some(Err(limit)));
                    }
                    file.write_all(&b).await.map_err(EngineError::Stdin)?;
                }
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => return Ok(None),
                Err(e) => return Err(self.not_found(e, id)),
            }
        }
        file.flush().await.map_err(EngineError::Stdin)?;
        Ok(Some(Ok(written)))
    }

    /// Attaches to the container's stdin (created with `open_stdin`),
    /// stdout and stderr; the end of the stdin attachment closes the
    /// process's stdin, the output ends with the process.
    pub async fn attach(&self, id: &str) -> Result<(Stdin, ExecOutput), EngineError> {
        let opts = bollard::query_parameters::AttachContainerOptions {
            stdin: true,
            stdout: true,
            stderr: true,
            stream: true,
            logs: false,
            ..Default::default()
        };
        let r = self
            .docker
            .attach_container(id, Some(opts))
            .await
            .map_err(|e| self.not_found(e, id))?;
        Ok((r.input, Box::pin(output_chunks(r.output))))
    }

    /// Writes `payload` to an attached stdin and closes it.
    pub async fn deliver(mut stdin: Stdin, payload: &[u8]) -> Result<(), EngineError> {
        use tokio::io::AsyncWriteExt;
        stdin.write_all(payload).await?;
        stdin.flush().await?;
        stdin.shutdown().await?;
        Ok(())
    }

    /// Starts the container.
    pub async fn start(&self, id: &str) -> Result<(), EngineError> {
        self.docker
            .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
            .await
            .map_err(|e| self.not_found(e, id))
    }

    fn not_found(&self, e: bollard::errors::Error, id: &str) -> EngineError {
        if status_of(&e) == Some(404) {
            EngineError::NotFound(id.to_string())
        } else {
            e.into()
        }
    }

    /// Follows the container's output (from the beginning, or the last
    /// `tail` lines) as chunks.
    pub fn logs(
        &self,
        id: &str,
        follow: bool,
        tail: Option<usize>,
    ) -> impl Stream<Item = Result<(OutputStream, bytes::Bytes), EngineError>> + Send + 'static
    {
        let opts = LogsOptions {
            follow,
            stdout: true,
            stderr: true,
            tail: tail.map(|n| n.to_string()).unwrap_or_else(|| "all".into()),
            ..Default::default()
        };
        output_chunks(self.docker.logs(id, Some(opts)))
    }

    /// Waits until the container is not running; returns its exit code.
    pub async fn wait(&self, id: &str) -> Result<i64, EngineError> {
        let mut s = self.docker.wait_container(id, None::<WaitContainerOptions>);
        match s.next().await {
            Some(Ok(r)) => Ok(r.status_code),
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(self.not_found(e, id)),
            None => Ok(self.inspect(id).await?.exit_code.unwrap_or(-1)),
        }
    }

    /// Inspects the container.
    pub async fn inspect(&self, id: &str) -> Result<ContainerFacts, EngineError> {
        let r = self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .map_err(|e| self.not_found(e, id))?;
        let state = r.state.unwrap_or_default();
        let config = r.config.unwrap_or_default();
        let ips = r
            .network_settings
            .and_then(|n| n.networks)
            .map(|nets| {
                nets.into_values()
                    .filter_map(|e| e.ip_address)
                    .filter(|ip| !ip.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let started_at = state.started_at.filter(|s| !s.starts_with("0001-"));
        let egress_folder = r.mounts.unwrap_or_default().into_iter().find_map(|m| {
            (m.destination.as_deref() == Some(crate::model::egress::SOCKET_DIR))
                .then_some(m.source)
                .flatten()
        });
        Ok(ContainerFacts {
            egress_folder,
            id: r.id.unwrap_or_default(),
            name: r
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            running: state.running.unwrap_or(false),
            started: started_at.is_some(),
            exit_code: if state.running.unwrap_or(false) {
                None
            } else {
                state.exit_code
            },
            oom_killed: state.oom_killed.unwrap_or(false),
            labels: config.labels.unwrap_or_default(),
            started_at,
            finished_at: state.finished_at.filter(|s| !s.starts_with("0001-")),
            api_key: config
                .env
                .unwrap_or_default()
                .iter()
                .find_map(|e| e.strip_prefix("ORCHESTRATOR_API_KEY=").map(str::to_string)),
            image: config.image.unwrap_or_default(),
            ips,
        })
    }

    /// SIGTERM, then SIGKILL after `grace`; returns once it is stopped.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<(), EngineError> {
        let opts = StopContainerOptions {
            t: Some(grace.as_secs().max(1) as i32),
            ..Default::default()
        };
        match self.docker.stop_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(304) => Ok(()),
            Err(e) => Err(self.not_found(e, id)),
        }
    }

    /// Sends `signal` to the container's main process.
    pub async fn kill(&self, id: &str, signal: &str) -> Result<(), EngineError> {
        let opts = KillContainerOptions {
            signal: signal.to_string(),
        };
        match self.docker.kill_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(409) => Ok(()), // not running
            Err(e) => Err(self.not_found(e, id)),
        }
    }

    /// Removes the container (forcefully, with its anonymous volumes).
    pub async fn remove(&self, id: &str) -> Result<(), EngineError> {
        let opts = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self.docker.remove_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) if status_of(&e) == Some(409) => Ok(()), // removal already in progress
            Err(e) => Err(e.into()),
        }
    }

    /// Starts `argv` inside a running container as the worker user; returns
    /// the exec id and its output stream (which ends when the process does).
    pub async fn exec(
        &self,
        id: &str,
        argv: Vec<String>,
        env: Vec<String>,
    ) -> Result<(String, ExecOutput), EngineError> {
        use bollard::exec::{CreateExecOptions, StartExecResults};
        let opts = CreateExecOptions {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(argv),
            env: Some(env),
            user: Some(WORKER_USER.to_string()),
            working_dir: Some(crate::model::render::WORKSPACE.to_string()),
            ..Default::default()
        };
        let created = self
            .docker
            .create_exec(id, opts)
            .await
            .map_err(|e| self.not_found(e, id))?;
        match self.docker.start_exec(&created.id, None).await? {
            StartExecResults::Attached { output, .. } => {
                Ok((created.id, Box::pin(output_chunks(output))))
            }
            StartExecResults::Detached => Ok((created.id, Box::pin(futures_util::stream::empty()))),
        }
    }

    /// Exit code of a finished exec (`None` while it runs).
    pub async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>, EngineError> {
        let r = self.docker.inspect_exec(exec_id).await?;
        if r.running.unwrap_or(false) {
            return Ok(None);
        }
        Ok(r.exit_code)
    }

    /// Runs `argv` to completion and returns its exit code and stdout.
    pub async fn exec_output(&self, id: &str, argv: &[&str]) -> Result<(i64, String), EngineError> {
        let (exec_id, mut out) = self
            .exec(id, argv.iter().map(|s| s.to_string()).collect(), Vec::new())
            .await?;
        let mut text = Vec::new();
        while let Some(item) = out.next().await {
            if let Ok((OutputStream::Stdout, b)) = item {
                text.extend_from_slice(&b);
            }
        }
        let code = self.exec_exit_code(&exec_id).await?.unwrap_or(-1);
        Ok((code, String::from_utf8_lossy(&text).into_owned()))
    }

    /// Creates the bridge network `name` if missing (`internal` = no route
    /// out; inter-container communication off, see
    /// [`worker_network_options`]) and returns what the daemon needs of it.
    pub async fn ensure_network(
        &self,
        name: &str,
        internal: bool,
    ) -> Result<WorkerNetwork, EngineError> {
        use bollard::models::NetworkCreateRequest;
        let mut found = self.networks_named(name).await?;
        if found.is_empty() {
            let mut labels = HashMap::new();
            labels.insert(labels::MANAGED.to_string(), "true".to_string());
            let req = NetworkCreateRequest {
                name: name.to_string(),
                driver: Some("bridge".to_string()),
                internal: Some(internal),
                labels: Some(labels),
                options: Some(worker_network_options()),
                ..Default::default()
            };
            match self.docker.create_network(req).await {
                Ok(_) => {}
                Err(e) if status_of(&e) == Some(409) => {}
                Err(e) => return Err(e.into()),
            }
            found = self.networks_named(name).await?;
        }
        // Docker does not refuse a second network of the same name: daemons
        // starting at the same moment may each create one, after which the
        // name is ambiguous. Every daemon keeps the same one (the lowest id)
        // and removes the others while they are unused.
        found.sort();
        let Some(keep) = found.first().cloned() else {
            return Err(EngineError::NotFound(name.to_string()));
        };
        for extra in &found[1..] {
            if self.docker.remove_network(extra).await.is_ok() {
                tracing::info!(network = name, id = %extra, "removed a duplicate worker network");
            }
        }
        let net = self
            .docker
            .inspect_network(
                &keep,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await?;
        if net.internal.unwrap_or(false) != internal {
            tracing::warn!(
                network = name,
                internal,
                "existing network has the other internal setting"
            );
        }
        let bridge = net
            .options
            .as_ref()
            .and_then(|o| o.get("com.docker.network.bridge.name").cloned())
            .unwrap_or_else(|| {
                format!(
                    "br-{}",
                    &net.id
                        .clone()
                        .unwrap_or_default()
                        .chars()
                        .take(12)
                        .collect::<String>()
                )
            });
        let icc = icc_enabled(&net.options.clone().unwrap_or_default());
        let gateway = net
            .ipam
            .and_then(|i| i.config)
            .and_then(|c| c.into_iter().find_map(|c| c.gateway))
            .unwrap_or_default();
        Ok(WorkerNetwork {
            gateway,
            bridge,
            icc,
        })
    }

    /// Ids of the networks named exactly `name`.
    async fn networks_named(&self, name: &str) -> Result<Vec<String>, EngineError> {
        let mut filters = HashMap::new();
        filters.insert("name".to_string(), vec![name.to_string()]);
        let opts = bollard::query_parameters::ListNetworksOptions {
            filters: Some(filters),
        };
        let list = self.docker.list_networks(Some(opts)).await?;
        // The name filter matches substrings.
        Ok(list
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
            .filter_map(|n| n.id)
            .collect())
    }

    /// Connects a (created) container to another network.
    pub async fn connect_network(&self, network: &str, container: &str) -> Result<(), EngineError> {
        let req = bollard::models::NetworkConnectRequest {
            container: Some(container.to_string()),
            ..Default::default()
        };
        self.docker
            .connect_network(network, req)
            .await
            .map_err(|e| {
                if status_of(&e) == Some(404) {
                    EngineError::NotFound(network.to_string())
                } else {
                    e.into()
                }
            })
    }

    /// The names of every managed container with an egress socket, of any
    /// stream prefix (the sockets' folder may be shared), running or not.
    pub async fn egress_container_names(
        &self,
    ) -> Result<std::collections::HashSet<String>, EngineError> {
        let list = self
            .list_with_labels(vec![
                format!("{}=true", labels::MANAGED),
                crate::model::egress::LABEL.to_string(),
            ])
            .await?;
        Ok(list
            .into_iter()
            .filter_map(|c| c.names.and_then(|n| n.into_iter().next()))
            .map(|n| n.trim_start_matches('/').to_string())
            .collect())
    }

    /// Every container, running or not, carrying each label filter of
    /// `wanted` (`key=value` or `key`).
    async fn list_with_labels(
        &self,
        wanted: Vec<String>,
    ) -> Result<Vec<bollard::models::ContainerSummary>, EngineError> {
        let opts = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("label".to_string(), wanted)])),
            ..Default::default()
        };
        Ok(self.docker.list_containers(Some(opts)).await?)
    }

    /// Every container with the managed label of `prefix`, running or not.
    pub async fn list_managed(&self, prefix: &str) -> Result<Vec<ContainerFacts>, EngineError> {
        self.list_labelled(prefix, &[]).await
    }

    /// Every managed container of `prefix` that also carries each label of
    /// `with` (key, value), whatever its name: labels, not names, say whose
    /// work a container holds (containers of older daemons have names of
    /// an older scheme).
    pub async fn list_labelled(
        &self,
        prefix: &str,
        with: &[(&str, &str)],
    ) -> Result<Vec<ContainerFacts>, EngineError> {
        let mut wanted = vec![
            format!("{}=true", labels::MANAGED),
            format!("{}={prefix}", labels::PREFIX),
        ];
        wanted.extend(with.iter().map(|(k, v)| format!("{k}={v}")));
        let list = self.list_with_labels(wanted).await?;
        Ok(list
            .into_iter()
            .map(|c| {
                let state = c.state.map(|s| s.to_string()).unwrap_or_default();
                ContainerFacts {
                    id: c.id.unwrap_or_default(),
                    name: c
                        .names
                        .and_then(|n| n.into_iter().next())
                        .unwrap_or_default()
                        .trim_start_matches('/')
                        .to_string(),
                    running: state == "running",
                    started: state != "created",
                    labels: c.labels.unwrap_or_default(),
                    image: c.image.unwrap_or_default(),
                    ..Default::default()
                }
            })
            // Belt and braces: never trust a filter with someone else's container.
            .filter(|c| c.labels.get(labels::MANAGED).map(String::as_str) == Some("true"))
            .filter(|c| {
                with.iter()
                    .all(|(k, v)| c.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect())
    }

    /// Session volume `name` as it is: its labels, or `None` when there is
    /// no such volume.
    pub async fn volume(&self, name: &str) -> Result<Option<HashMap<String, String>>, EngineError> {
        match self.docker.inspect_volume(name).await {
            Ok(v) => Ok(Some(v.labels)),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates volume `name` with `labels` (local driver). Creating a name
    /// that exists returns the existing volume, labels unchanged.
    pub async fn create_volume(
        &self,
        name: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), EngineError> {
        let opts = bollard::models::VolumeCreateOptions {
            name: Some(name.to_string()),
            driver: Some("local".to_string()),
            labels: Some(labels),
            ..Default::default()
        };
        self.docker.create_volume(opts).await?;
        Ok(())
    }

    /// Removes volume `name` (gone already: fine). Fails while a container,
    /// even a stopped one, uses it.
    pub async fn remove_volume(&self, name: &str) -> Result<(), EngineError> {
        let opts = bollard::query_parameters::RemoveVolumeOptions { force: false };
        match self.docker.remove_volume(name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Every managed volume of `prefix` carrying each label of `with`:
    /// (name, labels).
    pub async fn list_volumes(
        &self,
        prefix: &str,
        with: &[(&str, &str)],
    ) -> Result<Vec<(String, HashMap<String, String>)>, EngineError> {
        let mut wanted = vec![
            format!("{}=true", labels::MANAGED),
            format!("{}={prefix}", labels::PREFIX),
        ];
        wanted.extend(with.iter().map(|(k, v)| format!("{k}={v}")));
        let opts = bollard::query_parameters::ListVolumesOptions {
            filters: Some(HashMap::from([("label".to_string(), wanted)])),
        };
        let list = self.docker.list_volumes(Some(opts)).await?;
        Ok(list
            .volumes
            .unwrap_or_default()
            .into_iter()
            .filter(|v| v.labels.get(labels::MANAGED).map(String::as_str) == Some("true"))
            .filter(|v| v.labels.get(labels::PREFIX).map(String::as_str) == Some(prefix))
            .map(|v| (v.name, v.labels))
            .collect())
    }

    /// Whether any container, running or not, mounts volume `name`.
    pub async fn volume_in_use(&self, name: &str) -> Result<bool, EngineError> {
        let opts = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "volume".to_string(),
                vec![name.to_string()],
            )])),
            ..Default::default()
        };
        Ok(!self.docker.list_containers(Some(opts)).await?.is_empty())
    }
}

//! One task of a session, run by its session's loop: triage, the
//! session's container (the known one, an adopted one, or a new one), the
//! exec under its own timeout, and the in-container killer that stops it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::OwnedSemaphorePermit;

use super::{entry_key, End, Session, SessionContainer};
use crate::adapters::bus::Entry;
use crate::adapters::engine::{ContainerFacts, EngineError};
use crate::model::container::{
    create_body, labels, session_container_name, session_labels, session_mounts,
    session_volume_names, volume_labels, FileDelivery, LaunchContext,
};
use crate::model::conversation::{self, IdSource, Turn, AGENT_SESSION, NO_ID, RECORD_PATH};
use crate::model::delivery::turn_command;
use crate::model::outcome::{self, ErrorCode, Interruption};
use crate::model::protocol::{parse_spawn_request, ErrorInfo, EventType, ResultRecord, Status};
use crate::model::render::{RenderedFile, HOME};
use crate::model::spec::WorkerSpec;
use crate::model::triage::{Decision, Disposition, Facts, Inflight, Route};
use crate::model::worker_key::new_key;
use crate::supervisor::ctx::{running_of, Ctx};
use crate::supervisor::intake::{dry_run_result, Parsed};
use crate::worker::{self, unix_now, Exec, ExecEnd, Job, Placement, Received};

impl Session {
    pub(super) async fn run_entry(&mut self, parsed: Parsed, permit: OwnedSemaphorePermit) {
        let sid = &self.sid.clone();
        let ctx = &self.ctx.clone();
        let Parsed {
            entry,
            request: req,
            ..
        } = parsed;
        // A session task's start is counted from its turn, not its reading.
        let received = Received::now(entry.timestamp_ms());
        let rid = req.request_id.clone();
        let facts = Facts::new(
            &rid,
            Some(sid),
            Route::Session,
            entry.deliveries,
            ctx.settings.max_deliveries,
            Inflight::Free,
            req.dry_run,
        );
        let t = ctx.triage(facts, &req).await;
        let spec = match t.decision {
            Decision::Settle(d) => return ctx.settle(&entry, d).await,
            Decision::InterruptedTask => {
                if let Ok(Some(f)) = self.find_container().await {
                    kill_task(ctx, &f.id).await;
                }
                let r = outcome::interrupted(&rid, Some(sid), Interruption::Task);
                return ctx.settle(&entry, Disposition::Answer(r)).await;
            }
            Decision::DryRun => {
                let r = dry_run_result(&req, t.spec.as_ref().expect("resolved"));
                return ctx.settle(&entry, Disposition::Answer(r)).await;
            }
            Decision::SessionTask => t.spec.expect("resolved"),
            Decision::FollowContainer | Decision::Pooled | Decision::Cold => {
                tracing::error!(request_id = %rid, "a session entry was triaged as a one-shot request");
                return ctx
                    .settle(&entry, Disposition::LeavePending("triaged off its route"))
                    .await;
            }
        };
        self.last_request = rid.clone();
        // A session that ended with its lost instance: its tasks queued
        // before the loss are answered; a later one starts it anew.
        if self.container.is_none() {
            // Taken over from a dead instance, and neither its container nor
            // its volumes are on this engine: it went with that instance's
            // host, once that instance counts as lost (a stalled one may come
            // back). With its volumes here it resumes on them (one engine).
            if let Some(from) = self.taken_from.clone() {
                let (workspace, _) = session_volume_names(&ctx.settings.stream_prefix, sid);
                let volumes_here = !matches!(ctx.env.engine.volume(&workspace).await, Ok(None));
                if !volumes_here && matches!(self.find_container().await, Ok(None)) {
                    let lost_after = ctx.settings.instance_lost_after;
                    if let Ok(Some(seen)) = ctx.bus.last_seen(&from).await {
                        let left = seen + lost_after.as_millis() as i64
                            - chrono::Utc::now().timestamp_millis();
                        if left > 0 {
                            let wait = Duration::from_millis(left as u64).min(lost_after);
                            tokio::select! {
                                _ = tokio::time::sleep(wait) => {}
                                // Unacknowledged: read again after the restart.
                                _ = ctx.shutdown.cancelled() => return,
                            }
                        }
                    }
                    if let Ok(true) = ctx.bus.lose_session(sid, &from, true).await {
                        ctx.env
                            .sink
                            .event(
                                "",
                                EventType::SessionExpired,
                                json!({"session_id": sid, "reason": "lost", "instance": from, "volumes_kept": false}),
                            )
                            .await;
                    }
                }
                self.taken_from = None;
            }
        }
        // Tasks queued before the session was lost never run in a new one
        // (they came after what ran in the lost one); later ones start it anew.
        {
            if let Ok(Some(loss)) = ctx.bus.session_loss(sid).await {
                if super::entry_key(&entry.id) <= super::entry_key(&loss.before) {
                    let info = ErrorCode::Lost.info(
                        None,
                        format!(
                            "session {sid} ended with its instance {}, lost with its host, before this task ran",
                            loss.instance
                        ),
                    );
                    let mut r = ResultRecord::bare(&rid, Status::Error, Some(info));
                    r.session_id = Some(sid.to_string());
                    return ctx.settle(&entry, Disposition::Answer(r)).await;
                }
            }
        }
        let container = match self.ensure_container(&spec).await {
            Ok(c) => c,
            Err(Some(info)) => {
                let refused = [ErrorCode::SessionMismatch, ErrorCode::SessionUserMismatch];
                let status = if refused.iter().any(|c| info.code == c.as_str()) {
                    Status::Rejected
                } else {
                    Status::Error
                };
                let mut r = ResultRecord::bare(&rid, status, Some(info));
                r.session_id = Some(sid.to_string());
                return ctx.settle(&entry, Disposition::Answer(r)).await;
            }
            Err(None) => {
                return ctx
                    .settle(&entry, Disposition::LeavePending("docker unavailable"))
                    .await
            }
        };
        self.run_task(&entry, &received, &spec, &container).await;
        drop(permit);
    }

    /// The session's container: the known one, an adopted one, or a new one.
    async fn ensure_container(
        &mut self,
        spec: &WorkerSpec,
    ) -> Result<SessionContainer, Option<ErrorInfo>> {
        let sid = &self.sid.clone();
        let known = self.container.clone();
        let name = session_container_name(&self.ctx.settings.stream_prefix, sid);
        let existing = match known {
            Some(c) => Some(c),
            None => match self.find_container().await {
                Ok(Some(f)) if f.running => {
                    // Another instance's container before: its socket is
                    // served here from now on.
                    self.ctx.reopen_egress(&f, None).await;
                    Some(session_from_facts(&f))
                }
                Ok(Some(f)) => {
                    // A stopped session container is over: clear it away.
                    let _ = self.ctx.env.engine.remove(&f.id).await;
                    None
                }
                Ok(None) => None,
                Err(Some(holder)) => {
                    return Err(Some(outcome::session_name_conflict(sid, &holder)))
                }
                Err(None) => return Err(None),
            },
        };
        if let Some(c) = existing {
            let user = spec.user_id.clone().unwrap_or_default();
            if c.user.as_ref().is_some_and(|u| *u != user) {
                return Err(Some(user_mismatch(sid)));
            }
            if c.deadline_unix > unix_now() {
                if c.config_hash != spec.config_hash
                    || c.preset != spec.preset_id.clone().unwrap_or_default()
                {
                    let field = if c.preset != spec.preset_id.clone().unwrap_or_default() {
                        "worker_config_id"
                    } else {
                        "worker_config_override"
                    };
                    return Err(Some(ErrorCode::SessionMismatch.info(
                        Some(field),
                        format!(
                            "session {sid} runs preset {:?} with config hash {}; this request resolves to preset {:?} with hash {}",
                            c.preset, c.config_hash, spec.preset_id.clone().unwrap_or_default(), spec.config_hash
                        ),
                    )));
                }
                if self.container.is_none() {
                    // Found on the engine: what its volume records is unknown here.
                    self.record = None;
                }
                self.set_container(Some(c.clone()));
                return Ok(c);
            }
            self.end(End::Expired).await;
        }
        // A new container, on the session's volumes (kept from an earlier
        // container, or new).
        let resumed = self.ensure_volumes(spec).await?;
        let deadline = unix_now() + spec.config.limits.ttl_sec;
        let received_ms = chrono::Utc::now().timestamp_millis();
        let l = session_labels(spec, self.ctx.owner(), sid, deadline, received_ms);
        let net = self.ctx.worker_net(&spec.config, "", &name);
        let mut launch = LaunchContext {
            name: name.clone(),
            image: spec.config.image.clone(),
            labels: l,
            extra_env: net.env(false),
            network_mode: net.network.clone(),
            cmd: Some(crate::model::delivery::keeper_command()),
            delivery: FileDelivery::Archive,
            volumes: session_mounts(
                &self.ctx.settings.stream_prefix,
                sid,
                spec.user_id.as_deref().unwrap_or_default(),
            ),
            egress: net.egress.clone(),
        };
        match self.ctx.images.image_for(&spec.config, |_| {}).await {
            Ok(image) => launch.image = image,
            Err(e) if e.is_transient() => return Err(None),
            Err(e) => return Err(Some(e.info())),
        }
        // The container env carries no request's values: each exec brings its own.
        let mut base = if net.egress.is_none() {
            spec.with_model_keys_as_env()
        } else {
            spec.clone()
        };
        base.env.retain(|v| !v.name.starts_with("ORCHESTRATOR_"));
        let body = create_body(&base, &launch);
        if !self.ctx.open_egress(&launch, Some(&spec.request_id)) {
            return Err(None);
        }
        let created = self.ctx.env.engine.create(&name, body).await;
        if created.is_err() {
            self.ctx.env.egress.release(&name);
        }
        let id = match created {
            Ok(id) => id,
            Err(EngineError::ImageNotFound(i)) => {
                return Err(Some(ErrorCode::ImageNotFound.info(
                    Some("image"),
                    format!("image {i:?} does not exist on this engine"),
                )))
            }
            Err(e) => {
                tracing::warn!(session_id = sid, error = %e, "creating the session container failed");
                return Err(None);
            }
        };
        if let Some(extra) = &spec.config.network {
            if let Err(e) = self.ctx.env.engine.connect_network(extra, &id).await {
                let _ = self.ctx.env.engine.remove(&id).await;
                self.ctx.env.egress.close(&name);
                return Err(Some(
                    ErrorCode::NetworkNotFound.info(Some("network"), e.to_string()),
                ));
            }
        }
        // The first task's prompt goes in with the instructions: one
        // extraction before the start instead of one more per file root.
        let engine = &self.ctx.env.engine;
        // The session's one checkout, made when its workspace holds no
        // repository yet (new volumes, or a first try that failed); its
        // base is recorded in the repository itself.
        if let Err(info) = self.ensure_checkout(spec, &id).await {
            let _ = engine.remove(&id).await;
            self.ctx.env.egress.close(&name);
            return Err(Some(info));
        }
        let files: Vec<RenderedFile> = spec
            .files
            .iter()
            .chain(&spec.request_files)
            .cloned()
            .collect();
        let upload = if spec.config.security.read_only_root {
            engine.upload(&id, &files).await
        } else {
            engine.upload_at_root(&id, &files).await
        };
        if let Err(e) = match upload {
            Ok(()) => engine.start(&id).await,
            Err(e) => Err(e),
        } {
            let _ = engine.remove(&id).await;
            self.ctx.env.egress.close(&name);
            return Err(Some(ErrorCode::StartFailed.info(None, e.to_string())));
        }
        self.delivered = Some(spec.request_id.clone());
        let c = SessionContainer {
            id,
            name,
            config_hash: spec.config_hash.clone(),
            preset: spec.preset_id.clone().unwrap_or_default(),
            deadline_unix: deadline,
            user: spec.user_id.clone(),
            turn: true,
            egress: launch.egress.is_some(),
            workspace: spec.workspace.clone(),
        };
        self.ctx.env
            .sink
            .event(&spec.request_id, EventType::SessionCreated, json!({"session_id": sid, "container": c.name, "ttl_sec": spec.config.limits.ttl_sec, "resumed": resumed}))
            .await;
        self.record = if resumed { None } else { Some(None) };
        self.set_container(Some(c.clone()));
        Ok(c)
    }

    /// Checks the session's repository out into the created container `id`
    /// unless its workspace already holds one.
    async fn ensure_checkout(&self, spec: &WorkerSpec, id: &str) -> Result<(), ErrorInfo> {
        let Some(mut plan) = spec.workspace.clone().filter(|w| w.repo.is_some()) else {
            return Ok(());
        };
        let engine = &self.ctx.env.engine;
        if let Ok((Some(_), _)) = engine.download(id, "/workspace/.git/HEAD", 1 << 16).await {
            return Ok(());
        }
        let Some(mut d) = self.ctx.env.workspaces.prepare(&mut plan).await? else {
            return Ok(());
        };
        let tar = std::mem::take(&mut d.tar);
        engine
            .upload_tar(id, crate::model::render::WORKSPACE, tar)
            .await
            .map_err(|e| {
                ErrorCode::StartFailed.info(
                    Some("workspace.repo"),
                    format!("delivering the checkout failed: {e}"),
                )
            })
    }

    /// The session's volumes, made when missing; says whether they were
    /// there already (a resumed session). Volumes of another `user_id`
    /// are refused.
    async fn ensure_volumes(&self, spec: &WorkerSpec) -> Result<bool, Option<ErrorInfo>> {
        let ctx = &self.ctx;
        let sid = self.sid.as_str();
        let prefix = &ctx.settings.stream_prefix;
        let user = spec.user_id.clone().unwrap_or_default();
        let (w, h) = session_volume_names(prefix, sid);
        // Recorded first: maintenance never removes volumes used this recently.
        if ctx
            .bus
            .touch_session_volumes(sid, unix_now())
            .await
            .is_err()
        {
            return Err(None);
        }
        let mut resumed = false;
        for (name, what) in [(&w, "workspace"), (&h, "home")] {
            match ctx.env.engine.volume(name).await {
                Ok(Some(l)) => {
                    let theirs = |k: &str, v: &str| l.get(k).map(String::as_str) == Some(v);
                    if !theirs(labels::MANAGED, "true")
                        || !theirs(labels::PREFIX, prefix)
                        || !theirs(labels::SESSION_ID, sid)
                        || !theirs(labels::USER_ID, &user)
                    {
                        tracing::warn!(session_id = sid, volume = %name, "a session volume of another user or setup");
                        return Err(Some(user_mismatch(sid)));
                    }
                    resumed |= what == "home";
                }
                Ok(None) => {
                    let l = volume_labels(prefix, sid, &user, what);
                    if let Err(e) = ctx.env.engine.create_volume(name, l).await {
                        tracing::warn!(session_id = sid, error = %e, "creating a session volume failed");
                        return Err(None);
                    }
                }
                Err(_) => return Err(None),
            }
        }
        Ok(resumed)
    }

    /// The argv of a task of this session: the spec's command with the
    /// conversation's pieces, behind the shim's `turn` mode, which starts a
    /// conversation or resumes the one the session's volume records (so
    /// nothing is read before the task); and the field the agent reports
    /// its id in.
    fn task_argv(
        &self,
        spec: &WorkerSpec,
        container: &SessionContainer,
    ) -> (Vec<String>, Option<String>) {
        // An older daemon's container has a shim without the `turn` mode:
        // its tasks run plainly, as they did there.
        let Some(conv) = spec.conversation.as_ref().filter(|_| container.turn) else {
            return (spec.command.clone(), None);
        };
        let known = conv.known_id(&self.ctx.settings.stream_prefix, &self.sid);
        let start = conversation::argv(&spec.command, spec.prompt_at, conv, &Turn::Start(known));
        let resume = conversation::argv(
            &spec.command,
            spec.prompt_at,
            conv,
            &Turn::Resume(AGENT_SESSION.to_string()),
        );
        let at = spec.prompt_at.min(spec.command.len());
        let kind = conv.kind(&spec.config.agent.kind);
        let argv = turn_command(
            RECORD_PATH,
            &kind,
            &start,
            &resume,
            at..at + conv.resume.len(),
        );
        let field = (conv.id == IdSource::Reported)
            .then(|| conv.report_field.clone())
            .flatten();
        (argv, field)
    }

    /// Records the conversation after a task in which the agent ran: the
    /// id it started with or reported, `-` for an agent that needs none.
    async fn record_conversation(
        &mut self,
        spec: &WorkerSpec,
        container: &SessionContainer,
        end: &ExecEnd,
    ) {
        let Some(conv) = spec.conversation.as_ref().filter(|_| container.turn) else {
            return;
        };
        // 126/127: the agent never started, so neither did a conversation.
        if end.exit_code.is_none() || matches!(end.exit_code, Some(126 | 127)) {
            return;
        }
        let before = self.record.clone().flatten();
        let now = match conv.id {
            IdSource::Derived => before
                .clone()
                .or_else(|| conv.known_id(&self.ctx.settings.stream_prefix, &self.sid)),
            IdSource::Reported => end.reported_id.clone().or(before.clone()),
            IdSource::None => Some(NO_ID.to_string()),
        };
        let Some(now) = now else { return };
        if before.as_deref() == Some(now.as_str()) {
            return;
        }
        let file = RenderedFile {
            path: RECORD_PATH.to_string(),
            content: format!("{} {now}\n", conv.kind(&spec.config.agent.kind)),
            mode: 0o600,
        };
        match self.ctx.env.engine.upload(&container.id, &[file]).await {
            Ok(()) => self.record = Some(Some(now)),
            Err(e) => {
                tracing::warn!(session_id = %self.sid, error = %e, "writing the conversation record failed");
            }
        }
    }

    /// Whether an entry of session `sid` older than `entry` is still pending
    /// in the group and not queued here (it will be handed over, or is being
    /// read by this instance's sweep). Gives up after a while, so an entry
    /// that never gets acknowledged cannot stall the session for good.
    pub(super) async fn earlier_request_pending(
        &self,
        entry: &Entry,
        queue: &BTreeMap<(u64, u64), Parsed>,
    ) -> bool {
        let sid = self.sid.as_str();
        let Ok(ids) = self.ctx.bus.pending_before(&entry.id, 200).await else {
            return false;
        };
        if entry.timestamp_ms().is_some_and(|t| {
            (chrono::Utc::now().timestamp_millis() as u64).saturating_sub(t) > 30_000
        }) {
            return false;
        }
        for id in ids {
            if queue.contains_key(&entry_key(&id)) {
                return true;
            }
            let Ok(Some(Entry {
                data: Some(data), ..
            })) = self.ctx.bus.entry_by_id(&id).await
            else {
                continue;
            };
            let Ok(other) = parse_spawn_request(&data, &self.ctx.settings.limits) else {
                continue;
            };
            if other.task.session_id.as_deref() == Some(sid) {
                // Already answered (only its acknowledgement is missing): not a blocker.
                if self
                    .ctx
                    .bus
                    .has_result(&other.request_id)
                    .await
                    .unwrap_or(false)
                {
                    continue;
                }
                return true;
            }
        }
        false
    }

    /// Runs one task of session `sid` as an exec in its container.
    async fn run_task(
        &mut self,
        entry: &Entry,
        received: &Received,
        spec: &WorkerSpec,
        container: &SessionContainer,
    ) {
        let ctx = &self.ctx.clone();
        let sid = &self.sid.clone();
        let rid = spec.request_id.clone();
        let api_key = new_key();
        // The task reaches out the way its container does: an older
        // daemon's container (or one on the bridge path) has no socket.
        let net = if container.egress {
            ctx.worker_net(&spec.config, &api_key, &container.name)
        } else {
            ctx.bridge_net(&spec.config, &api_key)
        };
        ctx.env.egress.assign(&container.name, Some(rid.clone()));
        if !ctx.register_key(spec, &container.name, &api_key).await {
            return ctx
                .settle(
                    entry,
                    Disposition::LeavePending("registering the worker key failed"),
                )
                .await;
        }
        let at = Placement {
            container_id: container.id.clone(),
            container_name: container.name.clone(),
            image: spec.config.image.clone(),
        };
        let mut job = Job::in_live_container(
            spec,
            at,
            container.deadline_unix,
            received,
            &api_key,
            Some(api_key.clone()),
        );
        // A session keeps one repository: its tasks are collected with the
        // session's plan, and a task naming another repository is refused.
        let url_of = |w: &Option<crate::model::workspace::WorkspacePlan>| {
            w.as_ref()
                .and_then(|w| w.repo.as_ref())
                .map(|r| r.url.clone())
        };
        if let Some(asked) = url_of(&spec.workspace) {
            if url_of(&container.workspace).as_deref() != Some(asked.as_str()) {
                let _ = ctx.bus.revoke_worker_key(&api_key).await;
                let info = ErrorCode::InvalidRepo.info(
                    Some("task.repo.url"),
                    format!(
                        "task.repo.url: session {sid} works on {}; a session keeps the repository of its first task",
                        url_of(&container.workspace).unwrap_or_else(|| "no repository".into())
                    ),
                );
                let r = job.result(Status::Rejected, Some(info), &ctx.settings.instance_id);
                return ctx.settle(entry, Disposition::Answer(r)).await;
            }
        }
        if container.workspace.is_some() {
            job.workspace = container.workspace.clone();
        }
        ctx.env
            .sink
            .event(&rid, EventType::Accepted, json!({"preset": spec.preset_id, "config_hash": spec.config_hash, "instance": ctx.settings.instance_id, "session_id": sid, "container": container.name}))
            .await;
        let bridged;
        let with_keys = if net.egress.is_none() {
            bridged = spec.with_model_keys_as_env();
            &bridged
        } else {
            spec
        };
        let mut env: Vec<String> = with_keys
            .env
            .iter()
            .map(|v| format!("{}={}", v.name, v.value))
            .collect();
        if !net.api_url.is_empty() {
            env.push(format!("ORCHESTRATOR_API_URL={}", net.api_url));
            env.push(format!("ORCHESTRATOR_API_KEY={api_key}"));
        }
        env.push(format!("HOME={HOME}"));
        let (argv, report_field) = self.task_argv(spec, container);
        let engine = &ctx.env.engine;
        let delivered = self.delivered.take().as_deref() == Some(rid.as_str());
        // An older daemon's container got no tool catalog for the CLI: it
        // comes with this task's files.
        let mut files = spec.request_files.clone();
        if !container.turn {
            files.extend(
                spec.files
                    .iter()
                    .filter(|f| f.path == crate::model::tools::TOOLS_FILE)
                    .cloned(),
            );
        }
        let upload = if delivered {
            Ok(())
        } else {
            engine.upload(&container.id, &files).await
        };
        let exec = match upload {
            Ok(()) => engine.exec(&container.id, argv, env).await,
            Err(e) => Err(e),
        };
        let (exec_id, output) = match exec {
            Ok(x) => x,
            Err(e) => {
                let info = ErrorCode::StartFailed.info(None, e.to_string());
                let r = job.result(Status::Error, Some(info), &ctx.settings.instance_id);
                let _ = ctx.bus.revoke_worker_key(&api_key).await;
                return ctx.settle(entry, Disposition::Answer(r)).await;
            }
        };
        *self.current.lock().expect("current lock") = Some(running_of(&job));
        ctx.registry.track(&rid, running_of(&job));
        let (kill_ctx, kill_id) = (ctx.clone(), container.id.clone());
        let exec = Exec {
            exec_id,
            output,
            kill: Box::pin(async move { kill_task(&kill_ctx, &kill_id).await }),
            session_id: Some(sid.to_string()),
            report_field,
        };
        let end = worker::supervise_exec(&ctx.env, &job, exec, &ctx.shutdown).await;
        *self.current.lock().expect("current lock") = None;
        self.last_used = Some(Instant::now());
        ctx.registry.untrack(&rid);
        self.record_conversation(spec, container, &end).await;
        let _ = ctx.bus.touch_session_volumes(sid, unix_now()).await;
        if end.published {
            ctx.settle(entry, Disposition::Ack).await;
        }
    }

    /// Session `sid`'s container on the engine: the one under its name if
    /// its labels say it is this session's (`Err(Some(name))` when another
    /// container holds the name), else one labelled with the session under
    /// any name (an older daemon's naming). `Err(None)`: Docker trouble.
    pub(super) async fn find_container(&self) -> Result<Option<ContainerFacts>, Option<String>> {
        let sid = self.sid.as_str();
        let name = session_container_name(&self.ctx.settings.stream_prefix, sid);
        match self.ctx.env.engine.inspect(&name).await {
            Ok(f) if self.ctx.holds_session(&f, sid) => return Ok(Some(f)),
            Ok(_) => {
                tracing::warn!(session_id = sid, container = %name, "session container name held by another container");
                return Err(Some(name));
            }
            Err(EngineError::NotFound(_)) => {}
            Err(_) => return Err(None),
        }
        let found = self
            .ctx
            .env
            .engine
            .list_labelled(
                &self.ctx.settings.stream_prefix,
                &[(labels::SESSION_ID, sid), (labels::KIND, "session")],
            )
            .await
            .map_err(|_| None)?;
        match found.into_iter().max_by_key(|c| c.running) {
            Some(c) => self
                .ctx
                .env
                .engine
                .inspect(&c.id)
                .await
                .map(Some)
                .map_err(|_| None),
            None => Ok(None),
        }
    }
}

/// Stops every process of a session's running task (SIGTERM, grace,
/// SIGKILL) through the in-container killer.
pub(super) async fn kill_task(ctx: &Ctx, container_id: &str) {
    let killer = crate::model::delivery::killer_command;
    let run = |argv: Vec<String>| async move {
        match ctx
            .env
            .engine
            .exec(container_id, argv, vec![format!("HOME={HOME}")])
            .await
        {
            Ok((_, mut out)) => {
                use futures_util::StreamExt;
                let mut text = Vec::new();
                while let Some(Ok((_, b))) = out.next().await {
                    text.extend_from_slice(&b);
                }
                String::from_utf8_lossy(&text)
                    .trim()
                    .parse::<u32>()
                    .unwrap_or(0)
            }
            Err(_) => 0,
        }
    };
    if run(killer("TERM")).await == 0 {
        return;
    }
    let deadline = Instant::now() + ctx.settings.stop_grace;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Signal 0 counts the survivors without hurting them.
        if run(killer("0")).await == 0 {
            return;
        }
    }
    run(killer("KILL")).await;
}

/// Session facts from a container's labels.
pub(super) fn session_from_facts(f: &ContainerFacts) -> SessionContainer {
    let l = |k: &str| f.labels.get(k).cloned().unwrap_or_default();
    SessionContainer {
        id: f.id.clone(),
        name: f.name.clone(),
        config_hash: l(labels::CONFIG_HASH),
        preset: l(labels::PRESET),
        deadline_unix: l(labels::DEADLINE).parse().unwrap_or(0),
        // Containers of daemons before sessions were bound to users have none.
        user: f.labels.get(labels::USER_ID).cloned(),
        turn: f.labels.get(labels::TURN).is_some_and(|v| v == "1"),
        egress: f.labels.contains_key(crate::model::egress::LABEL),
        workspace: f
            .labels
            .get(labels::WORKSPACE)
            .and_then(|w| serde_json::from_str(w).ok()),
    }
}

/// The refusal of a session that belongs to another user.
fn user_mismatch(sid: &str) -> ErrorInfo {
    ErrorCode::SessionUserMismatch.info(
        Some("task.session_id"),
        format!("session {sid:?} belongs to another user_id; choose another session_id"),
    )
}

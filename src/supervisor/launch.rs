//! A cold start: the worker's image, its key, its labelled container
//! (whose existence acknowledges the entry), its files and its start; then
//! its supervision to the result.

use std::sync::Arc;

use serde_json::json;
use tokio::sync::OwnedSemaphorePermit;

use super::intake::Parsed;
use super::Supervisor;
use crate::adapters::engine::EngineError;
use crate::model::container::{
    create_body, labels, launch_context, request_container_name, withheld_env,
};
use crate::model::outcome::{self, ErrorCode};
use crate::model::protocol::{EventType, ResultRecord, Status};
use crate::model::spec::WorkerSpec;
use crate::model::triage::Disposition;
use crate::model::worker_key::new_key;
use crate::worker::{self, Job, Placement};

impl Supervisor {
    /// Starts request `p` in a new container of `spec` and supervises it.
    pub(super) async fn launch(
        self: &Arc<Self>,
        p: &Parsed,
        spec: WorkerSpec,
        permit: OwnedSemaphorePermit,
    ) {
        let ctx = &self.ctx;
        let entry = &p.entry;
        let rid = spec.request_id.clone();
        let name = request_container_name(&ctx.settings.stream_prefix, &rid);
        let api_key = new_key();
        // Held before its container exists (and its entry is acknowledged):
        // a peer can answer for it if this host is lost.
        if let Err(d) = ctx.hold(p, &spec, "oneshot", &name, &api_key).await {
            return ctx.settle(entry, d).await;
        }
        ctx.env
            .sink
            .event(&rid, EventType::Accepted, json!({"preset": spec.preset_id, "config_hash": spec.config_hash, "instance": ctx.settings.instance_id}))
            .await;
        // Setup layers are baked once per base image + setup, never per spawn.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let sink = ctx.env.sink.clone();
        let rid2 = rid.clone();
        let relay = tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                let mut batch = vec![(EventType::ImageBuilding, json!({"text": line}))];
                while let Ok(more) = rx.try_recv() {
                    batch.push((EventType::ImageBuilding, json!({"text": more})));
                }
                sink.events(&rid2, &batch).await;
            }
        });
        let built = ctx
            .images
            .worker_image(&spec.config, |line| {
                let _ = tx.send(line);
            })
            .await;
        drop(tx);
        let _ = relay.await;
        let image = match built {
            Ok(image) => image,
            Err(e) => {
                ctx.metrics.docker_errors.inc();
                if e.is_transient() {
                    tracing::warn!(request_id = %rid, error = %e, "docker unavailable");
                    return ctx
                        .settle(entry, Disposition::LeavePending("docker unavailable"))
                        .await;
                }
                let r = ResultRecord {
                    session_id: spec.session_id.clone(),
                    ..ResultRecord::bare(&rid, Status::Error, Some(e.info()))
                };
                return ctx.answer_or_retry(p, &spec, r).await;
            }
        };
        // The repository is checked out on this host before the container
        // exists: its base commit goes into the container's labels.
        let mut spec = spec;
        let mut checkout = None;
        if let Some(plan) = spec.workspace.as_mut() {
            match ctx.env.workspaces.prepare(plan).await {
                Ok(d) => checkout = d,
                Err(info) => {
                    let status = if info.field.as_deref() == Some("workspace.repo.ref") {
                        Status::Rejected
                    } else {
                        Status::Error
                    };
                    tracing::warn!(request_id = %rid, error = %info.message, "checking the repository out failed");
                    let r = ResultRecord {
                        session_id: spec.session_id.clone(),
                        ..ResultRecord::bare(&rid, status, Some(info))
                    };
                    return ctx.answer_or_retry(p, &spec, r).await;
                }
            }
            if let Some(base) = plan.repo.as_ref().and_then(|r| r.base.clone()) {
                ctx.env
                    .sink
                    .event(
                        &rid,
                        EventType::RepoReady,
                        json!({"base": base, "branch": plan.repo.as_ref().map(|r| r.branch.clone())}),
                    )
                    .await;
            }
        }
        let workspace_tar = checkout.as_mut().map(|d| std::mem::take(&mut d.tar));
        let deadline = worker::deadline_after(spec.config.limits.timeout_sec);
        let net = ctx.worker_net(&spec.config, &api_key, &name);
        let spec = if net.egress.is_none() {
            spec.with_model_keys_as_env()
        } else {
            spec
        };
        // A worker without a route to the gateway gets no key to register
        // (and revoke): two Redis round trips less on its way to start.
        let gateway_key = (!net.api_url.is_empty()).then(|| api_key.clone());
        if gateway_key.is_some() && !ctx.register_key(&spec, &name, &api_key).await {
            return ctx
                .settle(entry, Disposition::LeavePending("redis unavailable"))
                .await;
        }
        let received_ms = chrono::Utc::now().timestamp_millis();
        let mut launch = launch_context(
            &spec,
            ctx.owner(),
            &name,
            deadline,
            received_ms,
            Some(&entry.id),
            Some(&net),
        );
        launch.image = image.run;
        if !ctx.open_egress(&launch, Some(&rid)) {
            if gateway_key.is_some() {
                let _ = ctx.bus.revoke_worker_key(&api_key).await;
            }
            return ctx
                .settle(
                    entry,
                    Disposition::LeavePending("egress socket unavailable"),
                )
                .await;
        }
        let mut created = ctx
            .env
            .engine
            .create(&name, create_body(&spec, &launch))
            .await;
        if matches!(created, Err(EngineError::ImageNotFound(_))) {
            // The prepared image went away since it was last checked
            // (removed by hand): prepare it again, once.
            ctx.images.forget(&launch.image);
            if let Ok(image) = ctx.images.image_for(&spec.config, |_| {}).await {
                launch.image = image;
                created = ctx
                    .env
                    .engine
                    .create(&name, create_body(&spec, &launch))
                    .await;
            }
        }
        let mut redactor = spec.redactor();
        redactor.add(&api_key);
        let job = |id: String| {
            let at = Placement {
                container_id: id,
                container_name: name.clone(),
                image: image.named.clone(),
            };
            Job::new(
                &spec,
                at,
                deadline,
                Some(&p.received),
                redactor.clone(),
                gateway_key.clone(),
            )
        };
        let id = match created {
            Ok(id) => id,
            Err(EngineError::Conflict(_)) => {
                // Another delivery of this request won the race: its handler
                // (or, if that instance dies, an adopter) owns the container.
                let _ = ctx.bus.revoke_worker_key(&api_key).await;
                ctx.env.egress.release(&name);
                match ctx.env.engine.inspect(&name).await {
                    Ok(facts) if !ctx.is_ours(&facts) => {
                        let r = outcome::name_conflict(&rid, &name, true);
                        ctx.settle(entry, Disposition::Answer(r)).await;
                    }
                    // The name is this request's, the container another's:
                    // never take it as a redelivery of this one.
                    Ok(facts) if !ctx.holds_request(&facts, &rid) => {
                        tracing::warn!(request_id = %rid, container = %name, holder = ?facts.labels.get(labels::REQUEST_ID), "container name held by another request");
                        let r = outcome::name_conflict(&rid, &name, false);
                        ctx.settle(entry, Disposition::Answer(r)).await;
                    }
                    // An older attempt's container, not removed yet (a shared
                    // engine, or a host back from the dead): it gives way.
                    Ok(facts)
                        if facts
                            .labels
                            .get(labels::ATTEMPT)
                            .and_then(|a| a.parse::<u32>().ok())
                            .unwrap_or(1)
                            < spec.attempt =>
                    {
                        tracing::info!(request_id = %rid, container = %name, "an older attempt's container holds the name; removing it");
                        let _ = ctx.env.engine.remove(&facts.id).await;
                        ctx.settle(
                            entry,
                            Disposition::LeavePending("older attempt's container removed"),
                        )
                        .await
                    }
                    Ok(facts) => {
                        ctx.settle(entry, Disposition::Ack).await;
                        if facts.started && ctx.may_adopt(&facts).await {
                            self.adopt(facts, Some(permit)).await;
                        }
                    }
                    Err(_) => {
                        ctx.settle(entry, Disposition::LeavePending("container gone again"))
                            .await
                    }
                }
                return;
            }
            Err(e @ EngineError::ImageNotFound(_)) => {
                ctx.env.egress.release(&name);
                ctx.metrics.docker_errors.inc();
                let info = ErrorCode::ImageNotFound.info(Some("image"), e.to_string());
                let r =
                    job(String::new()).result(Status::Error, Some(info), &ctx.settings.instance_id);
                return ctx.answer_or_retry(p, &spec, r).await;
            }
            Err(e) => {
                ctx.env.egress.release(&name);
                ctx.metrics.docker_errors.inc();
                tracing::warn!(request_id = %rid, error = %e, "creating the container failed");
                return ctx
                    .settle(
                        entry,
                        Disposition::LeavePending("creating the container failed"),
                    )
                    .await;
            }
        };
        tracing::info!(image = %launch.image, "worker created");
        let job = job(id.clone());
        let mut files = spec.files.clone();
        files.extend(spec.request_files.iter().cloned());
        let withheld = withheld_env(&spec, &launch);
        let start = async {
            if let Some(extra) = &spec.config.network {
                ctx.env.engine.connect_network(extra, &id).await?;
            }
            if let Some(tar) = workspace_tar {
                ctx.env
                    .engine
                    .upload_tar(&id, crate::model::render::WORKSPACE, tar)
                    .await?;
            }
            worker::start_container(&ctx.env.engine, &id, &files, &withheld, launch.delivery).await
        };
        // The labelled container is now the record of the work: the entry
        // is acknowledged, and the event published, while it starts (the
        // `started` event follows both).
        let (_, _, started) = tokio::join!(
            ctx.settle(entry, Disposition::Ack),
            ctx.env.sink.event(
                &rid,
                EventType::ContainerCreated,
                json!({"container": name, "image": image.named}),
            ),
            start
        );
        match started {
            Ok(output) => ctx.supervise(job.with_output(output), true, permit).await,
            Err(e) => {
                ctx.metrics.docker_errors.inc();
                let info = ErrorCode::StartFailed.info(None, job.redactor.redact(&e.to_string()));
                let r = job.result(Status::Error, Some(info), &ctx.settings.instance_id);
                worker::finish(&ctx.env, &job, &r).await;
            }
        }
    }
}

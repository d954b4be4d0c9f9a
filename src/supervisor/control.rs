//! Control: every instance reads the whole control stream (`XREAD`, no
//! group) and acts on the commands that concern what it runs: cancel a
//! request (now, or when its worker appears), end a session.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::Supervisor;
use crate::adapters::bus::Entry;
use crate::model::protocol::{now_rfc3339, parse_control, ControlCommand};

impl Supervisor {
    pub(super) async fn control_loop(self: Arc<Self>) {
        let ctx = &self.ctx;
        let mut last = match ctx.bus.control_tail().await {
            Ok(id) => id,
            Err(_) => "$".to_string(),
        };
        let mut conn = None;
        loop {
            if ctx.shutdown.is_cancelled() {
                return;
            }
            if conn.is_none() {
                match ctx.bus.blocking_connection(ctx.settings.block).await {
                    Ok(c) => conn = Some(c),
                    Err(_) => {
                        self.sleep_or_shutdown(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            let c = conn.as_mut().expect("connected");
            let read = tokio::select! {
                r = ctx.bus.read_control(c, &last, ctx.settings.block) => r,
                _ = ctx.shutdown.cancelled() => return,
            };
            match read {
                Ok(entries) => {
                    for e in entries {
                        last = e.id.clone();
                        self.handle_control(&e).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the control stream failed; retrying");
                    conn = None;
                    self.sleep_or_shutdown(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn handle_control(&self, entry: &Entry) {
        let ctx = &self.ctx;
        let data = entry.data.as_deref().unwrap_or_default();
        match parse_control(data) {
            Ok(ControlCommand::CancelRequest { request_id }) => {
                // Not running here (yet): the registry remembers it for a
                // while, in case its worker is being created or its entry
                // not read yet.
                if ctx.registry.cancel(&request_id) {
                    tracing::info!(request_id = %request_id, "cancelling on request");
                }
            }
            Ok(ControlCommand::CancelSession { session_id }) => {
                if self.sessions.has_container(&session_id) {
                    tracing::info!(session_id = %session_id, "ending session on request");
                    self.sessions
                        .end(&session_id, super::session::End::Cancelled);
                }
            }
            Ok(ControlCommand::EndSession { session_id }) => {
                tracing::info!(session_id = %session_id, "ending session for good on request");
                self.sessions.end_for_good(&session_id).await;
            }
            Err(reason) => {
                // Every instance sees every control entry; only one reports it.
                if ctx
                    .bus
                    .claim_once(&format!("control-dead:{}", entry.id))
                    .await
                    .unwrap_or(false)
                {
                    let json = json!({
                        "entry_id": entry.id,
                        "stream": ctx.bus.names.control,
                        "reason": reason,
                        "data": ctx.all_secrets().redact(&String::from_utf8_lossy(data)),
                        "ts": now_rfc3339(),
                    });
                    let _ = ctx.bus.dead_letter(&json.to_string()).await;
                    ctx.metrics.dead_letters.inc();
                }
            }
        }
    }
}

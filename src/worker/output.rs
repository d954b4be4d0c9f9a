//! A worker's output: split into lines, secrets masked, rate-bounded and
//! published as `output` events in batches; the stdout tail kept for the
//! result, and the delivery shim's own failure line picked out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;

use super::{OutputLimits, WorkerEnv};
use crate::adapters::engine::{Engine, OutputStream};
use crate::adapters::sink::Sink;
use crate::metrics::Metrics;
use crate::model::delivery::SHIM_MESSAGE_PREFIX;
use crate::model::protocol::EventType;
use crate::model::redact::Redactor;

/// Splits output chunks into lines, masks secrets, bounds the rate and
/// publishes them in batches.
struct OutputForwarder {
    request_id: String,
    sink: Sink,
    redactor: Redactor,
    limits: OutputLimits,
    partial: [Vec<u8>; 2],
    batch: Vec<(EventType, serde_json::Value)>,
    window_start: Instant,
    window_lines: u32,
    dropped: u64,
    shim_message: Option<String>,
    metrics: Arc<Metrics>,
    last_flush: Instant,
}

const BATCH_LINES: usize = 256;
const BATCH_DELAY: Duration = Duration::from_millis(20);

impl OutputForwarder {
    fn push_chunk(&mut self, stream: OutputStream, chunk: &[u8]) {
        let i = stream as usize;
        self.partial[i].extend_from_slice(chunk);
        while let Some(pos) = self.partial[i].iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial[i].drain(..=pos).collect();
            self.push_line(stream, &line[..line.len() - 1]);
        }
        // A line with no newline in sight is cut at the limit.
        if self.partial[i].len() > self.limits.line_bytes {
            let line: Vec<u8> = std::mem::take(&mut self.partial[i]);
            self.push_line(stream, &line);
        }
    }

    fn push_line(&mut self, stream: OutputStream, line: &[u8]) {
        if stream == OutputStream::Stderr && line.starts_with(SHIM_MESSAGE_PREFIX.as_bytes()) {
            self.shim_message = Some(self.redactor.redact(&String::from_utf8_lossy(line)));
        }
        let now = Instant::now();
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.window_lines = 0;
        }
        if self.window_lines >= self.limits.lines_per_sec {
            self.dropped += 1;
            return;
        }
        self.window_lines += 1;
        let mut text = String::from_utf8_lossy(line).into_owned();
        if text.ends_with('\r') {
            text.pop();
        }
        if text.len() > self.limits.line_bytes {
            let mut cut = self.limits.line_bytes;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        let text = self.redactor.redact(&text);
        self.batch.push((
            EventType::Output,
            json!({"stream": stream.as_str(), "text": text}),
        ));
    }

    async fn flush(&mut self) {
        if self.dropped > 0 {
            self.metrics.output_dropped.inc_by(self.dropped);
            self.batch
                .push((EventType::OutputDropped, json!({"lines": self.dropped})));
            self.dropped = 0;
        }
        let batch = std::mem::take(&mut self.batch);
        self.last_flush = Instant::now();
        self.sink.events(&self.request_id, &batch).await;
    }

    async fn finish(&mut self) {
        for (i, stream) in [OutputStream::Stdout, OutputStream::Stderr]
            .into_iter()
            .enumerate()
        {
            if !self.partial[i].is_empty() {
                let line = std::mem::take(&mut self.partial[i]);
                self.push_line(stream, &line);
            }
        }
        self.flush().await;
    }
}

/// Follows the container's output until it ends, forwarding it as events.
pub(crate) async fn forward_output(
    env: WorkerEnv,
    job_request_id: String,
    container: String,
    redactor: Redactor,
    from_now: bool,
) -> OutputTail {
    let logs = env
        .engine
        .logs(&container, true, if from_now { Some(0) } else { None });
    forward(&env, &job_request_id, &redactor, Box::pin(logs)).await
}

/// What a worker's output leaves for its result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputTail {
    /// The redacted tail of its stdout.
    pub text: String,
    /// Whether the tail lost its start.
    pub truncated: bool,
    /// The last line the delivery shim printed on stderr about its own
    /// failure (see [`crate::model::delivery::SHIM_MESSAGE_PREFIX`]), redacted.
    pub shim_message: Option<String>,
    /// The whole output, stdout and stderr as they came, up to the
    /// transcript's bound (and a byte past it, to tell a cut): the
    /// transcript of a stream that was read from its start. Not redacted.
    pub whole: Vec<u8>,
}

/// Forwards a process's output as events until the stream ends; returns
/// what the result keeps of it.
pub async fn forward(
    env: &WorkerEnv,
    request_id: &str,
    redactor: &Redactor,
    mut output: crate::adapters::engine::ExecOutput,
) -> OutputTail {
    let mut fwd = OutputForwarder {
        request_id: request_id.to_string(),
        sink: env.sink.clone(),
        redactor: redactor.clone(),
        limits: env.output.clone(),
        partial: [Vec::new(), Vec::new()],
        batch: Vec::new(),
        window_start: Instant::now(),
        window_lines: 0,
        dropped: 0,
        shim_message: None,
        metrics: env.metrics.clone(),
        // The first line goes out at once.
        last_flush: Instant::now()
            .checked_sub(BATCH_DELAY)
            .unwrap_or_else(Instant::now),
    };
    let mut tail: Vec<u8> = Vec::new();
    let mut truncated = false;
    let mut whole: Vec<u8> = Vec::new();
    let whole_cap = env.workspaces.bounds.transcript as usize + 1;
    loop {
        // Lines are batched for at most BATCH_DELAY after the last flush:
        // sparse output goes out line by line at once, a burst in batches.
        let next = if fwd.batch.is_empty() {
            output.next().await
        } else {
            let wait = BATCH_DELAY.saturating_sub(fwd.last_flush.elapsed());
            match tokio::time::timeout(wait, output.next()).await {
                Ok(n) => n,
                Err(_) => {
                    fwd.flush().await;
                    continue;
                }
            }
        };
        match next {
            Some(Ok((stream, chunk))) => {
                if whole.len() < whole_cap {
                    let n = chunk.len().min(whole_cap - whole.len());
                    whole.extend_from_slice(&chunk[..n]);
                }
                if stream == OutputStream::Stdout {
                    tail.extend_from_slice(&chunk);
                    if tail.len() > 2 * env.output.tail_bytes {
                        tail.drain(..tail.len() - env.output.tail_bytes);
                        truncated = true;
                    }
                }
                fwd.push_chunk(stream, &chunk);
                if fwd.batch.len() >= BATCH_LINES
                    || (!fwd.batch.is_empty() && fwd.last_flush.elapsed() >= BATCH_DELAY)
                {
                    fwd.flush().await;
                }
            }
            Some(Err(e)) => {
                tracing::warn!(request_id, error = %e, "following output failed");
                break;
            }
            None => break,
        }
    }
    fwd.finish().await;
    if tail.len() > env.output.tail_bytes {
        tail.drain(..tail.len() - env.output.tail_bytes);
        truncated = true;
    }
    OutputTail {
        text: redactor.redact(&String::from_utf8_lossy(&tail)),
        truncated,
        shim_message: fwd.shim_message,
        whole,
    }
}

/// The last `tail_bytes` of the container's stdout, redacted; and whether
/// the beginning was cut.
pub async fn stdout_tail(
    engine: &Engine,
    container: &str,
    tail_bytes: usize,
    redactor: &Redactor,
) -> (String, bool) {
    // Lines are at most a few KiB in practice; 4096 lines cover the tail.
    let logs = engine.logs(container, false, Some(4096));
    tokio::pin!(logs);
    let mut out: Vec<u8> = Vec::new();
    let mut any_before = false;
    while let Some(item) = logs.next().await {
        match item {
            Ok((OutputStream::Stdout, chunk)) => out.extend_from_slice(&chunk),
            Ok(_) => {}
            Err(_) => break,
        }
        if out.len() > tail_bytes * 2 {
            out.drain(..out.len() - tail_bytes);
            any_before = true;
        }
    }
    let mut truncated = any_before;
    if out.len() > tail_bytes {
        out.drain(..out.len() - tail_bytes);
        truncated = true;
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    (redactor.redact(&text), truncated)
}

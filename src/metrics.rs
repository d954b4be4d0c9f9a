//! Prometheus metrics of the daemon (served on `/metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Label of results by outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// The result status.
    pub outcome: String,
}

/// Label of egress decisions.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EgressLabel {
    /// `allowed`, `denied` or `over_limit` (the worker's connection cap).
    pub decision: String,
    /// `tunnel`, `proxy`, `model` or `gateway`.
    pub kind: String,
}

/// Label of bytes by direction.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    /// `up` (from the worker) or `down` (to it).
    pub direction: String,
}

/// Label of retries by reason (`lost`, `error`, `oom`, `timed_out`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The failure retried.
    pub reason: String,
}

/// Every metric the daemon exports.
pub struct Metrics {
    registry: Registry,
    /// Results published, by outcome.
    pub results: Family<OutcomeLabel, Counter>,
    /// Entries read from the spawn stream.
    pub entries_read: Counter,
    /// Seconds from reception to agent start.
    pub start_seconds: Histogram,
    /// Seconds from agent start to finish.
    pub run_seconds: Histogram,
    /// Workers running now.
    pub running_workers: Gauge,
    /// Length of the spawn stream.
    pub queue_length: Gauge,
    /// Pending entries of the consumer group.
    pub queue_pending: Gauge,
    /// Derived images built.
    pub image_builds: Counter,
    /// Images prepared for workers (the prepared layer committed).
    pub image_preparations: Counter,
    /// Entries reclaimed from other consumers.
    pub reclaims: Counter,
    /// Entries sent to the dead-letter stream.
    pub dead_letters: Counter,
    /// Redis errors.
    pub redis_errors: Counter,
    /// Docker errors.
    pub docker_errors: Counter,
    /// Events given up after retries.
    pub events_lost: Counter,
    /// Output lines dropped by the rate bound.
    pub output_dropped: Counter,
    /// Containers adopted at start-up.
    pub adopted: Counter,
    /// Results, workers and events refused because another attempt or
    /// instance holds their request (a lost host that came back).
    pub fenced: Counter,
    /// Requests taken over from lost instances.
    pub lost_requests: Counter,
    /// Retries scheduled, by reason.
    pub retries: Family<ReasonLabel, Counter>,
    /// Warm-pool containers ready to take a request.
    pub pool_ready: Gauge,
    /// Requests on the workers' egress sockets, by decision and kind.
    pub egress: Family<EgressLabel, Counter>,
    /// Bytes through the egress sockets, by direction.
    pub egress_bytes: Family<DirectionLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("workers_spawner");
        let buckets = [
            0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
        ];
        let m = Metrics {
            results: Family::default(),
            entries_read: Counter::default(),
            start_seconds: Histogram::new(buckets),
            run_seconds: Histogram::new(buckets),
            running_workers: Gauge::default(),
            queue_length: Gauge::default(),
            queue_pending: Gauge::default(),
            image_builds: Counter::default(),
            image_preparations: Counter::default(),
            reclaims: Counter::default(),
            dead_letters: Counter::default(),
            redis_errors: Counter::default(),
            docker_errors: Counter::default(),
            events_lost: Counter::default(),
            output_dropped: Counter::default(),
            adopted: Counter::default(),
            fenced: Counter::default(),
            lost_requests: Counter::default(),
            retries: Family::default(),
            pool_ready: Gauge::default(),
            egress: Family::default(),
            egress_bytes: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "results",
            "Results published, by outcome",
            m.results.clone(),
        );
        registry.register(
            "entries_read",
            "Entries read from the spawn stream",
            m.entries_read.clone(),
        );
        registry.register(
            "start_seconds",
            "Seconds from reception to agent start",
            m.start_seconds.clone(),
        );
        registry.register(
            "run_seconds",
            "Seconds from agent start to finish",
            m.run_seconds.clone(),
        );
        registry.register(
            "pool_ready",
            "Warm-pool containers ready to take a request",
            m.pool_ready.clone(),
        );
        registry.register(
            "running_workers",
            "Workers running now",
            m.running_workers.clone(),
        );
        registry.register(
            "queue_length",
            "Length of the spawn stream",
            m.queue_length.clone(),
        );
        registry.register(
            "queue_pending",
            "Pending entries of the consumer group",
            m.queue_pending.clone(),
        );
        registry.register(
            "image_builds",
            "Derived images built",
            m.image_builds.clone(),
        );
        registry.register(
            "image_preparations",
            "Images prepared for workers (shim, folders, user)",
            m.image_preparations.clone(),
        );
        registry.register(
            "reclaims",
            "Entries reclaimed from other consumers",
            m.reclaims.clone(),
        );
        registry.register(
            "dead_letters",
            "Entries sent to the dead-letter stream",
            m.dead_letters.clone(),
        );
        registry.register("redis_errors", "Redis errors", m.redis_errors.clone());
        registry.register("docker_errors", "Docker errors", m.docker_errors.clone());
        registry.register(
            "events_lost",
            "Events given up after retries",
            m.events_lost.clone(),
        );
        registry.register(
            "output_dropped_lines",
            "Output lines dropped by the rate bound",
            m.output_dropped.clone(),
        );
        registry.register(
            "adopted",
            "Containers adopted at start-up",
            m.adopted.clone(),
        );
        registry.register(
            "fenced",
            "Results and workers refused because another attempt or instance holds their request",
            m.fenced.clone(),
        );
        registry.register(
            "lost_requests",
            "Requests taken over from lost instances",
            m.lost_requests.clone(),
        );
        registry.register("retries", "Retries scheduled, by reason", m.retries.clone());
        registry.register(
            "egress",
            "Requests on the workers' egress sockets, by decision and kind",
            m.egress.clone(),
        );
        registry.register(
            "egress_bytes",
            "Bytes through the workers' egress sockets, by direction",
            m.egress_bytes.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("metrics encode");
        out
    }
}

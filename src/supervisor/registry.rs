//! What runs on this instance, behind one lock: the workers supervised
//! here (request id → how to stop it), the requests whose entry is being
//! handled (request id → entry id) and the cancels that arrived before
//! their worker existed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::model::triage::Inflight;
use crate::worker::StopReason;

/// How long a cancel for a request not (yet) seen here is remembered.
const EARLY_CANCEL_TTL: Duration = Duration::from_secs(600);

/// How to stop a worker supervised here.
#[derive(Clone)]
pub struct Running {
    /// Fires to stop it.
    pub stop: CancellationToken,
    /// Why it was stopped (set before `stop` fires).
    pub reason: Arc<Mutex<Option<StopReason>>>,
    /// The attempt of its request it runs.
    pub attempt: u32,
}

impl Running {
    fn stop_for(&self, why: StopReason) {
        *self.reason.lock().expect("reason lock") = Some(why);
        self.stop.cancel();
    }
}

#[derive(Default)]
struct Inner {
    running: HashMap<String, Running>,
    inflight: HashMap<String, String>,
    early_cancels: HashMap<String, Instant>,
}

/// The instance's record of its own work.
#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("registry lock")
    }

    /// Enters the handling of `request_id` by `entry_id`: one handling per
    /// request id at a time in this process (a second delivery, e.g. this
    /// instance's own reclaim of an entry it still works on, must not race
    /// the first). The guard ends it when dropped.
    pub fn enter<'a>(
        &'a self,
        request_id: &str,
        entry_id: &str,
    ) -> (Inflight, Option<InflightGuard<'a>>) {
        let mut inner = self.lock();
        match inner.inflight.get(request_id) {
            Some(first) if first == entry_id => (Inflight::SameEntry, None),
            Some(_) => (Inflight::OtherEntry, None),
            None => {
                inner
                    .inflight
                    .insert(request_id.to_string(), entry_id.to_string());
                let guard = InflightGuard {
                    registry: self,
                    request_id: request_id.to_string(),
                };
                (Inflight::Free, Some(guard))
            }
        }
    }

    /// Registers a running worker; a cancel that arrived before it started
    /// (while it was being created) takes effect now.
    pub fn track(&self, request_id: &str, running: Running) {
        let mut inner = self.lock();
        if inner.early_cancels.remove(request_id).is_some() {
            running.stop_for(StopReason::Cancelled);
        }
        inner.running.insert(request_id.to_string(), running);
    }

    /// Registers a worker unless one of `request_id` is registered already
    /// (check and mark in one step: two paths, start-up or orphan adoption
    /// and a redelivered entry, may find the same container).
    pub fn claim(&self, request_id: &str, running: Running) -> bool {
        let mut inner = self.lock();
        if inner.running.contains_key(request_id) {
            return false;
        }
        inner.running.insert(request_id.to_string(), running);
        true
    }

    /// Forgets a worker that ended.
    pub fn untrack(&self, request_id: &str) {
        self.lock().running.remove(request_id);
    }

    /// Whether a worker of `request_id` runs here.
    pub fn is_running(&self, request_id: &str) -> bool {
        self.lock().running.contains_key(request_id)
    }

    /// The request ids of the workers running here.
    pub fn running_ids(&self) -> Vec<String> {
        self.lock().running.keys().cloned().collect()
    }

    /// How many workers run here.
    pub fn running_count(&self) -> usize {
        self.lock().running.len()
    }

    /// Whether `request_id` runs here or an entry of it is being handled.
    pub fn is_busy(&self, request_id: &str) -> bool {
        let inner = self.lock();
        inner.running.contains_key(request_id) || inner.inflight.contains_key(request_id)
    }

    /// The attempt of `request_id` running here, if it runs.
    pub fn running_attempt(&self, request_id: &str) -> Option<u32> {
        self.lock().running.get(request_id).map(|r| r.attempt)
    }

    /// The running workers with the attempt each runs.
    pub fn running_attempts(&self) -> Vec<(String, u32)> {
        self.lock()
            .running
            .iter()
            .map(|(id, r)| (id.clone(), r.attempt))
            .collect()
    }

    /// Stops `request_id`'s worker without a word (its request is held
    /// elsewhere now); returns whether it ran here.
    pub fn fence(&self, request_id: &str) -> bool {
        match self.lock().running.get(request_id) {
            Some(r) => {
                r.stop_for(StopReason::Fenced);
                true
            }
            None => false,
        }
    }

    /// Takes the early cancel of `request_id`, if one arrived.
    pub fn take_early_cancel(&self, request_id: &str) -> bool {
        self.lock().early_cancels.remove(request_id).is_some()
    }

    /// Cancels `request_id`'s worker; returns whether it runs here. One
    /// that does not (yet) is remembered for a while, in case its worker
    /// is being created or its entry not read yet.
    pub fn cancel(&self, request_id: &str) -> bool {
        let mut inner = self.lock();
        if let Some(r) = inner.running.get(request_id) {
            r.stop_for(StopReason::Cancelled);
            return true;
        }
        inner
            .early_cancels
            .retain(|_, at| at.elapsed() < EARLY_CANCEL_TTL);
        inner
            .early_cancels
            .insert(request_id.to_string(), Instant::now());
        false
    }
}

/// Marks a request id as being handled by this process until dropped.
pub struct InflightGuard<'a> {
    registry: &'a Registry,
    request_id: String,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.registry.lock().inflight.remove(&self.request_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running() -> Running {
        Running {
            attempt: 1,
            stop: CancellationToken::new(),
            reason: Arc::default(),
        }
    }

    #[test]
    fn one_handling_per_request_at_a_time() {
        let reg = Registry::default();
        let (first, guard) = reg.enter("r1", "1-0");
        assert_eq!(first, Inflight::Free);
        assert_eq!(reg.enter("r1", "1-0").0, Inflight::SameEntry);
        assert_eq!(reg.enter("r1", "2-0").0, Inflight::OtherEntry);
        drop(guard);
        assert_eq!(reg.enter("r1", "2-0").0, Inflight::Free);
    }

    #[test]
    fn a_cancel_before_the_worker_exists_stops_it_once_tracked() {
        let reg = Registry::default();
        assert!(!reg.cancel("r1"));
        let r = running();
        reg.track("r1", r.clone());
        assert!(r.stop.is_cancelled());
        assert_eq!(*r.reason.lock().unwrap(), Some(StopReason::Cancelled));
        assert!(!reg.take_early_cancel("r1"), "taken by the tracking");
        // A running one is stopped at once.
        let r2 = running();
        reg.track("r2", r2.clone());
        assert!(!r2.stop.is_cancelled());
        assert!(reg.cancel("r2"));
        assert!(r2.stop.is_cancelled());
    }

    #[test]
    fn a_claimed_request_is_not_claimed_twice() {
        let reg = Registry::default();
        assert!(reg.claim("r1", running()));
        assert!(!reg.claim("r1", running()));
        assert!(reg.is_running("r1"));
        assert_eq!(reg.running_count(), 1);
        reg.untrack("r1");
        assert!(reg.running_ids().is_empty());
    }
}

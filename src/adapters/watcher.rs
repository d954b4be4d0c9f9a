//! Watches the catalog directories and signals "something changed" so the
//! daemon can reload its catalog without waiting for the periodic re-scan.
//!
//! The signal carries no detail: the loader re-reads everything anyway, and
//! a reload of an unchanged catalog is cheap. Only read accesses (open,
//! read, close without writing) are ignored, since the reload itself causes
//! them. Events are deliberately not filtered by name:
//!
//! - editors write a temp file and rename it over the real one, so the
//!   interesting event may be a rename whose source is a dot-file;
//! - a Kubernetes ConfigMap volume swaps its `..data` symlink atomically
//!   (`..data_tmp` renamed over `..data`, `..2024_...` directories created
//!   and removed); the visible `x.json -> ..data/x.json` links never change,
//!   so those dot-entries are the *only* events there are.
//!
//! `presets/` and `skills/` are watched non-recursively (the loader reads
//! them flat), `templates/` recursively (one folder per agent type). A
//! directory that is missing, or is removed, replaced or re-pointed later,
//! is re-checked every second and a signal is sent once it is watched again. The periodic re-scan of the daemon
//! stays the backup for anything a watch misses (network filesystems, a
//! full inotify queue, ...).

use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::adapters::loader::CatalogDirs;

/// How often the watcher thread looks for missing directories and for a
/// dropped receiver.
const TICK: Duration = Duration::from_secs(1);

/// Why the watcher could not be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch the catalog directories: {0}")]
pub struct WatchError(#[from] notify::Error);

/// One directory to watch.
struct Root {
    path: PathBuf,
    mode: RecursiveMode,
    /// Identity of the directory the watch is on; `None` when not watched.
    watched: Option<(u64, u64)>,
}

impl Root {
    /// (Re)establishes the watch when the directory is not watched yet or
    /// is no longer the one watched. Returns whether a new watch was set up.
    fn ensure(&mut self, watcher: &mut RecommendedWatcher) -> bool {
        let now = dir_identity(&self.path);
        if now.is_some() && now == self.watched {
            return false;
        }
        if self.watched.take().is_some() {
            let _ = watcher.unwatch(&self.path);
        }
        if now.is_none() {
            return false;
        }
        match watcher.watch(&self.path, self.mode) {
            Ok(()) => {
                tracing::debug!(dir = %self.path.display(), "watching catalog directory");
                self.watched = now;
                true
            }
            Err(e) => {
                tracing::debug!(dir = %self.path.display(), error = %e, "cannot watch yet");
                false
            }
        }
    }
}

/// Starts watching `dirs`. The returned receiver gets one `()` after each
/// burst of changes has been quiet for `debounce` (bursts are coalesced;
/// a burst that never goes quiet is still signalled every `10 * debounce`).
///
/// The watcher lives on a background thread that ends soon after the
/// receiver is dropped. Directories that do not exist yet are not an error:
/// they are watched once they appear.
pub fn spawn_watcher(
    dirs: &CatalogDirs,
    debounce: Duration,
) -> Result<mpsc::Receiver<()>, WatchError> {
    let (raw_tx, raw_rx) = std_mpsc::channel::<notify::Result<notify::Event>>();
    let mut watcher = notify::recommended_watcher(raw_tx)?;
    let mut roots = vec![
        Root {
            path: dirs.presets.clone(),
            mode: RecursiveMode::NonRecursive,
            watched: None,
        },
        Root {
            path: dirs.skills.clone(),
            mode: RecursiveMode::NonRecursive,
            watched: None,
        },
        Root {
            path: dirs.templates.clone(),
            mode: RecursiveMode::Recursive,
            watched: None,
        },
    ];
    for root in &mut roots {
        root.ensure(&mut watcher);
        if root.watched.is_none() {
            tracing::warn!(
                dir = %root.path.display(),
                "catalog directory cannot be watched (missing?); will retry"
            );
        }
    }
    let (tx, rx) = mpsc::channel(1);
    std::thread::Builder::new()
        .name("catalog-watcher".into())
        .spawn(move || run(watcher, roots, raw_rx, tx, debounce))
        .map_err(|e| WatchError(notify::Error::io(e)))?;
    Ok(rx)
}

/// Whether `kind` is an access that changes nothing (open, read, close
/// after reading). Closing a file that was open for writing does count.
fn is_read_only(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => false,
        EventKind::Access(_) => true,
        _ => false,
    }
}

/// Identity of the directory at `path` (following symlinks), to notice
/// that it was removed, replaced or re-pointed, which kills its watch.
fn dir_identity(path: &Path) -> Option<(u64, u64)> {
    let meta = std::fs::metadata(path).ok().filter(|m| m.is_dir())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some((meta.dev(), meta.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        Some((0, 0))
    }
}

fn run(
    mut watcher: RecommendedWatcher,
    mut roots: Vec<Root>,
    raw_rx: std_mpsc::Receiver<notify::Result<notify::Event>>,
    tx: mpsc::Sender<()>,
    debounce: Duration,
) {
    let max_delay = debounce * 10;
    // Start of the current burst and the time it goes quiet.
    let mut burst: Option<(Instant, Instant)> = None;
    let mut last_tick = Instant::now();
    loop {
        let wait = match burst {
            Some((_, quiet_at)) => quiet_at.saturating_duration_since(Instant::now()),
            None => TICK,
        };
        let mut changed = false;
        match raw_rx.recv_timeout(wait) {
            Ok(Ok(event)) => {
                tracing::trace!(?event, "catalog directory event");
                // Every event counts, dot-files included (see the module
                // doc), except reads: the reload itself opens and reads
                // every file, which must not trigger the next reload.
                changed = !is_read_only(&event.kind);
            }
            Ok(Err(e)) => {
                // An error (e.g. a full inotify queue) may hide a change.
                tracing::warn!(error = %e, "catalog watcher error");
                changed = true;
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        if changed {
            burst = Some(match burst {
                Some((start, _)) => (start, (now + debounce).min(start + max_delay)),
                None => (now, now + debounce),
            });
        }
        if now.duration_since(last_tick) >= TICK {
            last_tick = now;
            if tx.is_closed() {
                return;
            }
            for root in roots.iter_mut() {
                if root.ensure(&mut watcher) {
                    // It appeared or was replaced: whatever it holds is new.
                    burst.get_or_insert((now, now + debounce));
                }
            }
        }
        if let Some((_, quiet_at)) = burst {
            if Instant::now() >= quiet_at {
                burst = None;
                match tx.try_send(()) {
                    // Full: a signal is already pending, which covers this one.
                    Ok(()) | Err(mpsc::error::TrySendError::Full(())) => {}
                    Err(mpsc::error::TrySendError::Closed(())) => return,
                }
            }
        }
    }
}

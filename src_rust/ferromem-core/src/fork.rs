//! Fork detection. After `fork()` only the forking thread exists in the child: the
//! builder thread, rayon's worker threads and whatever thread held one of an engine's
//! locks are gone, so an engine inherited from the parent can hang on its first lock,
//! and rayon's global pool (whose threads are gone too) never runs a job. A
//! `pthread_atfork` child handler counts the forks this process descends through;
//! bindings compare the count with the one an engine was opened at and refuse an
//! inherited engine, and the scans run on the calling thread in a forked child.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

static FORKS: AtomicU64 = AtomicU64::new(0);
static INSTALL: Once = Once::new();

#[cfg(unix)]
extern "C" fn after_fork_in_child() {
    // Async-signal-safe: one atomic add, no allocation, no lock.
    FORKS.fetch_add(1, Ordering::Relaxed);
}

#[cfg(unix)]
extern "C" {
    fn pthread_atfork(
        prepare: Option<unsafe extern "C" fn()>,
        parent: Option<unsafe extern "C" fn()>,
        child: Option<unsafe extern "C" fn()>,
    ) -> std::os::raw::c_int;
}

/// Registers the child handler (once per process; every engine open calls this, so it is
/// in place before any fork that could inherit an engine).
pub fn install() {
    INSTALL.call_once(|| {
        #[cfg(unix)]
        // SAFETY: registers a handler that only touches an atomic.
        unsafe {
            pthread_atfork(None, None, Some(after_fork_in_child));
        }
    });
}

/// How many forks this process descends through since `install` (0 in the process that
/// installed it). An engine opened at one count must not be used at another.
pub fn generation() -> u64 {
    FORKS.load(Ordering::Relaxed)
}

/// The threads a parallel scan or graph build may use: rayon's, except in a forked child,
/// where its global pool may hold threads that no longer exist (a job queued there would
/// wait forever), so work runs on the calling thread.
pub fn threads() -> usize {
    if generation() > 0 {
        1
    } else {
        rayon::current_num_threads()
    }
}

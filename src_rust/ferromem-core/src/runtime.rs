//! The process's Tokio runtime: it drives the PostgreSQL backend's connections (the pool,
//! the LISTEN connection) and serves the binding's async API. Engine operations are
//! synchronous (the replica is searched on the caller's thread); the backend runs its I/O
//! here with [`block_on`], and the async API runs whole engine operations on this
//! runtime's bounded blocking pool, so a thousand awaiting tasks share a few threads.
//!
//! After `fork()` the runtime's threads do not exist in the child: a child builds a
//! runtime of its own on first use (see [`crate::fork`]); the parent's is left alone.

use parking_lot::Mutex;
use std::future::Future;

/// Threads that poll connections: the work on them is protocol I/O, never a scan.
const IO_THREADS: usize = 2;
/// At most this many engine operations of the async API run at once; more wait in
/// Tokio's queue (memory, not threads).
pub const MAX_BLOCKING_THREADS: usize = 16;

struct Current {
    forks: u64,
    runtime: &'static tokio::runtime::Runtime,
}

static CURRENT: Mutex<Option<Current>> = Mutex::new(None);

/// The runtime of this process (built on first use, and again in a forked child). It lives
/// as long as the process: connections and tasks on it may outlive any one store.
pub fn get() -> &'static tokio::runtime::Runtime {
    crate::fork::install();
    let forks = crate::fork::generation();
    let mut current = CURRENT.lock();
    match &*current {
        Some(c) if c.forks == forks => c.runtime,
        _ => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(IO_THREADS)
                .max_blocking_threads(MAX_BLOCKING_THREADS)
                .thread_name("ferromem-rt")
                .enable_all()
                .build()
                .expect("cannot start ferromem's I/O runtime");
            // Leaked on purpose: it is process-wide, and a parent's runtime must never be
            // dropped in a child (dropping joins threads the child does not have).
            let runtime: &'static tokio::runtime::Runtime = Box::leak(Box::new(runtime));
            *current = Some(Current { forks, runtime });
            runtime
        }
    }
}

/// Runs `f` to completion on the runtime, from a thread that is not one of its workers
/// (a caller's thread, or the runtime's blocking pool).
pub fn block_on<F: Future>(f: F) -> F::Output {
    get().handle().block_on(f)
}

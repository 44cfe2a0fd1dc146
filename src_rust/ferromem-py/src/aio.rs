//! The native async API: `ferromem._core.AsyncEngine`, whose methods return an asyncio
//! future of the caller's running event loop instead of blocking.
//!
//! Each call extracts and checks its arguments on the caller's thread (the loop's, holding
//! the GIL, through the helpers the synchronous `Engine` uses), creates the future there with
//! `loop.create_future()`, and hands the engine operation to the blocking pool of the
//! process's runtime (`ferromem_core::runtime`, bounded at `runtime::MAX_BLOCKING_THREADS`):
//! a thousand awaiting tasks share those few threads, and no Python thread is started per
//! call. The operation runs without the GIL.
//!
//! How an answer reaches the loop: pool threads never attach to Python. A finished
//! operation is queued, Rust values only, on its loop's [`LoopBridge`], which writes one byte
//! to a socket the loop watches (`loop.add_reader`); the loop then calls the bridge's
//! `_drain` on its own thread, which converts each answer to Python objects and sets its
//! future, skipping a future that is already done (its awaiting task was cancelled): a
//! cancelled await never puts an InvalidStateError in front of the loop's exception handler.
//! pyo3-async-runtimes (`tokio::future_into_py`) instead attaches the pool thread and calls
//! `loop.call_soon_threadsafe`; that runs Python code on the pool thread, which may give up
//! the GIL midway, and if the interpreter starts finalizing meanwhile CPython ends that
//! thread inside pyo3's attach guard and aborts the process ("PyGILState_Release: thread
//! state must be current"), which we saw at the exit of a short script. It also makes every
//! answer contend for the GIL with the loop. Its global runtime cannot follow a `fork()`
//! either; ours does (a child builds its own on first use).
//!
//! Cancellation: a done-callback on the future raises a flag; an operation whose future was
//! cancelled before a pool thread took it up is skipped. One already running completes (a
//! write is one transaction: all or nothing, whoever awaits it) and its answer is dropped.
//!
//! Why a class of its own rather than more methods on `Engine`: a second `#[pymethods]`
//! block needs pyo3's `multiple-pymethods` feature (the `inventory` crate and its link-time
//! registration), and the async methods have the synchronous ones' names and arguments, so
//! the Python side holds either behind one protocol (`ferromem._engine.AsyncEngine`). It
//! wraps an open `Engine`: the fork check and the engine's lifetime stay there.

use crate::{
    counts_dict, delete_filter, explanation_dict, filter_of, found_list, hits_tuple, open_args, patch_of, policy_of, records_list,
    records_of, scope_info_dict, stats_dict, to_py_err, write_mode, F32Rows, PatchArg, PyEngine, RecordBatch,
};
use ferromem_core::{fork, runtime, Engine, Error};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyTuple;
use pyo3::{intern, IntoPyObjectExt};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// `asyncio.get_running_loop`, imported once.
static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
/// Each event loop's bridge: a `weakref.WeakKeyDictionary`, so a bridge (and its socket
/// pair) goes with its loop.
static BRIDGES: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// An operation's answer, made into Python objects on the loop's thread.
type Answer = Box<dyn FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send>;

/// A finished operation: its future (moved through the pool thread, never touched there)
/// and its answer.
struct Completion {
    future: Py<PyAny>,
    answer: Answer,
}

impl Completion {
    /// Sets the future's result or exception, unless it is already done (cancelled by its
    /// awaiting task): then the answer is dropped unconverted.
    fn resolve(self, py: Python<'_>) {
        let future = self.future.bind(py);
        if !matches!(future.call_method0(intern!(py, "done")).and_then(|d| d.is_truthy()), Ok(false)) {
            return;
        }
        let (method, value) = match (self.answer)(py) {
            Ok(value) => (intern!(py, "set_result"), value),
            Err(e) => (intern!(py, "set_exception"), e.into_value(py).into_any()),
        };
        // Cannot fail: the future is pending and this is its loop's thread.
        let _ = future.call_method1(method, (value,));
    }
}

/// What a loop's bridge shares with the pool threads: the finished operations, and the
/// socket end that wakes the loop.
struct Shared {
    done: Mutex<Vec<Completion>>,
    wake: UnixStream,
}

impl Shared {
    /// Queues a finished operation; wakes the loop when the queue was empty (otherwise a
    /// wake-up is already on its way: `_drain` reads the socket before it takes the queue).
    fn complete(&self, completion: Completion) {
        let was_empty = {
            let mut done = self.done.lock().unwrap_or_else(PoisonError::into_inner);
            done.push(completion);
            done.len() == 1
        };
        if was_empty {
            // WouldBlock: the socket is full of wake-ups already; another error: the loop
            // closed the other end, and nothing can await the answer any more.
            let _ = (&self.wake).write(&[1]);
        }
    }
}

/// One event loop's end of the async API: it watches `read` (registered with
/// `loop.add_reader`) and resolves the futures of the operations that finished.
#[pyclass(module = "ferromem._core", frozen)]
struct LoopBridge {
    shared: Arc<Shared>,
    read: UnixStream,
}

#[pymethods]
impl LoopBridge {
    /// The loop's reader callback: resolves every finished operation's future.
    fn _drain(&self, py: Python<'_>) {
        let mut bytes = [0u8; 64];
        while let Ok(n) = (&self.read).read(&mut bytes) {
            if n < bytes.len() {
                break;
            }
        }
        let done = std::mem::take(&mut *self.shared.done.lock().unwrap_or_else(PoisonError::into_inner));
        for completion in done {
            completion.resolve(py);
        }
    }
}

/// The bridge of `event_loop`, made and registered with it at its first call.
fn bridge_of<'py>(event_loop: &Bound<'py, PyAny>) -> PyResult<Bound<'py, LoopBridge>> {
    let py = event_loop.py();
    let bridges = BRIDGES.get_or_try_init(py, || py.import("weakref")?.getattr("WeakKeyDictionary")?.call0().map(Bound::unbind))?.bind(py);
    if let Ok(bridge) = bridges.call_method1(intern!(py, "get"), (event_loop,))?.cast_into::<LoopBridge>() {
        return Ok(bridge);
    }
    let (read, wake) = UnixStream::pair()?;
    read.set_nonblocking(true)?;
    wake.set_nonblocking(true)?;
    let fd = read.as_raw_fd();
    let bridge = Bound::new(py, LoopBridge { shared: Arc::new(Shared { done: Mutex::new(Vec::new()), wake }), read })?;
    event_loop.call_method1(intern!(py, "add_reader"), (fd, bridge.getattr(intern!(py, "_drain"))?))?;
    bridges.set_item(event_loop, &bridge)?;
    Ok(bridge)
}

/// The done-callback of a call's future: once the future is done before the operation
/// started, it was cancelled, and the operation is skipped.
#[pyclass(module = "ferromem._core", frozen)]
struct Abandon(Arc<AtomicBool>);

#[pymethods]
impl Abandon {
    fn __call__(&self, _future: &Bound<'_, PyAny>) {
        self.0.store(true, Ordering::Release);
    }
}

/// Runs `work` on the runtime's blocking pool and returns a future of the running loop that
/// resolves to `convert`'s object of its answer (or to its error as a ferromem exception).
/// Called from a coroutine: outside a running loop it raises RuntimeError, like asyncio.
fn submit<'py, T, W, C>(py: Python<'py>, work: W, convert: C) -> PyResult<Bound<'py, PyAny>>
where
    T: Send + 'static,
    W: FnOnce() -> Result<T, Error> + Send + 'static,
    C: FnOnce(Python<'_>, T) -> PyResult<Py<PyAny>> + Send + 'static,
{
    let event_loop = GET_RUNNING_LOOP.import(py, "asyncio", "get_running_loop")?.call0()?;
    let shared = bridge_of(&event_loop)?.get().shared.clone();
    let future = event_loop.call_method0(intern!(py, "create_future"))?;
    let abandoned = Arc::new(AtomicBool::new(false));
    future.call_method1(intern!(py, "add_done_callback"), (Abandon(abandoned.clone()),))?;
    let future = future.unbind();
    let handle = future.clone_ref(py);
    runtime::get().spawn_blocking(move || {
        let answer: Answer = if abandoned.load(Ordering::Acquire) {
            // Cancelled before it started: nothing was done, and nothing is owed (the
            // completion only returns the future to its loop's thread, to be let go there).
            Box::new(|py| Ok(py.None()))
        } else {
            // A panic must still resolve the future: its task would otherwise wait forever.
            match catch_unwind(AssertUnwindSafe(work)) {
                Ok(Ok(value)) => Box::new(move |py| convert(py, value)),
                Ok(Err(e)) => Box::new(move |_| Err(to_py_err(e))),
                Err(panic) => {
                    let message = panic_message(panic);
                    Box::new(move |_| Err(pyo3::panic::PanicException::new_err(message)))
                }
            }
        };
        shared.complete(Completion { future, answer });
    });
    Ok(handle.into_bound(py))
}

/// A panic's message, as pyo3 reports a panic of a synchronous call.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => payload.downcast_ref::<&str>().map_or_else(|| "an operation panicked".to_owned(), |s| (*s).to_owned()),
    }
}

fn none(py: Python<'_>, (): ()) -> PyResult<Py<PyAny>> {
    Ok(py.None())
}

fn object<'py, T: IntoPyObjectExt<'py>>(py: Python<'py>, value: T) -> PyResult<Py<PyAny>> {
    value.into_py_any(py)
}

/// `object` for a value that converts under any GIL lifetime (a number, a list of
/// strings), so it can be passed as `convert` itself.
fn plain<T>(py: Python<'_>, value: T) -> PyResult<Py<PyAny>>
where
    T: for<'py> IntoPyObject<'py>,
{
    value.into_py_any(py)
}

/// The vectors of an argument, copied: the caller may change its array while the
/// operation waits for a thread, and the operation must see the values of the call.
fn copied(rows: F32Rows) -> (usize, Vec<f32>) {
    (rows.dim, rows.as_slice().to_vec())
}

/// The async face of one open `Engine`: the same operations, each returning an asyncio
/// future (see the module's documentation). Thread-safe; any number of loops may use one.
#[pyclass(module = "ferromem._core", name = "AsyncEngine", frozen)]
pub(crate) struct AsyncEngine {
    engine: Py<PyEngine>,
}

impl AsyncEngine {
    /// The engine for a job, after the fork check of the synchronous engine.
    fn running(&self) -> PyResult<Arc<Engine>> {
        let engine = self.engine.get();
        engine.engine()?;
        Ok(engine.inner.clone())
    }
}

#[pymethods]
impl AsyncEngine {
    #[new]
    fn new(engine: Py<PyEngine>) -> AsyncEngine {
        AsyncEngine { engine }
    }

    /// Opens a store as `Engine(...)` does, on the blocking pool: a future of the `Engine`.
    #[staticmethod]
    #[pyo3(signature = (path=None, dim=None, durability="normal", precision="f32", fast_open=false, read_only=false))]
    fn open<'py>(
        py: Python<'py>,
        path: Option<&Bound<'py, PyAny>>,
        dim: Option<usize>,
        durability: &str,
        precision: &str,
        fast_open: bool,
        read_only: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (location, opts) = open_args(path, durability, precision, fast_open, read_only)?;
        submit(
            py,
            move || Engine::open_at(&location, dim, opts),
            // The fork generation after the open, as `Engine(...)` reads it.
            |py, engine| object(py, PyEngine { inner: Arc::new(engine), forks: fork::generation() }),
        )
    }

    /// The synchronous engine this one runs.
    #[getter]
    fn engine(&self, py: Python<'_>) -> Py<PyEngine> {
        self.engine.clone_ref(py)
    }

    fn upsert<'py>(&self, py: Python<'py>, batch: RecordBatch, mode: &str) -> PyResult<Bound<'py, PyAny>> {
        let engine = self.running()?;
        let mode = write_mode(mode)?;
        let (records, rows) = records_of(py, batch)?;
        let (dim, data) = copied(rows);
        submit(py, move || engine.upsert(records, &data, dim, mode), none)
    }

    #[pyo3(signature = (queries, k, filter=None, min_score=None, device=None))]
    fn search<'py>(
        &self,
        py: Python<'py>,
        queries: &Bound<'py, PyAny>,
        k: usize,
        filter: Option<&Bound<'py, PyAny>>,
        min_score: Option<f32>,
        device: Option<&str>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let engine = self.running()?;
        let filter = filter_of(filter)?;
        let policy = device.map(policy_of).transpose()?;
        let (dim, data) = copied(F32Rows::from_py(queries)?);
        submit(
            py,
            move || engine.search_with_policy(&data, dim, k, &filter, min_score, policy),
            |py, hits| object(py, hits_tuple(py, hits)?),
        )
    }

    #[pyo3(signature = (queries, k, filter=None, min_score=None, device=None))]
    fn explain<'py>(
        &self,
        py: Python<'py>,
        queries: &Bound<'py, PyAny>,
        k: usize,
        filter: Option<&Bound<'py, PyAny>>,
        min_score: Option<f32>,
        device: Option<&str>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let engine = self.running()?;
        let filter = filter_of(filter)?;
        let policy = device.map(policy_of).transpose()?;
        let (dim, data) = copied(F32Rows::from_py(queries)?);
        submit(
            py,
            move || engine.explain(&data, dim, k, &filter, min_score, policy),
            |py, (hits, how)| object(py, PyTuple::new(py, [hits_tuple(py, hits)?.into_any(), explanation_dict(py, &how)?.into_any()])?),
        )
    }

    fn get<'py>(&self, py: Python<'py>, ids: Vec<String>) -> PyResult<Bound<'py, PyAny>> {
        let engine = self.running()?;
        submit(py, move || engine.get(&ids), |py, found| object(py, found_list(py, found)?))
    }

    fn update<'py>(&self, py: Python<'py>, id: String, patch: PatchArg) -> PyResult<Bound<'py, PyAny>> {
        let engine = self.running()?;
        let patch = patch_of(py, patch)?;
        submit(py, move || engine.update(&id, patch), plain)
    }

    fn touch<'py>(&self, py: Python<'py>, ids: Vec<String>, t: f64) -> PyResult<Bound<'py, PyAny>> {
        let engine = self.running()?;
        submit(py, move || engine.touch(&ids, t), plain)
    }

    #[pyo3(signature = (ids=None, filter=None))]
    fn delete<'py>(&self, py: Python<'py>, ids: Option<Vec<String>>, filter: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        let engine = self.running()?;
        let filter = delete_filter(ids, filter)?;
        submit(py, move || engine.delete(&filter), plain)
    }

    #[pyo3(signature = (filter=None, offset=0, limit=None))]
    fn list<'py>(
        &self,
        py: Python<'py>,
        filter: Option<&Bound<'py, PyAny>>,
        offset: usize,
        limit: Option<usize>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let engine = self.running()?;
        let filter = filter_of(filter)?;
        submit(py, move || engine.list(&filter, offset, limit), |py, records| object(py, records_list(py, records)?))
    }

    #[pyo3(signature = (filter=None))]
    fn count<'py>(&self, py: Python<'py>, filter: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        let engine = self.running()?;
        let filter = filter_of(filter)?;
        submit(py, move || engine.count(&filter), plain)
    }

    #[pyo3(signature = (scope=None))]
    fn child_scopes<'py>(&self, py: Python<'py>, scope: Option<String>) -> PyResult<Bound<'py, PyAny>> {
        let engine = self.running()?;
        let scope = scope.unwrap_or_else(|| "/".into());
        submit(py, move || engine.child_scopes(&scope), plain)
    }

    #[pyo3(signature = (filter=None))]
    fn category_counts<'py>(&self, py: Python<'py>, filter: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        let engine = self.running()?;
        let filter = filter_of(filter)?;
        submit(py, move || engine.category_counts(&filter), |py, counts| object(py, counts_dict(py, counts)?))
    }

    #[pyo3(signature = (scope=None))]
    fn scope_info<'py>(&self, py: Python<'py>, scope: Option<String>) -> PyResult<Bound<'py, PyAny>> {
        let engine = self.running()?;
        let scope = scope.unwrap_or_else(|| "/".into());
        submit(py, move || engine.scope_info(&scope), |py, info| object(py, scope_info_dict(py, info)?))
    }

    fn reset<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let engine = self.running()?;
        submit(py, move || engine.reset(), none)
    }

    /// Closes the engine (waiting for a write in flight, then saving the graph and the image
    /// where the store keeps them). In a forked child, the parent's engine is left alone.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        if self.engine.get().inherited() {
            return submit(py, || Ok(()), none);
        }
        let engine = self.running()?;
        submit(
            py,
            move || {
                engine.close();
                Ok(())
            },
            none,
        )
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let engine = self.running()?;
        let planner = engine.clone();
        submit(py, move || Ok(engine.stats()), move |py, stats| object(py, stats_dict(py, stats, &planner)?))
    }
}

/// Adds the async API to `ferromem._core`.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<AsyncEngine>()?;
    // How many engine operations of the async API run at once (the blocking pool's bound).
    m.add("MAX_BLOCKING_THREADS", runtime::MAX_BLOCKING_THREADS)?;
    Ok(())
}

//! `ferromem._core`: the PyO3 control plane over `ferromem_core::Engine`.
//!
//! Every method extracts its arguments first (holding the GIL), then runs the engine with
//! the GIL released through one wrapper (`native`, and `PyEngine::call` for an engine's
//! methods; waits go through `PyEngine::wait`, which returns to Python between slices so
//! Ctrl-C is honoured), then builds Python results. Vectors arrive through the
//! buffer protocol: a float32 C-contiguous buffer (what `ferromem._buffers` hands over) is
//! read in place, never copied. Errors become the classes of `ferromem/exceptions.py`.
//!
//! What crosses is typed by `ferromem/_schema.py`: a batch, a patch and a filter are read
//! by attribute into `#[derive(FromPyObject)]` structs of the schema's fields
//! (`RecordBatch`, `PatchArg`, `FilterArg`), and records come back as `RecordRow`, a
//! `#[pyclass]` of the schema's `RecordRow` fields (`tests/engine/test_schema.py` holds
//! both sides to the schema).

mod aio;
mod device;

use ferromem_core::engine::{EngineStats, Explanation, ScopeInfo};
use ferromem_core::guard::{check_target, RecallReport, DEFAULT_RECALL_TARGET};
use ferromem_core::hnsw::HnswParams;
use ferromem_core::planner::{self, CpuCosts, DeviceCosts, NamedCosts, Policy};
use ferromem_core::state::{IndexConfig, IndexMode, Precision, AUTO_MIN_VALUES};
use ferromem_core::storage::sqlite::{Access, SqliteStorage};
use ferromem_core::storage::Location;
use ferromem_core::{fork, simd, Durability, Engine, Error, Filter, OpenOptions, Patch, Privacy, Record, Scalar, WriteMode};
use numpy::{PyArray1, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple, PyType};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest a wait runs without returning to Python: a pending signal (Ctrl-C) is
/// handled within about this long.
const SIGNAL_SLICE: Duration = Duration::from_millis(50);

/// The class of `ferromem/exceptions.py` an engine error becomes: its slot in
/// `EXCEPTION_CLASSES` and its name.
fn class_of(e: &Error) -> (usize, &'static str) {
    match e {
        Error::InvalidInput(_) => (0, "InvalidInputError"),
        Error::InvalidVector(_) => (1, "InvalidVectorError"),
        Error::DimensionMismatch { .. } => (2, "DimensionMismatchError"),
        Error::InvalidMetadata(_) => (3, "InvalidMetadataError"),
        Error::InvalidFilter(_) => (4, "InvalidFilterError"),
        Error::DuplicateId(_) => (5, "DuplicateIdError"),
        Error::Closed => (6, "StoreClosedError"),
        Error::Storage(_) => (7, "StorageError"),
        Error::Corrupt(_) => (8, "CorruptStoreError"),
        Error::Incompatible(_) => (9, "IncompatibleStoreError"),
        Error::NotAStore(_) => (10, "NotAStoreError"),
        Error::ReadOnly(_) => (11, "ReadOnlyStoreError"),
        Error::Unsupported(_) => (12, "UnsupportedStoreError"),
        Error::Device(_) => (13, "DeviceError"),
        Error::Unavailable(_) | Error::Retry(_) => (14, "StorageUnavailableError"),
        Error::PoolExhausted(_) => (15, "PoolTimeoutError"),
    }
}

/// Each class of `class_of`, imported from `ferromem.exceptions` at its first use and
/// kept: an error costs no import and no attribute lookup after that.
static EXCEPTION_CLASSES: [PyOnceLock<Py<PyType>>; 16] = [const { PyOnceLock::new() }; 16];

/// An instance of the ferromem exception class of `kind`, made with `args`.
fn ferromem_exception<'py>(py: Python<'py>, kind: &Error, args: impl pyo3::call::PyCallArgs<'py>) -> PyErr {
    let (slot, name) = class_of(kind);
    match EXCEPTION_CLASSES[slot].import(py, "ferromem.exceptions", name).and_then(|class| class.call1(args)) {
        Ok(instance) => PyErr::from_value(instance),
        Err(import_failure) => import_failure,
    }
}

/// Raises the ferromem exception class that matches an engine error.
fn to_py_err(e: Error) -> PyErr {
    Python::attach(|py| {
        let msg = e.to_string();
        match &e {
            Error::DimensionMismatch { expected, got } => ferromem_exception(py, &e, (msg, *expected, *got)),
            _ => ferromem_exception(py, &e, (msg,)),
        }
    })
}

fn filter_error(msg: impl Into<String>) -> PyErr {
    to_py_err(Error::InvalidFilter(msg.into()))
}

/// A read-only view of a float32 C-contiguous buffer as rows of `dim` (1-D = one row).
struct F32Rows {
    buf: PyBuffer<f32>,
    rows: usize,
    dim: usize,
}

impl F32Rows {
    fn from_py(obj: &Bound<'_, PyAny>) -> PyResult<F32Rows> {
        let buf = PyBuffer::<f32>::get(obj).map_err(|_| {
            to_py_err(Error::InvalidVector(
                "vectors must be a float32 C-contiguous buffer here (ferromem._buffers.as_matrix makes one)".into(),
            ))
        })?;
        if !buf.is_c_contiguous() {
            return Err(to_py_err(Error::InvalidVector("vectors must be C-contiguous".into())));
        }
        let (rows, dim) = match buf.shape() {
            [d] => (1, *d),
            [r, d] => (*r, *d),
            s => return Err(to_py_err(Error::InvalidVector(format!("vectors must be 1-D or 2-D, got {} dimensions", s.len())))),
        };
        Ok(F32Rows { buf, rows, dim })
    }

    fn address(&self) -> usize {
        self.buf.buf_ptr() as usize
    }

    /// The values, in place. Safety: the buffer stays alive (and pinned by the buffer
    /// protocol) for as long as `self`; the slice is only used while `self` is borrowed.
    fn as_slice(&self) -> &[f32] {
        let n = self.rows * self.dim;
        if n == 0 {
            return &[];
        }
        unsafe { std::slice::from_raw_parts(self.buf.buf_ptr() as *const f32, n) }
    }
}

fn scalar_of(v: &Bound<'_, PyAny>) -> PyResult<Scalar> {
    if v.is_none() {
        Ok(Scalar::Null)
    } else if v.is_instance_of::<PyBool>() {
        Ok(Scalar::Bool(v.extract()?))
    } else if v.is_instance_of::<PyInt>() || v.is_instance_of::<PyFloat>() {
        let x: f64 = v.extract()?;
        if !x.is_finite() {
            return Err(filter_error("where values must be finite numbers"));
        }
        Ok(Scalar::num(x))
    } else if v.is_instance_of::<PyString>() {
        Ok(Scalar::Str(v.extract()?))
    } else {
        Err(filter_error(format!("where values must be str, int, float, bool or None, got {}", v.get_type().name()?)))
    }
}

/// `ferromem._schema.UNCHANGED`, the value of a `Patch` field that the update leaves as it
/// is (`None` cannot say it: `source=None` clears the source). Imported once.
static UNCHANGED: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// A field of a `Patch`: None when it is `UNCHANGED`, else its value.
fn change<'py, T: for<'a> FromPyObject<'a, 'py>>(value: &Bound<'py, PyAny>) -> PyResult<Option<T>> {
    let py = value.py();
    if value.is(UNCHANGED.import(py, "ferromem._schema", "UNCHANGED")?) {
        return Ok(None);
    }
    value.extract::<T>().map(Some).map_err(Into::into)
}

/// The `where` pairs of a filter: (metadata key, scalar) pairs; None is none.
fn where_pairs(value: &Bound<'_, PyAny>) -> PyResult<Vec<(String, Scalar)>> {
    let mut pairs = Vec::new();
    if value.is_none() {
        return Ok(pairs);
    }
    for item in value.try_iter()? {
        let pair = item?;
        let pair = pair.cast::<PyTuple>().map_err(|_| filter_error("where must be a list of (key, value) pairs"))?;
        if pair.len() != 2 {
            return Err(filter_error("where must be a list of (key, value) pairs"));
        }
        let key: String = pair.get_item(0)?.extract().map_err(|_| filter_error("where keys must be strings"))?;
        pairs.push((key, scalar_of(&pair.get_item(1)?)?));
    }
    Ok(pairs)
}

/// A filter as the facade builds it: `ferromem._schema.Filter` (read by attribute, so any
/// object with the same fields will do). Every field may be None (no constraint).
#[derive(FromPyObject)]
struct FilterArg {
    scope: Option<String>,
    categories: Option<Vec<String>>,
    #[pyo3(attribute("where"), from_py_with = where_pairs)]
    where_eq: Vec<(String, Scalar)>,
    source: Option<String>,
    include_private: bool,
    visible_to: Option<String>,
    older_than: Option<f64>,
    ids: Option<Vec<String>>,
}

/// The engine's filter for a `Filter` argument (None: no constraint). A malformed one is an
/// InvalidFilterError, like every other filter problem.
fn filter_of(arg: Option<&Bound<'_, PyAny>>) -> PyResult<Filter> {
    let Some(arg) = arg.filter(|a| !a.is_none()) else { return Ok(Filter::default()) };
    let f: FilterArg = arg.extract().map_err(|e: PyErr| {
        if e.is_instance_of::<PyTypeError>(arg.py()) || e.is_instance_of::<pyo3::exceptions::PyAttributeError>(arg.py()) {
            filter_error(format!("the filter must be a ferromem._schema.Filter: {e}"))
        } else {
            e
        }
    })?;
    if f.older_than.is_some_and(|t| !t.is_finite()) {
        return Err(filter_error("older_than must be a finite time"));
    }
    Ok(Filter {
        scope: f.scope,
        categories: f.categories,
        where_eq: f.where_eq,
        source: f.source,
        privacy: if f.include_private { Privacy::Include } else { Privacy::VisibleTo(f.visible_to) },
        older_than: f.older_than,
        ids: f.ids,
    })
}

/// What `delete(ids, filter)` deletes: the filter's records whose id is also among `ids`.
fn delete_filter(ids: Option<Vec<String>>, filter: Option<&Bound<'_, PyAny>>) -> PyResult<Filter> {
    let mut f = filter_of(filter)?;
    if let Some(ids) = ids {
        f.ids = Some(match f.ids.take() {
            None => ids,
            Some(existing) => ids.into_iter().filter(|i| existing.contains(i)).collect(),
        });
    }
    Ok(f)
}

/// A batch of records to save, column by column (`ferromem._schema.RecordBatch`): one list
/// per field, named as the record's fields, and the vectors as one float32 matrix.
#[derive(FromPyObject)]
struct RecordBatch {
    id: Vec<String>,
    content: Vec<String>,
    scope: Vec<String>,
    categories: Vec<Vec<String>>,
    metadata_json: Vec<String>,
    importance: Vec<f64>,
    created_at: Vec<f64>,
    last_accessed: Vec<f64>,
    source: Vec<Option<String>>,
    private: Vec<bool>,
    vector: Py<PyAny>,
}

fn write_mode(mode: &str) -> PyResult<WriteMode> {
    match mode {
        "insert" => Ok(WriteMode::Insert),
        "upsert" => Ok(WriteMode::Upsert),
        m => Err(to_py_err(Error::InvalidInput(format!("mode must be 'insert' or 'upsert', not {m:?}")))),
    }
}

/// The records of a batch, and its vectors (read in place).
fn records_of(py: Python<'_>, batch: RecordBatch) -> PyResult<(Vec<Record>, F32Rows)> {
    let RecordBatch { id, content, scope, categories, metadata_json, importance, created_at, last_accessed, source, private, vector } =
        batch;
    let n = id.len();
    let vector = vector.bind(py);
    let rows = F32Rows::from_py(vector)?;
    check_len("vectors", rows.rows, n)?;
    for (name, len) in [
        ("contents", content.len()),
        ("scopes", scope.len()),
        ("categories", categories.len()),
        ("metadata", metadata_json.len()),
        ("importance", importance.len()),
        ("created_at", created_at.len()),
        ("last_accessed", last_accessed.len()),
        ("sources", source.len()),
        ("private", private.len()),
    ] {
        check_len(name, len, n)?;
    }
    let mut fields = content
        .into_iter()
        .zip(scope)
        .zip(categories)
        .zip(metadata_json)
        .zip(importance)
        .zip(created_at)
        .zip(last_accessed)
        .zip(source)
        .zip(private);
    let mut records = Vec::with_capacity(n);
    for id in id {
        let ((((((((content, scope), categories), metadata_json), importance), created_at), last_accessed), source), private) =
            fields.next().expect("lengths checked");
        records.push(Record {
            id: Arc::from(id),
            content,
            scope,
            categories,
            metadata_json,
            importance,
            created_at,
            last_accessed,
            source,
            private,
        });
    }
    Ok((records, rows))
}

/// The fields an update changes (`ferromem._schema.Patch`): each is `UNCHANGED` or its new
/// value.
#[derive(FromPyObject)]
struct PatchArg {
    #[pyo3(from_py_with = change::<String>)]
    content: Option<String>,
    #[pyo3(from_py_with = change::<String>)]
    scope: Option<String>,
    #[pyo3(from_py_with = change::<Vec<String>>)]
    categories: Option<Vec<String>>,
    #[pyo3(from_py_with = change::<String>)]
    metadata_json: Option<String>,
    #[pyo3(from_py_with = change::<f64>)]
    importance: Option<f64>,
    #[pyo3(from_py_with = change::<f64>)]
    created_at: Option<f64>,
    #[pyo3(from_py_with = change::<f64>)]
    last_accessed: Option<f64>,
    #[pyo3(from_py_with = change::<Option<String>>)]
    source: Option<Option<String>>,
    #[pyo3(from_py_with = change::<bool>)]
    private: Option<bool>,
    #[pyo3(from_py_with = change::<Py<PyAny>>)]
    vector: Option<Py<PyAny>>,
}

/// The engine's patch for a `Patch` argument (its vector copied: it is one row).
fn patch_of(py: Python<'_>, patch: PatchArg) -> PyResult<Patch> {
    let vector = match &patch.vector {
        None => None,
        Some(v) => {
            let rows = F32Rows::from_py(v.bind(py))?;
            if rows.rows != 1 {
                return Err(to_py_err(Error::InvalidVector("update takes exactly one vector".into())));
            }
            Some(rows.as_slice().to_vec())
        }
    };
    let p = Patch {
        content: patch.content,
        scope: patch.scope,
        categories: patch.categories,
        metadata_json: patch.metadata_json,
        importance: patch.importance,
        created_at: patch.created_at,
        last_accessed: patch.last_accessed,
        source: patch.source,
        private: patch.private,
        vector,
    };
    for x in [p.importance, p.created_at, p.last_accessed].into_iter().flatten() {
        if !x.is_finite() {
            return Err(to_py_err(Error::InvalidInput("importance and timestamps must be finite numbers".into())));
        }
    }
    Ok(p)
}

/// One stored record as `get` and `list` return it. Its fields, their names and order are
/// those of `ferromem._schema.RecordRow` (the reference engine's twin; a test holds the two
/// to the same fields).
#[pyclass(module = "ferromem._core", name = "RecordRow", frozen, get_all)]
struct RecordRow {
    id: Py<PyString>,
    content: Py<PyString>,
    scope: Py<PyString>,
    categories: Py<PyList>,
    metadata_json: Py<PyString>,
    importance: f64,
    created_at: f64,
    last_accessed: f64,
    source: Option<Py<PyString>>,
    private: bool,
    vector: Py<PyArray1<f32>>,
}

impl RecordRow {
    fn new(py: Python<'_>, rec: &Record, vector: Vec<f32>) -> PyResult<RecordRow> {
        let vec = PyArray1::from_vec(py, vector);
        vec.readwrite().make_nonwriteable();
        Ok(RecordRow {
            id: PyString::new(py, &rec.id).unbind(),
            content: PyString::new(py, &rec.content).unbind(),
            scope: PyString::new(py, &rec.scope).unbind(),
            categories: PyList::new(py, &rec.categories)?.unbind(),
            metadata_json: PyString::new(py, &rec.metadata_json).unbind(),
            importance: rec.importance,
            created_at: rec.created_at,
            last_accessed: rec.last_accessed,
            source: rec.source.as_deref().map(|s| PyString::new(py, s).unbind()),
            private: rec.private,
            vector: vec.unbind(),
        })
    }
}

#[pymethods]
impl RecordRow {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!("RecordRow(id={})", self.id.bind(py).repr().map(|r| r.to_string()).unwrap_or_default())
    }
}

fn records_list<'py>(py: Python<'py>, recs: Vec<(Record, Vec<f32>)>) -> PyResult<Bound<'py, PyList>> {
    let items = recs.into_iter().map(|(r, v)| Bound::new(py, RecordRow::new(py, &r, v)?)).collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, items)
}

/// `get`'s answer: a RecordRow per id found, None where absent.
fn found_list<'py>(py: Python<'py>, found: Vec<Option<(Record, Vec<f32>)>>) -> PyResult<Bound<'py, PyList>> {
    let items = found
        .into_iter()
        .map(|r| match r {
            Some((rec, v)) => Bound::new(py, RecordRow::new(py, &rec, v)?).map(Bound::into_any),
            None => Ok(py.None().into_bound(py)),
        })
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, items)
}

fn check_len(name: &str, got: usize, want: usize) -> PyResult<()> {
    if got != want {
        return Err(to_py_err(Error::InvalidInput(format!("{name} has {got} entries but there are {want} ids"))));
    }
    Ok(())
}

/// One open store. Thread-safe: share it between threads freely.
#[pyclass(module = "ferromem._core", name = "Engine", frozen)]
struct PyEngine {
    inner: Arc<Engine>,
    /// `fork::generation()` when it was opened: another value means this is a forked
    /// child's copy of the parent's engine.
    forks: u64,
}

impl PyEngine {
    /// Whether this is the parent's engine, inherited through `fork()`: its threads are
    /// gone and its locks may be held by one of them, so it is never touched.
    fn inherited(&self) -> bool {
        fork::generation() != self.forks
    }

    /// The engine, unless it was inherited through `fork()`.
    fn engine(&self) -> PyResult<&Engine> {
        if self.inherited() {
            return Err(forked_error());
        }
        Ok(&self.inner)
    }

    /// Every call into the engine: the fork check, then `f` with the GIL released, then
    /// its error as a ferromem exception. While `f` waits on SQLite's write lock it asks
    /// `interrupted` between pauses; a signal whose handler raised (KeyboardInterrupt)
    /// ends the wait, and that exception is what the call raises.
    fn call<T: Send>(&self, py: Python<'_>, f: impl FnOnce(&Engine) -> Result<T, Error> + Send) -> PyResult<T> {
        let engine = self.engine()?;
        native(py, || f(engine))
    }

    /// A wait of up to `timeout` (None: no limit) in slices: `step(slice)` waits at most
    /// `slice` with the GIL released and returns true when done; between slices the GIL is
    /// taken back and pending signals run their handlers, so Ctrl-C raises
    /// KeyboardInterrupt within about `SIGNAL_SLICE`. False when the time ran out.
    fn wait(
        &self,
        py: Python<'_>,
        timeout: Option<Duration>,
        mut step: impl FnMut(&Engine, Duration) -> Result<bool, Error> + Send,
    ) -> PyResult<bool> {
        // A deadline beyond what Instant can hold is no deadline.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            let slice = match deadline {
                None => SIGNAL_SLICE,
                Some(d) => d.saturating_duration_since(Instant::now()).min(SIGNAL_SLICE),
            };
            if self.call(py, |engine| step(engine, slice))? {
                return Ok(true);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
            py.check_signals()?;
        }
    }
}

impl Drop for PyEngine {
    fn drop(&mut self) {
        if self.inherited() {
            // Dropping the last reference would close the parent's engine here (its locks,
            // its SQLite connections, its files): leak it instead.
            std::mem::forget(self.inner.clone());
        }
    }
}

fn forked_error() -> PyErr {
    Python::attach(|py| {
        ferromem_exception(py, &Error::Closed, ("this store was opened in the parent process, before os.fork(); a forked child cannot use it (its threads and locks stayed in the parent): open it again with ferromem.open(path) in the child",))
    })
}

thread_local! {
    /// Whether this thread is inside `PyEngine::call` (with the GIL released).
    static IN_CALL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The exception a signal handler raised during this thread's current call.
    static RAISED: std::cell::RefCell<Option<PyErr>> = const { std::cell::RefCell::new(None) };
}

/// The engine's interrupt check (`ferromem_core::interrupt`): takes the GIL back briefly
/// and runs pending signal handlers (Python runs them on the main thread only); true
/// when one raised, keeping its exception for `PyEngine::call`. Only threads inside a call
/// ask: no other thread (the graph builder, a drop at interpreter exit) takes the GIL here.
fn interrupted() -> bool {
    if !IN_CALL.with(|c| c.get()) {
        return false;
    }
    if RAISED.with(|r| r.borrow().is_some()) {
        return true;
    }
    match Python::attach(|py| py.check_signals()) {
        Ok(()) => false,
        Err(raised) => {
            RAISED.with(|r| *r.borrow_mut() = Some(raised));
            true
        }
    }
}

/// Runs native work with the GIL released and converts its error: the one way this module
/// leaves Python (engine methods through `PyEngine::call`, which adds the fork check). A
/// wait inside it on SQLite's write lock asks `interrupted` between pauses; a signal
/// handler that raised (KeyboardInterrupt) ends that wait, and its exception is what the
/// call raises.
fn native<T: Send>(py: Python<'_>, f: impl FnOnce() -> Result<T, Error> + Send) -> PyResult<T> {
    let result = py.detach(|| {
        IN_CALL.with(|c| c.set(true));
        let result = f();
        IN_CALL.with(|c| c.set(false));
        result
    });
    if let Some(raised) = RAISED.with(|r| r.borrow_mut().take()) {
        // The handler ran (and consumed the signal): its exception must reach the caller,
        // whatever the work returned.
        return Err(raised);
    }
    result.map_err(to_py_err)
}

/// A timeout in seconds as a Duration; one too long to represent (1e300) is no limit.
fn timeout_duration(timeout: Option<f64>) -> PyResult<Option<Duration>> {
    match timeout {
        None => Ok(None),
        Some(t) if t.is_nan() || t < 0.0 => Err(to_py_err(Error::InvalidInput("timeout must be a number >= 0 or None".into()))),
        Some(t) => Ok(Duration::try_from_secs_f64(t).ok()),
    }
}

/// Where and how `Engine(...)` opens a store: a str is a location (a URL or a path), an
/// os.PathLike always a path, None memory.
fn open_args(
    path: Option<&Bound<'_, PyAny>>,
    durability: &str,
    precision: &str,
    fast_open: bool,
    read_only: bool,
) -> PyResult<(Location, OpenOptions)> {
    let location = match path {
        None => Location::Memory,
        Some(text) if text.is_instance_of::<PyString>() => Location::parse(&text.extract::<String>()?).map_err(to_py_err)?,
        Some(path) => Location::Sqlite(path.extract::<PathBuf>()?),
    };
    let durability = Durability::from_name(durability)
        .ok_or_else(|| to_py_err(Error::InvalidInput(format!("durability must be 'normal' or 'full', not {durability:?}"))))?;
    let precision = Precision::from_name(precision)
        .ok_or_else(|| to_py_err(Error::InvalidInput(format!("precision must be 'f32', 'f16' or 'int8', not {precision:?}"))))?;
    Ok((location, OpenOptions { durability, precision, fast_open, read_only }))
}

#[pymethods]
impl PyEngine {
    #[new]
    #[pyo3(signature = (path=None, dim=None, durability="normal", precision="f32", fast_open=false, read_only=false))]
    fn new(
        py: Python<'_>,
        path: Option<&Bound<'_, PyAny>>,
        dim: Option<usize>,
        durability: &str,
        precision: &str,
        fast_open: bool,
        read_only: bool,
    ) -> PyResult<PyEngine> {
        let (location, opts) = open_args(path, durability, precision, fast_open, read_only)?;
        // Engine::open_opts registers the fork handler before the engine exists, so the
        // generation read below is the one any later fork changes.
        let engine = native(py, || Engine::open_at(&location, dim, opts))?;
        Ok(PyEngine { inner: Arc::new(engine), forks: fork::generation() })
    }

    #[getter]
    fn dim(&self, py: Python<'_>) -> PyResult<Option<usize>> {
        self.call(py, |engine| engine.dim())
    }

    #[getter]
    fn path(&self) -> Option<String> {
        self.inner.path().map(|p| p.to_string_lossy().into_owned())
    }

    #[getter]
    fn closed(&self) -> bool {
        self.inherited() || self.inner.is_closed()
    }

    /// Saves a batch in one transaction; `mode` "insert" refuses an existing id.
    fn upsert(&self, py: Python<'_>, batch: RecordBatch, mode: &str) -> PyResult<()> {
        let mode = write_mode(mode)?;
        let (records, rows) = records_of(py, batch)?;
        let dim = rows.dim;
        let data = rows.as_slice();
        self.call(py, |engine| engine.upsert(records, data, dim, mode))
    }

    /// Returns (ids: object array, scores: float32 array, offsets: int64 array of nq + 1).
    /// `device`: the policy for this call ("auto" | "cpu" | "gpu"; None: the store's).
    #[pyo3(signature = (queries, k, filter=None, min_score=None, device=None))]
    fn search<'py>(
        &self,
        py: Python<'py>,
        queries: &Bound<'py, PyAny>,
        k: usize,
        filter: Option<&Bound<'py, PyAny>>,
        min_score: Option<f32>,
        device: Option<&str>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let filter = filter_of(filter)?;
        let policy = device.map(policy_of).transpose()?;
        let rows = F32Rows::from_py(queries)?;
        let (dim, data) = (rows.dim, rows.as_slice());
        let hits = self.call(py, |engine| engine.search_with_policy(data, dim, k, &filter, min_score, policy))?;
        hits_tuple(py, hits)
    }

    /// As `search`, plus how the search was served: a dict of the path, the reason, each
    /// route's predicted time and the observed one (see `ferromem_core::planner`).
    #[pyo3(signature = (queries, k, filter=None, min_score=None, device=None))]
    fn explain<'py>(
        &self,
        py: Python<'py>,
        queries: &Bound<'py, PyAny>,
        k: usize,
        filter: Option<&Bound<'py, PyAny>>,
        min_score: Option<f32>,
        device: Option<&str>,
    ) -> PyResult<(Bound<'py, PyTuple>, Bound<'py, PyDict>)> {
        let filter = filter_of(filter)?;
        let policy = device.map(policy_of).transpose()?;
        let rows = F32Rows::from_py(queries)?;
        let (dim, data) = (rows.dim, rows.as_slice());
        let (hits, how) = self.call(py, |engine| engine.explain(data, dim, k, &filter, min_score, policy))?;
        Ok((hits_tuple(py, hits)?, explanation_dict(py, &how)?))
    }

    /// The device policy searches use when a call names none.
    fn set_policy(&self, policy: &str) -> PyResult<()> {
        self.engine()?.set_policy(policy_of(policy)?);
        Ok(())
    }

    fn policy(&self) -> PyResult<&'static str> {
        Ok(self.engine()?.policy().name())
    }

    /// Attaches a device (a `ferromem.gpu.DeviceSearch`) with its calibrated costs (a dict
    /// of DeviceCosts' fields; None: `auto` does not pick it), or detaches it (None).
    #[pyo3(signature = (device, costs=None))]
    fn attach_device(&self, py: Python<'_>, device: Option<&Bound<'_, PyAny>>, costs: Option<&Bound<'_, PyDict>>) -> PyResult<()> {
        let device = device.map(device::PyDevice::new).transpose()?;
        let costs: Option<DeviceCosts> = costs.map(costs_of).transpose()?;
        self.call(py, |engine| {
            engine.attach_device(device.map(|d| Box::new(d) as Box<dyn ferromem_core::device::CandidateDevice>), costs);
            Ok(())
        })
    }

    /// Sets the CPU constants of the planner's cost model (a dict from `calibrate_cpu`).
    fn set_cpu_costs(&self, costs: &Bound<'_, PyDict>) -> PyResult<()> {
        let costs: CpuCosts = costs_of(costs)?;
        self.engine()?.set_cpu_costs(costs);
        Ok(())
    }

    /// Makes every search take this route when it is eligible ("cpu-one", "cpu-batch",
    /// "gpu-exact"; None: the planner decides): for benchmarks of the fixed paths.
    #[pyo3(signature = (route=None))]
    fn _force_route(&self, route: Option<&str>) -> PyResult<()> {
        let route = route
            .map(|r| planner::Route::parse(r).ok_or_else(|| to_py_err(Error::InvalidInput(format!("unknown route {r:?}")))))
            .transpose()?;
        self.engine()?.planner().force(route);
        Ok(())
    }

    /// Whether the planner's CPU constants were set (from a calibration).
    fn cpu_calibrated(&self) -> PyResult<bool> {
        Ok(self.engine()?.planner().cpu_calibrated())
    }

    fn get<'py>(&self, py: Python<'py>, ids: Vec<String>) -> PyResult<Bound<'py, PyList>> {
        let found = self.call(py, |engine| engine.get(&ids))?;
        found_list(py, found)
    }

    /// Changes the fields of `patch` that are not `UNCHANGED`; False when the id is absent.
    fn update(&self, py: Python<'_>, id: String, patch: PatchArg) -> PyResult<bool> {
        let p = patch_of(py, patch)?;
        self.call(py, |engine| engine.update(&id, p))
    }

    fn touch(&self, py: Python<'_>, ids: Vec<String>, t: f64) -> PyResult<usize> {
        self.call(py, |engine| engine.touch(&ids, t))
    }

    #[pyo3(signature = (ids=None, filter=None))]
    fn delete(&self, py: Python<'_>, ids: Option<Vec<String>>, filter: Option<&Bound<'_, PyAny>>) -> PyResult<usize> {
        let f = delete_filter(ids, filter)?;
        self.call(py, |engine| engine.delete(&f))
    }

    #[pyo3(signature = (filter=None, offset=0, limit=None))]
    fn list<'py>(
        &self,
        py: Python<'py>,
        filter: Option<&Bound<'py, PyAny>>,
        offset: usize,
        limit: Option<usize>,
    ) -> PyResult<Bound<'py, PyList>> {
        let f = filter_of(filter)?;
        let recs = self.call(py, |engine| engine.list(&f, offset, limit))?;
        records_list(py, recs)
    }

    #[pyo3(signature = (filter=None))]
    fn count(&self, py: Python<'_>, filter: Option<&Bound<'_, PyAny>>) -> PyResult<usize> {
        let f = filter_of(filter)?;
        self.call(py, |engine| engine.count(&f))
    }

    #[pyo3(signature = (scope=None))]
    fn child_scopes(&self, py: Python<'_>, scope: Option<String>) -> PyResult<Vec<String>> {
        let scope = scope.unwrap_or_else(|| "/".into());
        self.call(py, |engine| engine.child_scopes(&scope))
    }

    #[pyo3(signature = (filter=None))]
    fn category_counts<'py>(&self, py: Python<'py>, filter: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyDict>> {
        let f = filter_of(filter)?;
        let counts = self.call(py, |engine| engine.category_counts(&f))?;
        counts_dict(py, counts)
    }

    #[pyo3(signature = (scope=None))]
    fn scope_info<'py>(&self, py: Python<'py>, scope: Option<String>) -> PyResult<Bound<'py, PyDict>> {
        let scope = scope.unwrap_or_else(|| "/".into());
        let info = self.call(py, |engine| engine.scope_info(&scope))?;
        scope_info_dict(py, info)
    }

    fn reset(&self, py: Python<'_>) -> PyResult<()> {
        self.call(py, |engine| engine.reset())
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        if self.inherited() {
            // The parent's engine: closing it would take its locks (perhaps held by a
            // thread that does not exist here) and write its files. It is leaked instead.
            return Ok(());
        }
        self.call(py, |engine| {
            engine.close();
            Ok(())
        })
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s: EngineStats = self.call(py, |engine| Ok(engine.stats()))?;
        stats_dict(py, s, self.engine()?)
    }

    /// Index mode ("auto" | "exact" | "hnsw"), graph search width and graph shape, the
    /// recall guard's target, and the store size (values) from which "auto" builds a graph.
    #[pyo3(signature = (mode, ef_search, m = 16, ef_construction = 128, recall_target = None, graph_min_values = None))]
    #[allow(clippy::too_many_arguments)]
    fn set_index(
        &self,
        py: Python<'_>,
        mode: &str,
        ef_search: usize,
        m: usize,
        ef_construction: usize,
        recall_target: Option<f64>,
        graph_min_values: Option<usize>,
    ) -> PyResult<()> {
        // None: the defaults (0.95; 2^25 values).
        let recall_target = recall_target.unwrap_or(DEFAULT_RECALL_TARGET);
        let graph_min_values = graph_min_values.unwrap_or(AUTO_MIN_VALUES);
        let mode = IndexMode::from_name(mode)
            .ok_or_else(|| to_py_err(Error::InvalidInput(format!("index must be 'auto', 'exact' or 'hnsw', not {mode:?}"))))?;
        let config = IndexConfig { mode, ef_search, params: HnswParams { m, ef_construction }, auto_min_values: graph_min_values };
        // Every setting is checked before any is changed.
        check_target(recall_target).map_err(|m| to_py_err(Error::InvalidInput(m)))?;
        self.call(py, |engine| {
            engine.set_index(config)?;
            engine.set_recall_target(recall_target)
        })
    }

    /// Blocks (GIL released) until the graph covers every record; False on timeout.
    #[pyo3(signature = (timeout = None))]
    fn wait_for_index(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let timeout = timeout_duration(timeout)?;
        self.wait(py, timeout, |engine, slice| engine.wait_for_index(Some(slice)))
    }

    /// Bounds the result cache to `entries` single-query searches; 0 turns it off.
    fn set_cache_capacity(&self, entries: usize) -> PyResult<()> {
        self.engine()?.set_cache_capacity(entries);
        Ok(())
    }
}

/// `category_counts`' answer: {category: records}.
fn counts_dict(py: Python<'_>, counts: Vec<(String, usize)>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    for (c, n) in counts {
        d.set_item(c, n)?;
    }
    Ok(d)
}

/// `scope_info`'s answer.
fn scope_info_dict(py: Python<'_>, info: ScopeInfo) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("path", info.path)?;
    d.set_item("record_count", info.record_count)?;
    d.set_item("categories", info.categories)?;
    d.set_item("oldest", info.oldest)?;
    d.set_item("newest", info.newest)?;
    d.set_item("child_scopes", info.child_scopes)?;
    Ok(d)
}

/// `stats()`: the engine's statistics `s`, and its planner's and device's (read now).
fn stats_dict<'py>(py: Python<'py>, s: EngineStats, engine: &Engine) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("records", s.records)?;
    d.set_item("dim", s.dim)?;
    d.set_item("memory_bytes", s.memory_bytes)?;
    d.set_item("disk_bytes", s.disk_bytes)?;
    d.set_item("storage", py.import("json")?.call_method1("loads", (s.storage.to_string(),))?)?;
    d.set_item("isa", simd::active_isa().name())?;
    d.set_item("precision", s.precision.name())?;
    let ops = PyDict::new(py);
    for (name, o) in s.operations {
        let od = PyDict::new(py);
        od.set_item("count", o.count)?;
        od.set_item("p50_us", o.p50_us)?;
        od.set_item("p95_us", o.p95_us)?;
        od.set_item("p99_us", o.p99_us)?;
        od.set_item("max_us", o.max_us)?;
        od.set_item("mean_us", o.mean_us)?;
        ops.set_item(name, od)?;
    }
    d.set_item("operations", ops)?;
    let c = s.cache;
    let cache = PyDict::new(py);
    cache.set_item("capacity", c.capacity)?;
    cache.set_item("entries", c.entries)?;
    cache.set_item("hits", c.hits)?;
    cache.set_item("misses", c.misses)?;
    let lookups = c.hits + c.misses;
    cache.set_item("hit_rate", if lookups == 0 { 0.0 } else { c.hits as f64 / lookups as f64 })?;
    d.set_item("cache", cache)?;
    let i = s.index;
    let index = PyDict::new(py);
    index.set_item("mode", i.mode.name())?;
    index.set_item("active", if i.active { "hnsw" } else { "exact" })?;
    index.set_item("ef_search", i.ef_search)?;
    index.set_item("m", i.params.m)?;
    index.set_item("ef_construction", i.params.ef_construction)?;
    index.set_item("graph_nodes", i.graph_nodes)?;
    index.set_item("pending", i.pending)?;
    index.set_item("graph_bytes", i.graph_bytes)?;
    index.set_item("builds", s.index_builds)?;
    index.set_item("building", s.index_building)?;
    index.set_item("graph_file_rejected", s.graph_damage.as_deref())?;
    index.set_item("serving_ef", i.serving_ef)?;
    index.set_item("graph_min_values", i.auto_min_values)?;
    index.set_item("recall", recall_dict(py, &i.recall)?)?;
    d.set_item("index", index)?;
    let coalesced = PyDict::new(py);
    coalesced.set_item("searches", s.coalesced_searches)?;
    coalesced.set_item("batches", s.coalesced_batches)?;
    d.set_item("coalesced", coalesced)?;
    let image = PyDict::new(py);
    image.set_item("enabled", s.fast_open)?;
    image.set_item("opened_from_image", s.opened_from_image)?;
    image.set_item("rejected", s.image_damage.as_deref())?;
    d.set_item("fast_open", image)?;
    d.set_item("read_only", s.read_only)?;
    let damaged = PyList::empty(py);
    for x in &s.damaged {
        let item = PyDict::new(py);
        item.set_item("id", &x.id)?;
        item.set_item("seq", x.seq)?;
        item.set_item("what", x.what)?;
        damaged.append(item)?;
    }
    d.set_item("damaged", damaged)?;
    let p = engine.planner().stats();
    let plan = PyDict::new(py);
    plan.set_item("policy", engine.policy().name())?;
    plan.set_item("cpu_costs", costs_dict(py, &p.cpu)?)?;
    plan.set_item("cpu_calibrated", p.cpu_calibrated)?;
    plan.set_item("device_costs", p.device.as_ref().map(|c| costs_dict(py, c)).transpose()?)?;
    let correction = PyDict::new(py);
    for (route, kinds, low, high) in &p.correction {
        let c = PyDict::new(py);
        c.set_item("kinds", *kinds)?;
        c.set_item("min", if *kinds > 0 { Some(*low) } else { None })?;
        c.set_item("max", if *kinds > 0 { Some(*high) } else { None })?;
        correction.set_item(*route, c)?;
    }
    plan.set_item("correction", correction)?;
    let routes = PyDict::new(py);
    for (route, n) in &p.routes {
        routes.set_item(*route, *n)?;
    }
    plan.set_item("routes", routes)?;
    d.set_item("planner", plan)?;
    let device = match engine.device_stats() {
        None => None,
        Some(x) => {
            let dd = PyDict::new(py);
            dd.set_item("name", &x.name)?;
            dd.set_item("proved", x.proved)?;
            dd.set_item("fallbacks", x.fallbacks)?;
            dd.set_item("rows_sent", x.rows_sent)?;
            dd.set_item("uploads", x.uploads)?;
            dd.set_item("last_error", x.last_error.as_deref())?;
            Some(dd)
        }
    };
    d.set_item("device", device)?;
    Ok(d)
}

/// The recall guard's report as `stats()["index"]["recall"]`.
fn recall_dict<'py>(py: Python<'py>, r: &RecallReport) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("target", r.target)?;
    d.set_item("verdict", r.verdict.name())?;
    let ladder = PyList::empty(py);
    for rung in &r.ladder {
        let x = PyDict::new(py);
        x.set_item("ef", rung.ef)?;
        x.set_item("samples", rung.samples)?;
        x.set_item("mean", rung.mean)?;
        x.set_item("stderr", rung.stderr)?;
        x.set_item("graph_ms", rung.graph_ms)?;
        ladder.append(x)?;
    }
    d.set_item("ladder", ladder)?;
    d.set_item("exact_ms", r.exact_ms)?;
    d.set_item("offered", r.offered)?;
    d.set_item("evaluated", r.evaluated)?;
    d.set_item("dropped", r.dropped)?;
    d.set_item("sample_every", r.sample_every)?;
    d.set_item("auditor_share", r.auditor_share)?;
    d.set_item("bootstraps", r.bootstraps)?;
    d.set_item("bootstrap_ms", r.bootstrap_ms)?;
    Ok(d)
}

/// Search results as (ids: object array, scores: float32 array, offsets: int64 array of
/// nq + 1).
fn hits_tuple(py: Python<'_>, hits: Vec<Vec<(Arc<str>, f32)>>) -> PyResult<Bound<'_, PyTuple>> {
    let total: usize = hits.iter().map(Vec::len).sum();
    let mut ids: Vec<Py<PyAny>> = Vec::with_capacity(total);
    let mut scores: Vec<f32> = Vec::with_capacity(total);
    let mut offsets: Vec<i64> = Vec::with_capacity(hits.len() + 1);
    offsets.push(0);
    for q in hits {
        for (id, score) in q {
            ids.push(PyString::new(py, &id).into_any().unbind());
            scores.push(score);
        }
        offsets.push(ids.len() as i64);
    }
    PyTuple::new(
        py,
        [PyArray1::from_vec(py, ids).into_any(), PyArray1::from_vec(py, scores).into_any(), PyArray1::from_vec(py, offsets).into_any()],
    )
}

fn policy_of(name: &str) -> PyResult<Policy> {
    Policy::parse(name).ok_or_else(|| to_py_err(Error::InvalidInput(format!("device must be 'auto', 'cpu' or 'gpu', not {name:?}"))))
}

/// A cost table from a dict of its named constants, each a finite number >= 0.
fn costs_of<C: NamedCosts>(d: &Bound<'_, PyDict>) -> PyResult<C> {
    let mut values = [0.0f64; 4];
    for (value, key) in values.iter_mut().zip(C::NAMES) {
        let v: f64 = d.get_item(key)?.ok_or_else(|| to_py_err(Error::InvalidInput(format!("costs need {key:?}"))))?.extract()?;
        if !(v.is_finite() && v >= 0.0) {
            return Err(to_py_err(Error::InvalidInput(format!("cost {key:?} must be a finite number >= 0, not {v}"))));
        }
        *value = v;
    }
    Ok(C::from_values(values))
}

/// A cost table as a dict of its named constants (ns).
fn costs_dict<'py, C: NamedCosts>(py: Python<'py>, c: &C) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (key, value) in C::NAMES.iter().zip(c.values()) {
        d.set_item(*key, value)?;
    }
    Ok(d)
}

fn explanation_dict<'py>(py: Python<'py>, how: &Explanation) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("path", &how.path)?;
    d.set_item("reason", &how.reason)?;
    d.set_item("policy", how.policy.name())?;
    d.set_item("queries", how.nq)?;
    d.set_item("rows", how.rows)?;
    let predicted = PyDict::new(py);
    for (route, ns) in &how.predicted {
        predicted.set_item(route.name(), ns / 1e6)?;
    }
    d.set_item("predicted_ms", predicted)?;
    d.set_item("observed_ms", how.observed_ns / 1e6)?;
    d.set_item("device", how.device.as_deref())?;
    Ok(d)
}

/// Times the CPU scorer on synthetic rows of `dim` at `precision` (about a quarter of a
/// second, GIL released) and returns the planner's fitted CPU constants (ns).
#[pyfunction]
fn calibrate_cpu<'py>(py: Python<'py>, precision: &str, dim: usize) -> PyResult<Bound<'py, PyDict>> {
    let precision = Precision::from_name(precision)
        .ok_or_else(|| to_py_err(Error::InvalidInput(format!("precision must be 'f32', 'f16' or 'int8', not {precision:?}"))))?;
    if dim == 0 || dim > precision.max_dim() {
        return Err(to_py_err(Error::InvalidInput(format!("dim must be between 1 and {}", precision.max_dim()))));
    }
    let costs = native(py, || Ok(planner::calibrate_cpu(precision, dim)))?;
    costs_dict(py, &costs)
}

/// The route the planner takes for a call of `nq` queries over `rows` rows of `dim` with
/// these costs (a fresh planner: no hysteresis, no observations), and each eligible
/// route's prediction in ms: what `ferromem doctor` shows for typical calls.
#[pyfunction]
#[pyo3(signature = (cpu_costs, device_costs, nq, rows, dim, k=10))]
fn predict_route<'py>(
    py: Python<'py>,
    cpu_costs: &Bound<'py, PyDict>,
    device_costs: Option<&Bound<'py, PyDict>>,
    nq: usize,
    rows: usize,
    dim: usize,
    k: usize,
) -> PyResult<(&'static str, Bound<'py, PyDict>)> {
    let p = planner::Planner::default();
    p.set_cpu_costs(costs_of(cpu_costs)?);
    let device: Option<DeviceCosts> = device_costs.map(costs_of).transpose()?;
    p.set_device_costs(device);
    let call = planner::Call { nq: nq.max(1), rows, dim, k: k.max(1), each: false, behind: 0 };
    let attached = if device.is_some() { Ok(()) } else { Err("no device") };
    let d = p.choose(&call, Policy::Auto, attached).map_err(|e| to_py_err(Error::InvalidInput(e)))?;
    let predicted = PyDict::new(py);
    for (route, ns) in &d.predicted {
        predicted.set_item(route.name(), ns / 1e6)?;
    }
    Ok((d.route.name(), predicted))
}

/// (address of the first value, rows, dim) exactly as the engine reads a vector argument:
/// lets tests prove that a float32 C-contiguous array reaches Rust without a copy.
#[pyfunction]
fn buffer_address(obj: &Bound<'_, PyAny>) -> PyResult<(usize, usize, usize)> {
    let rows = F32Rows::from_py(obj)?;
    Ok((rows.address(), rows.rows, rows.dim))
}

/// The problems of a store image file (its own checksums and structure, not whether it is
/// current for its store): empty when whole or absent.
#[pyfunction]
fn verify_image(py: Python<'_>, image_path: PathBuf) -> PyResult<Vec<String>> {
    native(py, || Ok(ferromem_core::image::verify_file(&image_path)))
}

/// The problems of a saved graph file (`<store>.hnsw`), as [`verify_image`].
#[pyfunction]
fn verify_graph(py: Python<'_>, graph_path: PathBuf) -> PyResult<Vec<String>> {
    native(py, || Ok(ferromem_core::hnsw::verify_graph_file(&graph_path)))
}

/// Brings the ferromem tables of a PostgreSQL URL's schema to this build's version;
/// returns it.
#[pyfunction]
fn postgres_migrate(py: Python<'_>, url: String) -> PyResult<i32> {
    native(py, || ferromem_core::storage::postgres::migrate(&url))
}

/// The stores of a PostgreSQL URL's schema whose names start with `prefix`.
#[pyfunction]
fn postgres_list_stores(py: Python<'_>, url: String, prefix: String) -> PyResult<Vec<String>> {
    native(py, || ferromem_core::storage::postgres::list_stores(&url, &prefix))
}

/// Creates the store a PostgreSQL URL names; false when it existed already.
#[pyfunction]
fn postgres_create_store(py: Python<'_>, url: String) -> PyResult<bool> {
    native(py, || ferromem_core::storage::postgres::create_store(&url))
}

/// Deletes the store a PostgreSQL URL names; false when there was none.
#[pyfunction]
fn postgres_drop_store(py: Python<'_>, url: String) -> PyResult<bool> {
    native(py, || ferromem_core::storage::postgres::drop_store(&url))
}

/// The SIMD path similarity kernels use now ("avx512", "avx2", "neon" or "scalar").
#[pyfunction]
fn simd_isa() -> &'static str {
    simd::active_isa().name()
}

/// Every SIMD path this CPU can run.
#[pyfunction]
fn supported_isas() -> Vec<&'static str> {
    simd::supported_isas().into_iter().map(|i| i.name()).collect()
}

/// Forces a SIMD path (tests, benchmarks); None returns to the best one detected.
#[pyfunction]
#[pyo3(signature = (name=None))]
fn force_isa(name: Option<&str>) -> PyResult<()> {
    let isa = match name {
        None => None,
        Some(n) => Some(simd::Isa::from_name(n).ok_or_else(|| PyTypeError::new_err(format!("unknown ISA {n:?}")))?),
    };
    simd::force_isa(isa).map_err(|e| to_py_err(Error::InvalidInput(e.to_string())))
}

/// Runs `kernel(query, rows, dim, out)` with the GIL released over a query and the rows
/// of a C-contiguous matrix (both contiguous, the rows as long as the query, at most
/// `int8_max_dim` values for the int8 kernels), returning one value per row: the one body
/// of the `dot_rows_*` functions, which differ only in their element types and kernel.
fn kernel_rows<'py, Q: numpy::Element + Sync, T: numpy::Element + Sync, O: numpy::Element + Copy + Default + Send>(
    py: Python<'py>,
    query: &numpy::PyReadonlyArray1<'py, Q>,
    rows: &numpy::PyReadonlyArray2<'py, T>,
    int8_max_dim: Option<usize>,
    kernel: impl FnOnce(&[Q], &[T], usize, &mut [O]) + Send,
) -> PyResult<Bound<'py, PyArray1<O>>> {
    let q = query.as_slice().map_err(|_| to_py_err(Error::InvalidInput("the query must be contiguous".into())))?;
    let query_len = q.len();
    let (n, dim) = (rows.shape()[0], rows.shape()[1]);
    if dim == 0 {
        return Err(to_py_err(Error::InvalidInput("rows need at least one value".into())));
    }
    if dim != query_len {
        return Err(to_py_err(Error::InvalidInput(format!("rows have {dim} values, the query {query_len}"))));
    }
    if let Some(max_dim) = int8_max_dim.filter(|max_dim| dim > *max_dim) {
        return Err(to_py_err(Error::InvalidInput(format!("int8 kernels take at most {max_dim} values"))));
    }
    let r = rows.as_slice().map_err(|_| to_py_err(Error::InvalidInput("rows must be C-contiguous".into())))?;
    let mut out = vec![O::default(); n];
    native(py, || {
        kernel(q, r, dim, &mut out);
        Ok(())
    })?;
    Ok(PyArray1::from_vec(py, out))
}

/// dot(query, row) for every row of a float32 matrix, on the active SIMD path, one
/// thread (benchmarks of the kernels themselves; searches use them through the engine).
#[pyfunction]
fn dot_rows_f32<'py>(
    py: Python<'py>,
    query: numpy::PyReadonlyArray1<'py, f32>,
    rows: numpy::PyReadonlyArray2<'py, f32>,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    kernel_rows(py, &query, &rows, None, simd::dot_rows)
}

/// The same with the rows as binary16 (a float16 matrix viewed as uint16).
#[pyfunction]
fn dot_rows_f16<'py>(
    py: Python<'py>,
    query: numpy::PyReadonlyArray1<'py, f32>,
    rows: numpy::PyReadonlyArray2<'py, u16>,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    kernel_rows(py, &query, &rows, None, simd::half::dot_rows_f16)
}

/// The same with the rows as bfloat16 (uint16 bits, the top half of each f32).
#[pyfunction]
fn dot_rows_bf16<'py>(
    py: Python<'py>,
    query: numpy::PyReadonlyArray1<'py, f32>,
    rows: numpy::PyReadonlyArray2<'py, u16>,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    kernel_rows(py, &query, &rows, None, simd::bf16::dot_rows_bf16)
}

/// A bfloat16 query (uint16 bits) against bfloat16 rows: `vdpbf16ps` where the CPU has
/// AVX-512 BF16 and the avx512 path is active.
#[pyfunction]
fn dot_rows_bf16_pairs<'py>(
    py: Python<'py>,
    query: numpy::PyReadonlyArray1<'py, u16>,
    rows: numpy::PyReadonlyArray2<'py, u16>,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    kernel_rows(py, &query, &rows, None, simd::bf16::dot_rows_bf16_pairs)
}

/// The bf16 x bf16 kernel path an ISA runs ("avx512-bf16", "avx512", "avx2" or "scalar").
#[pyfunction]
fn bf16_path(name: &str) -> PyResult<&'static str> {
    let isa = simd::Isa::from_name(name).ok_or_else(|| PyTypeError::new_err(format!("unknown ISA {name:?}")))?;
    Ok(simd::bf16::path_name(isa))
}

/// The exact int32 dot products of an int8 query with every row of an int8 matrix (at
/// most `simd::int8::MAX_DIM` values: the kernels' exact-sum bound).
#[pyfunction]
fn dot_rows_i8<'py>(
    py: Python<'py>,
    query: numpy::PyReadonlyArray1<'py, i8>,
    rows: numpy::PyReadonlyArray2<'py, i8>,
) -> PyResult<Bound<'py, PyArray1<i32>>> {
    kernel_rows(py, &query, &rows, Some(simd::int8::MAX_DIM), simd::int8::dot_rows_i8)
}

/// The int8 kernel path an ISA runs ("avx512-vnni", "avx2" or "scalar").
#[pyfunction]
fn int8_path(name: &str) -> PyResult<&'static str> {
    let isa = simd::Isa::from_name(name).ok_or_else(|| PyTypeError::new_err(format!("unknown ISA {name:?}")))?;
    Ok(simd::int8::path_name(isa))
}

/// Verifies the store file at `path` read-only (SQLite's structure, the meta table, every
/// record's checksums) and returns one line per problem; empty when it is whole. Writes
/// nothing, so it is safe on any file: a file that is not a store raises NotAStoreError.
#[pyfunction]
fn verify_store(py: Python<'_>, path: PathBuf) -> PyResult<Vec<String>> {
    native(py, || {
        let mut storage = SqliteStorage::open_as(&path, Durability::Normal, Access::ReadOnly)?;
        storage.verify()
    })
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    ferromem_core::interrupt::set_check(interrupted);
    m.add_class::<PyEngine>()?;
    m.add_class::<RecordRow>()?;
    aio::register(m)?;
    m.add_function(wrap_pyfunction!(buffer_address, m)?)?;
    m.add_function(wrap_pyfunction!(postgres_migrate, m)?)?;
    m.add_function(wrap_pyfunction!(postgres_list_stores, m)?)?;
    m.add_function(wrap_pyfunction!(postgres_create_store, m)?)?;
    m.add_function(wrap_pyfunction!(postgres_drop_store, m)?)?;
    m.add_function(wrap_pyfunction!(calibrate_cpu, m)?)?;
    m.add_function(wrap_pyfunction!(predict_route, m)?)?;
    m.add_function(wrap_pyfunction!(verify_store, m)?)?;
    m.add_function(wrap_pyfunction!(simd_isa, m)?)?;
    m.add_function(wrap_pyfunction!(verify_image, m)?)?;
    m.add_function(wrap_pyfunction!(verify_graph, m)?)?;
    m.add_function(wrap_pyfunction!(supported_isas, m)?)?;
    m.add_function(wrap_pyfunction!(force_isa, m)?)?;
    m.add_function(wrap_pyfunction!(dot_rows_f32, m)?)?;
    m.add_function(wrap_pyfunction!(dot_rows_f16, m)?)?;
    m.add_function(wrap_pyfunction!(dot_rows_i8, m)?)?;
    m.add_function(wrap_pyfunction!(int8_path, m)?)?;
    m.add_function(wrap_pyfunction!(dot_rows_bf16, m)?)?;
    m.add_function(wrap_pyfunction!(dot_rows_bf16_pairs, m)?)?;
    m.add_function(wrap_pyfunction!(bf16_path, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

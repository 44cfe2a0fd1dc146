//! The shared durable layer: a PostgreSQL database that many processes on many hosts use
//! at once. Each process keeps its in-memory replica (the same search code as the
//! embedded store) and catches up from the store's change sequence.
//!
//! **Layout** (schema `public` unless the URL names one; see [`MIGRATIONS`]):
//!
//! ```sql
//! ferromem_schema_versions(version PRIMARY KEY, description, applied_at)
//! ferromem_stores(id PRIMARY KEY, name UNIQUE, epoch, seq, dim, created_at)  -- one row a store
//! ferromem_records(store_id, id, content, scope, categories, metadata, importance, created_at,
//!                  last_accessed, source, private, vector, seq, fields_crc, vector_crc)
//! ferromem_tombstones(store_id, id, seq)
//! ```
//!
//! The text of a record (id, content, scope, source) is stored as UTF-8 in `bytea`:
//! PostgreSQL's `text` cannot hold a NUL character, which a record may. Vectors are
//! little-endian float32 `bytea`, and every row carries the same two checksums as the
//! embedded store's ([`super::checksum`]), verified when it is read.
//!
//! **Why no commit is ever skipped.** A write takes the store's row in `ferromem_stores`
//! `FOR UPDATE` before it reads anything, takes its sequence number as that row's `seq + 1`,
//! and sets the row to it in the same transaction. The next writer of the store waits on
//! that row lock until the commit, so sequence numbers are committed in order: when a
//! reader's snapshot shows the store's row at `seq = n`, every write numbered `<= n` is in
//! the same snapshot, and none numbered `> n` is. (A database sequence, `nextval`, would
//! let a transaction that took 5 commit after one that took 6; a replica that had read
//! up to 6 would never look at 5 again. Here that order cannot arise.) Readers use
//! `REPEATABLE READ` snapshots; writers `READ COMMITTED`, so that after the lock they see
//! every commit before theirs.
//!
//! **Waking replicas.** A write notifies the channel of its schema (`pg_notify`, delivered at
//! commit) with the store and its new position; each process has one listening
//! connection. A replica checks the database itself at least every `max_staleness`
//! seconds, so the bound on staleness never depends on a notification arriving.
//!
//! **Failures.** Connections come from a pool. An operation that loses its connection is
//! retried with backoff until `reconnect_timeout`, then fails with
//! [`Error::Unavailable`]. A write that loses its connection before committing is run
//! again from the start by the engine ([`Error::Retry`]); one that loses it during
//! `COMMIT` asks the server what became of its transaction (`txid_status`) before
//! anything else, so an acknowledged write is never lost and none is applied twice.

use super::checksum::{vector_crc, RawFields};
use super::sqlite::vector_to_blob;
use super::{decode_row, Access, Changes, Damage, Durability, Loaded, Snapshot, Storage, StoredRecord, VectorsAt, WriteOp};
use crate::{runtime, Error, Result};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime as PoolRuntime};
use futures_util::{StreamExt, TryStreamExt};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, NoTls};

/// The schema version this build writes; a database at a newer one is refused.
pub const SCHEMA_VERSION: i32 = 1;

/// The migrations, in order: `MIGRATIONS[v - 1]` takes a schema from version `v - 1` to `v`.
/// `{s}` is the quoted schema name. Each runs once, under an advisory lock, in the same
/// transaction as the row that records it.
pub const MIGRATIONS: &[(&str, &str)] = &[(
    "stores, records and tombstones",
    "
CREATE TABLE {s}.ferromem_stores(
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE,
    epoch bigint NOT NULL DEFAULT 0,
    seq bigint NOT NULL DEFAULT 0,
    dim integer,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE {s}.ferromem_records(
    store_id bigint NOT NULL REFERENCES {s}.ferromem_stores(id) ON DELETE CASCADE,
    id bytea NOT NULL,
    content bytea NOT NULL,
    scope bytea NOT NULL,
    categories text NOT NULL,
    metadata text NOT NULL,
    importance double precision NOT NULL,
    created_at double precision NOT NULL,
    last_accessed double precision NOT NULL,
    source bytea,
    private boolean NOT NULL,
    vector bytea NOT NULL,
    seq bigint NOT NULL,
    fields_crc bigint NOT NULL,
    vector_crc bigint NOT NULL,
    PRIMARY KEY (store_id, id)
);
-- Float vectors do not compress: store them out of line without trying.
ALTER TABLE {s}.ferromem_records ALTER COLUMN vector SET STORAGE EXTERNAL;
CREATE INDEX ferromem_records_seq ON {s}.ferromem_records(store_id, seq);
CREATE TABLE {s}.ferromem_tombstones(
    store_id bigint NOT NULL REFERENCES {s}.ferromem_stores(id) ON DELETE CASCADE,
    id bytea NOT NULL,
    seq bigint NOT NULL,
    PRIMARY KEY (store_id, id)
);
CREATE INDEX ferromem_tombstones_seq ON {s}.ferromem_tombstones(store_id, seq);
",
)];

const RECORD_COLUMNS: &str =
    "id, content, scope, categories, metadata, importance, created_at, last_accessed, source, private, vector, seq, fields_crc, vector_crc";

/// The URL's own options, with their defaults.
const DEFAULT_STORE: &str = "default";
const DEFAULT_SCHEMA: &str = "public";
const DEFAULT_POOL_SIZE: usize = 8;
const DEFAULT_POOL_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_RECONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_STALENESS: Duration = Duration::from_secs(1);
/// Query options passed through to the PostgreSQL connection (libpq's names).
const PASSED_THROUGH: &[&str] = &[
    "connect_timeout",
    "application_name",
    "sslmode",
    "options",
    "keepalives",
    "keepalives_idle",
    "target_session_attrs",
    "host",
    "port",
    "user",
    "dbname",
];
const OWN_OPTIONS: &[&str] = &["store", "schema", "pool_size", "pool_timeout", "reconnect_timeout", "max_staleness"];

/// A `postgresql://` location, parsed. Its Debug and messages never show the password.
#[derive(Clone)]
pub struct PgLocation {
    config: tokio_postgres::Config,
    /// The URL with its password removed and only the server's part: for messages.
    pub shown: String,
    pub store: String,
    pub schema: String,
    pub pool_size: usize,
    pub pool_timeout: Duration,
    pub connect_timeout: Duration,
    pub reconnect_timeout: Duration,
    pub max_staleness: Duration,
    /// What identifies one pool in this process: the connection and the pool's options
    /// (the store is not part of it: the stores of one database share a pool).
    pool_key: String,
}

impl std::fmt::Debug for PgLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgLocation({}, store={:?}, schema={:?})", self.shown, self.store, self.schema)
    }
}

fn percent_decode(text: &str, what: &str) -> Result<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
                let Some(b) = hex else {
                    return Err(Error::InvalidInput(format!(
                        "the PostgreSQL URL's {what} has a '%' that is not followed by two hex digits"
                    )));
                };
                out.push(b);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| Error::InvalidInput(format!("the PostgreSQL URL's {what} is not UTF-8 once decoded")))
}

fn seconds(value: &str, name: &str, allow_zero: bool) -> Result<Duration> {
    let bad = || {
        Error::InvalidInput(format!(
            "the PostgreSQL URL option {name}={value:?} is not a number of seconds{}",
            if allow_zero { " (>= 0)" } else { " (> 0)" }
        ))
    };
    let s: f64 = value.parse().map_err(|_| bad())?;
    if !s.is_finite() || s < 0.0 || (!allow_zero && s == 0.0) || s > 1e6 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(s))
}

/// Replaces the password of a URL in `message`, as written (percent-encoded) and decoded,
/// with `***`.
fn scrub(message: &str, secret: Option<&str>) -> String {
    let Some(raw) = secret.filter(|s| !s.is_empty()) else { return message.to_string() };
    let mut out = message.replace(raw, "***");
    if let Ok(decoded) = percent_decode(raw, "password") {
        if !decoded.is_empty() {
            out = out.replace(&decoded, "***");
        }
    }
    out
}

impl PgLocation {
    /// Parses `postgresql://[user[:password]@]host[:port]/dbname[?options]`.
    pub fn parse(text: &str) -> Result<PgLocation> {
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| Error::InvalidInput("a PostgreSQL location is a URL: 'postgresql://user@host:5432/dbname?store=NAME'".into()))?;
        let (base, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = base.split_once('/').unwrap_or((base, ""));
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((name, pw)) => (name, Some(pw)),
                None => (u, None),
            },
            None => ("", None),
        };
        let secret = password.filter(|p| !p.is_empty());
        let shown_authority = if user.is_empty() { hostport.to_string() } else { format!("{user}@{hostport}") };
        let shown = format!("{}://{shown_authority}/{path}", scheme.to_ascii_lowercase());
        let fail = |msg: String| Error::InvalidInput(scrub(&msg, secret));

        let mut own: HashMap<&str, String> = HashMap::new();
        let mut passed = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if OWN_OPTIONS.contains(&key) {
                if own.insert(key, percent_decode(value, key)?).is_some() {
                    return Err(fail(format!("the PostgreSQL URL gives the option {key} twice")));
                }
            } else if PASSED_THROUGH.contains(&key) {
                if key == "sslmode" && !matches!(value, "disable" | "prefer" | "allow") {
                    return Err(Error::Unsupported(format!(
                        "sslmode={value}: this build of ferromem connects to PostgreSQL without TLS; use sslmode=disable or prefer (or a TLS-terminating proxy such as pgbouncer or stunnel)"
                    )));
                }
                passed.push(pair);
            } else {
                let known: Vec<&str> = OWN_OPTIONS.iter().chain(PASSED_THROUGH).copied().collect();
                return Err(fail(format!("unknown PostgreSQL URL option {key:?}; the options are {}", known.join(", "))));
            }
        }
        let store = own.remove("store").unwrap_or_else(|| DEFAULT_STORE.into());
        if store.is_empty() || store.chars().count() > 200 || store.contains('\0') {
            return Err(fail(format!("store={store:?}: a store's name is 1 to 200 characters, without NUL")));
        }
        let schema = own.remove("schema").unwrap_or_else(|| DEFAULT_SCHEMA.into());
        if schema.is_empty() || schema.len() > 63 || schema.contains('\0') {
            return Err(fail(format!("schema={schema:?}: a schema's name is 1 to 63 bytes, without NUL")));
        }
        let pool_size = match own.remove("pool_size") {
            None => DEFAULT_POOL_SIZE,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| fail(format!("pool_size={v:?}: the pool holds 1 to 1000 connections")))?,
        };
        let pool_timeout = own.remove("pool_timeout").map_or(Ok(DEFAULT_POOL_TIMEOUT), |v| seconds(&v, "pool_timeout", false))?;
        let reconnect_timeout =
            own.remove("reconnect_timeout").map_or(Ok(DEFAULT_RECONNECT_TIMEOUT), |v| seconds(&v, "reconnect_timeout", true))?;
        let max_staleness = own.remove("max_staleness").map_or(Ok(DEFAULT_MAX_STALENESS), |v| seconds(&v, "max_staleness", true))?;

        let mut pg_url = format!("postgresql://{base}");
        if !passed.is_empty() {
            pg_url.push('?');
            pg_url.push_str(&passed.join("&"));
        }
        let mut config: tokio_postgres::Config =
            pg_url.parse().map_err(|e: tokio_postgres::Error| fail(format!("the PostgreSQL URL {shown} cannot be used: {e}")))?;
        if config.get_hosts().is_empty() {
            return Err(fail(format!("the PostgreSQL URL {shown} names no host")));
        }
        if config.get_password().is_none() {
            // libpq's variable: a password kept out of URLs (and out of process listings).
            if let Ok(password) = std::env::var("PGPASSWORD") {
                config.password(password);
            }
        }
        if config.get_user().is_none() {
            // libpq's default: the operating system's user name.
            if let Ok(name) = std::env::var("USER").or_else(|_| std::env::var("USERNAME")) {
                config.user(&name);
            }
        }
        let connect_timeout = config.get_connect_timeout().copied().unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        config.connect_timeout(connect_timeout);
        if config.get_application_name().is_none() {
            config.application_name("ferromem");
        }
        config.keepalives_idle(Duration::from_secs(30));
        let pool_key = format!("{pg_url}\u{0}{schema}\u{0}{pool_size}\u{0}{pool_timeout:?}\u{0}{reconnect_timeout:?}");
        Ok(PgLocation {
            config,
            shown,
            store,
            schema,
            pool_size,
            pool_timeout,
            connect_timeout,
            reconnect_timeout,
            max_staleness,
            pool_key,
        })
    }
}

/// `"name"`, as PostgreSQL quotes an identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The notification channel of a schema: a fixed-length name, whatever the schema's.
fn channel_of(schema: &str) -> String {
    format!("ferromem_{:08x}", crc32fast::hash(schema.as_bytes()))
}

/// What the listening connection learned: the newest position notified for each store,
/// and how many times it (re)started listening (notifications sent while it was not
/// listening are lost: a replica then asks the database).
#[derive(Default)]
struct Notified {
    positions: Mutex<HashMap<i64, (u64, u64)>>,
    restarts: AtomicU64,
    /// Whether the connection is listening now.
    listening: std::sync::atomic::AtomicBool,
}

impl Notified {
    fn record(&self, payload: &str) {
        let mut parts = payload.split(' ').map(str::parse::<i64>);
        if let (Some(Ok(store)), Some(Ok(epoch)), Some(Ok(seq))) = (parts.next(), parts.next(), parts.next()) {
            let at = (epoch.max(0) as u64, seq.max(0) as u64);
            let mut positions = self.positions.lock();
            let entry = positions.entry(store).or_insert(at);
            if at > *entry {
                *entry = at;
            }
        }
    }

    fn position(&self, store: i64) -> Option<(u64, u64)> {
        self.positions.lock().get(&store).copied()
    }
}

/// The listening connection: LISTENs on the schema's channel and records what it hears;
/// reconnects with backoff when the connection ends. Runs until aborted.
async fn listen(config: tokio_postgres::Config, channel: String, notified: Arc<Notified>) {
    let mut pause = Duration::from_millis(100);
    loop {
        if let Ok((client, mut connection)) = config.connect(NoTls).await {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            let sql = format!("LISTEN {}", quote_ident(&channel));
            let listen = client.batch_execute(&sql);
            tokio::pin!(listen);
            let mut listening = false;
            loop {
                tokio::select! {
                    done = &mut listen, if !listening => {
                        if done.is_err() {
                            break;
                        }
                        listening = true;
                        notified.listening.store(true, Ordering::Release);
                        pause = Duration::from_millis(100);
                        notified.restarts.fetch_add(1, Ordering::AcqRel);
                    }
                    message = messages.next() => match message {
                        Some(Ok(AsyncMessage::Notification(n))) => notified.record(n.payload()),
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => break,
                    },
                }
            }
        }
        notified.listening.store(false, Ordering::Release);
        notified.restarts.fetch_add(1, Ordering::AcqRel);
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// The statements of one schema (its name is part of their text).
struct Sql {
    /// `"schema".ferromem_stores`, for the statements on stores themselves.
    stores: String,
    position: String,
    lock: String,
    load: String,
    upserts_since: String,
    deletes_since: String,
    put: String,
    put_fields: String,
    untomb: String,
    delete: String,
    tomb: String,
    set_position: String,
    clear_records: String,
    clear_tombstones: String,
    reset_position: String,
    vectors: String,
}

impl Sql {
    fn new(s: &str) -> Sql {
        let records = format!("{s}.ferromem_records");
        let stores = format!("{s}.ferromem_stores");
        let tombstones = format!("{s}.ferromem_tombstones");
        Sql {
            stores: stores.clone(),
            position: format!("SELECT epoch, seq, dim FROM {stores} WHERE id = $1"),
            lock: format!("SELECT epoch, seq, dim, txid_current() FROM {stores} WHERE id = $1 FOR UPDATE"),
            load: format!("SELECT {RECORD_COLUMNS} FROM {records} WHERE store_id = $1"),
            upserts_since: format!("SELECT {RECORD_COLUMNS} FROM {records} WHERE store_id = $1 AND seq > $2"),
            deletes_since: format!("SELECT id, seq FROM {tombstones} WHERE store_id = $1 AND seq > $2"),
            put: format!(
                "INSERT INTO {records} AS r (store_id, seq, {RECORD_COLUMNS_NO_SEQ}) \
                 SELECT $1, $2, u.* FROM unnest($3::bytea[], $4::bytea[], $5::bytea[], $6::text[], $7::text[], $8::float8[], \
                 $9::float8[], $10::float8[], $11::bytea[], $12::bool[], $13::bytea[], $14::int8[], $15::int8[]) AS u \
                 ON CONFLICT (store_id, id) DO UPDATE SET content = EXCLUDED.content, scope = EXCLUDED.scope, \
                 categories = EXCLUDED.categories, metadata = EXCLUDED.metadata, importance = EXCLUDED.importance, \
                 created_at = EXCLUDED.created_at, last_accessed = EXCLUDED.last_accessed, source = EXCLUDED.source, \
                 private = EXCLUDED.private, vector = EXCLUDED.vector, seq = EXCLUDED.seq, fields_crc = EXCLUDED.fields_crc, \
                 vector_crc = EXCLUDED.vector_crc"
            ),
            put_fields: format!(
                "UPDATE {records} AS r SET content = u.content, scope = u.scope, categories = u.categories, \
                 metadata = u.metadata, importance = u.importance, created_at = u.created_at, last_accessed = u.last_accessed, \
                 source = u.source, private = u.private, seq = $2, fields_crc = u.fields_crc \
                 FROM unnest($3::bytea[], $4::bytea[], $5::bytea[], $6::text[], $7::text[], $8::float8[], $9::float8[], \
                 $10::float8[], $11::bytea[], $12::bool[], $13::int8[]) \
                 AS u(id, content, scope, categories, metadata, importance, created_at, last_accessed, source, private, fields_crc) \
                 WHERE r.store_id = $1 AND r.id = u.id"
            ),
            untomb: format!("DELETE FROM {tombstones} WHERE store_id = $1 AND id = ANY($2::bytea[])"),
            delete: format!("DELETE FROM {records} WHERE store_id = $1 AND id = ANY($2::bytea[])"),
            tomb: format!(
                "INSERT INTO {tombstones}(store_id, id, seq) SELECT $1, unnest($2::bytea[]), $3 \
                 ON CONFLICT (store_id, id) DO UPDATE SET seq = EXCLUDED.seq"
            ),
            set_position: format!(
                "WITH moved AS (UPDATE {stores} SET seq = $2, dim = $3 WHERE id = $1 RETURNING id) \
                 SELECT pg_notify($4, $5) FROM moved"
            ),
            clear_records: format!("DELETE FROM {records} WHERE store_id = $1"),
            clear_tombstones: format!("DELETE FROM {tombstones} WHERE store_id = $1"),
            reset_position: format!(
                "WITH moved AS (UPDATE {stores} SET epoch = $2, seq = $3, dim = NULL WHERE id = $1 RETURNING id) \
                 SELECT pg_notify($4, $5) FROM moved"
            ),
            vectors: format!("SELECT id, vector, seq, vector_crc FROM {records} WHERE store_id = $1 AND id = ANY($2::bytea[])"),
        }
    }
}

/// RECORD_COLUMNS without `seq`, in the order of the `put` statement's arrays.
const RECORD_COLUMNS_NO_SEQ: &str =
    "id, content, scope, categories, metadata, importance, created_at, last_accessed, source, private, vector, fields_crc, vector_crc";

/// What one process shares among the stores of one database and schema: the pool, the
/// listening connection, the statements.
struct Shared {
    pool: Pool,
    /// The quoted schema name.
    ident: String,
    schema: String,
    channel: String,
    shown: String,
    reconnect_timeout: Duration,
    pool_timeout: Duration,
    notified: Arc<Notified>,
    listener: tokio::task::JoinHandle<()>,
    sql: Sql,
    /// Whether this process has seen the schema at [`SCHEMA_VERSION`].
    migrated: Mutex<bool>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// The shared parts in use in this process, by pool key (and fork generation: a child
/// never uses its parent's connections).
static SHARED: Mutex<Vec<(u64, String, Weak<Shared>)>> = Mutex::new(Vec::new());

fn shared_for(loc: &PgLocation) -> Result<Arc<Shared>> {
    let generation = crate::fork::generation();
    let mut all = SHARED.lock();
    all.retain(|(_, _, weak)| weak.strong_count() > 0);
    if let Some(shared) = all.iter().find(|(g, key, _)| *g == generation && *key == loc.pool_key).and_then(|(_, _, w)| w.upgrade()) {
        return Ok(shared);
    }
    let rt = runtime::get();
    let manager = Manager::from_config(loc.config.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    let pool = Pool::builder(manager)
        .max_size(loc.pool_size)
        .runtime(PoolRuntime::Tokio1)
        .wait_timeout(Some(loc.pool_timeout))
        .create_timeout(Some(loc.connect_timeout))
        .recycle_timeout(Some(loc.connect_timeout))
        .build()
        .map_err(|e| Error::Storage(format!("cannot make a connection pool for {}: {e}", loc.shown)))?;
    let notified = Arc::new(Notified::default());
    let channel = channel_of(&loc.schema);
    let listener = rt.spawn(listen(loc.config.clone(), channel.clone(), notified.clone()));
    let ident = quote_ident(&loc.schema);
    let shared = Arc::new(Shared {
        pool,
        sql: Sql::new(&ident),
        ident,
        schema: loc.schema.clone(),
        channel,
        shown: loc.shown.clone(),
        reconnect_timeout: loc.reconnect_timeout,
        pool_timeout: loc.pool_timeout,
        notified,
        listener,
        migrated: Mutex::new(false),
    });
    all.push((generation, loc.pool_key.clone(), Arc::downgrade(&shared)));
    Ok(shared)
}

/// How one attempt at an operation failed: its connection was lost (worth another try), or
/// anything else (final).
enum Fail {
    Lost(String),
    Other(Error),
}

type Attempt<T> = std::result::Result<T, Fail>;

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        Fail::Other(e)
    }
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Fail {
        if is_connection_error(&e) {
            Fail::Lost(e.to_string())
        } else {
            Fail::Other(db_error(&e))
        }
    }
}

/// Whether an error means the connection (or the server) is gone, as opposed to an error
/// of the statement.
fn is_connection_error(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        // 08: connection exception; 57P01-3: the server is shutting down or starting up.
        Some(code) => code.code().starts_with("08") || matches!(code.code(), "57P01" | "57P02" | "57P03"),
        None => std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()),
    }
}

fn db_error(e: &tokio_postgres::Error) -> Error {
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            let msg = format!("PostgreSQL: {} (SQLSTATE {code})", db.message());
            if code == "42501" {
                Error::Storage(format!("{msg}: the database role lacks a privilege ferromem needs (docs/postgres.md lists them)"))
            } else {
                Error::Storage(msg)
            }
        }
        None => Error::Storage(format!("PostgreSQL: {e}")),
    }
}

/// Retries of one operation: pauses of 50 ms doubling to 1 s, until `reconnect_timeout`.
struct Retries<'a> {
    shared: &'a Shared,
    started: Instant,
    pause: Duration,
}

impl<'a> Retries<'a> {
    fn new(shared: &'a Shared) -> Retries<'a> {
        Retries { shared, started: Instant::now(), pause: Duration::from_millis(50) }
    }

    /// After a lost connection: waits and says to try again, or gives up.
    fn after(&mut self, lost: &str) -> Result<()> {
        let waited = self.started.elapsed();
        if waited >= self.shared.reconnect_timeout || crate::interrupt::requested() {
            return Err(Error::Unavailable(format!(
                "the PostgreSQL server at {} cannot be reached (tried for {:.1} s; reconnect_timeout={} s): {lost}",
                self.shared.shown,
                waited.as_secs_f64(),
                self.shared.reconnect_timeout.as_secs_f64()
            )));
        }
        std::thread::sleep(self.pause.min(self.shared.reconnect_timeout.saturating_sub(waited)));
        self.pause = (self.pause * 2).min(Duration::from_secs(1));
        Ok(())
    }

    /// Runs `attempt` until it succeeds, fails for good, or the server stays lost too long.
    fn run<T>(mut self, mut attempt: impl FnMut() -> Attempt<T>) -> Result<T> {
        loop {
            match attempt() {
                Ok(v) => return Ok(v),
                Err(Fail::Other(e)) => return Err(e),
                Err(Fail::Lost(why)) => self.after(&why)?,
            }
        }
    }
}

impl Shared {
    /// A pooled connection; a pool that stays exhausted is a typed error, not a retry.
    async fn conn(&self) -> Attempt<Object> {
        match self.pool.get().await {
            Ok(c) => Ok(c),
            Err(PoolError::Timeout(deadpool_postgres::TimeoutType::Wait)) => Err(Fail::Other(Error::PoolExhausted(format!(
                "no connection to {} became free within pool_timeout={} s (pool_size={}): every pooled connection is busy",
                self.shown,
                self.pool_timeout.as_secs_f64(),
                self.pool.status().max_size
            )))),
            Err(PoolError::Backend(e)) => Err(if is_connection_error(&e) || e.as_db_error().is_none() {
                Fail::Lost(format!("cannot connect: {e}"))
            } else {
                Fail::Other(Error::Unavailable(format!("cannot connect to {}: {}", self.shown, db_error(&e))))
            }),
            Err(PoolError::Timeout(_)) => Err(Fail::Lost("connecting timed out".into())),
            Err(e) => Err(Fail::Other(Error::Storage(format!("the connection pool of {} failed: {e}", self.shown)))),
        }
    }

    /// Migrates the schema unless this process already saw it at [`SCHEMA_VERSION`].
    fn ensure_migrated(&self, access: Access) -> Result<()> {
        let mut migrated = self.migrated.lock();
        if !*migrated {
            Retries::new(self).run(|| runtime::block_on(self.migrate(access)))?;
            *migrated = true;
        }
        Ok(())
    }

    /// Brings the schema to [`SCHEMA_VERSION`] (once per process): creates it and runs the
    /// missing migrations in one transaction under an advisory lock, so concurrent
    /// processes migrate once and in order. Read-only opens never migrate.
    async fn migrate(&self, access: Access) -> Attempt<()> {
        let conn = self.conn().await?;
        let versions = format!("{}.ferromem_schema_versions", self.ident);
        let found = schema_version(&conn, &versions).await?;
        let newer = |v: i32| {
            Fail::Other(Error::Incompatible(format!(
                "the ferromem tables in schema {:?} of {} are at version {v}; this ferromem reads up to version {SCHEMA_VERSION}: upgrade ferromem (the database is left as it is)",
                self.schema, self.shown
            )))
        };
        if found > SCHEMA_VERSION {
            return Err(newer(found));
        }
        if found == SCHEMA_VERSION {
            return Ok(());
        }
        if access == Access::ReadOnly {
            return Err(Fail::Other(Error::NotAStore(format!(
                "schema {:?} of {} holds no ferromem store (no tables at version {SCHEMA_VERSION}); a read-only open creates nothing",
                self.schema, self.shown
            ))));
        }
        conn.batch_execute("BEGIN").await?;
        let migrated: Attempt<()> = async {
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", &[&format!("ferromem migration {}", self.schema)]).await?;
            let schema_exists = conn.query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&self.schema]).await?.is_some();
            if !schema_exists {
                conn.batch_execute(&format!("CREATE SCHEMA {}", self.ident)).await?;
            }
            conn.batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {versions}(version integer PRIMARY KEY, description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            ))
            .await?;
            // Read again under the lock: another process may have migrated meanwhile.
            let at = schema_version(&conn, &versions).await?;
            if at > SCHEMA_VERSION {
                return Err(newer(at));
            }
            for (v, (description, sql)) in MIGRATIONS.iter().enumerate().skip(at as usize) {
                conn.batch_execute(&sql.replace("{s}", &self.ident)).await?;
                conn.execute(&format!("INSERT INTO {versions}(version, description) VALUES ($1, $2)"), &[&(v as i32 + 1), description]).await?;
            }
            Ok(())
        }
        .await;
        finish(conn, migrated.is_ok()).await;
        migrated
    }
}

/// Whether the table (a qualified, quoted name) exists.
async fn table_exists(conn: &Object, table: &str) -> std::result::Result<bool, tokio_postgres::Error> {
    let found: Option<String> = conn.query_one("SELECT to_regclass($1)::text", &[&table]).await?.try_get(0)?;
    Ok(found.is_some())
}

/// The version of the ferromem tables in a schema (0: none), from its versions table.
async fn schema_version(conn: &Object, versions: &str) -> std::result::Result<i32, tokio_postgres::Error> {
    if !table_exists(conn, versions).await? {
        return Ok(0);
    }
    conn.query_one(&format!("SELECT coalesce(max(version), 0) FROM {versions}"), &[]).await?.try_get(0)
}

/// Ends the transaction a pooled connection holds: COMMIT when `ok`, else ROLLBACK; a
/// connection that cannot end it is closed instead of going back to the pool.
async fn finish(conn: Object, ok: bool) {
    let end = conn.batch_execute(if ok { "COMMIT" } else { "ROLLBACK" }).await;
    if end.is_err() {
        drop(Object::take(conn));
    }
}

const BEGIN_SNAPSHOT: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY";

/// The store's position (epoch, seq, dim), read with `sql.position`; a store whose row is
/// gone was dropped while it was open.
async fn read_position(conn: &Object, sql: &Sql, store_id: i64) -> Attempt<(u64, u64, Option<usize>)> {
    let stmt = conn.prepare_cached(&sql.position).await?;
    match conn.query_opt(&stmt, &[&store_id]).await? {
        Some(row) => position_of(&row),
        None => Err(Fail::Other(dropped())),
    }
}

fn dropped() -> Error {
    Error::NotAStore("the store was deleted from the database while it was open (ferromem.postgres.drop_store, or by hand)".into())
}

fn position_of(row: &tokio_postgres::Row) -> Attempt<(u64, u64, Option<usize>)> {
    let epoch: i64 = row.try_get(0)?;
    let seq: i64 = row.try_get(1)?;
    let dim: Option<i32> = row.try_get(2)?;
    Ok((epoch.max(0) as u64, seq.max(0) as u64, dim.map(|d| d.max(0) as usize)))
}

/// One row of `ferromem_records` (RECORD_COLUMNS), verified and decoded, or its damage.
fn read_record(row: &tokio_postgres::Row) -> Attempt<std::result::Result<StoredRecord, Damage>> {
    let id: &[u8] = row.try_get(0)?;
    let seq = row.try_get::<_, i64>(11)?.max(0) as u64;
    let categories: &str = row.try_get(3)?;
    let metadata: &str = row.try_get(4)?;
    let raw = RawFields {
        id,
        content: row.try_get(1)?,
        scope: row.try_get(2)?,
        categories_json: categories.as_bytes(),
        metadata_json: metadata.as_bytes(),
        importance: row.try_get(5)?,
        created_at: row.try_get(6)?,
        last_accessed: row.try_get(7)?,
        source: row.try_get(8)?,
        private: row.try_get(9)?,
    };
    let vector: &[u8] = row.try_get(10)?;
    let sums = (row.try_get::<_, i64>(12)?, row.try_get::<_, i64>(13)?);
    Ok(decode_row(raw, vector, Some(sums), seq).map_err(|what| Damage { id: String::from_utf8_lossy(id).into_owned(), seq, what }))
}

/// Runs prepared (and cached) statements in order, sending them all before awaiting any
/// answer; returns each one's row count.
async fn execute_pipelined(
    conn: &Object,
    statements: &[(&str, &[&(dyn ToSql + Sync)])],
) -> std::result::Result<Vec<u64>, tokio_postgres::Error> {
    let mut prepared = Vec::with_capacity(statements.len());
    for (sql, _) in statements {
        prepared.push(conn.prepare_cached(sql).await?);
    }
    let runs = prepared.iter().zip(statements).map(|(stmt, (_, params))| conn.execute(stmt, params));
    futures_util::future::try_join_all(runs).await
}

fn params_iter<'a>(params: &'a [&'a (dyn ToSql + Sync)]) -> impl ExactSizeIterator<Item = &'a dyn ToSql> + 'a {
    params.iter().map(|p| *p as &dyn ToSql)
}

/// A write transaction in progress: its connection and its transaction id (which tells
/// what became of it if the connection is lost during COMMIT).
struct WriteTx {
    conn: Object,
    xid: i64,
    /// The store's position, read under the lock.
    epoch: u64,
    seq: u64,
}

/// One store of a PostgreSQL database, through the process's shared pool.
pub struct PostgresStorage {
    shared: Arc<Shared>,
    store: String,
    store_id: i64,
    access: Access,
    max_staleness: Duration,
    tx: Option<WriteTx>,
    last_poll: Option<Instant>,
    restarts_seen: u64,
}

impl std::fmt::Debug for PostgresStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PostgresStorage({}, schema={:?}, store_id={})", self.shared.shown, self.shared.schema, self.store_id)
    }
}

impl Drop for PostgresStorage {
    fn drop(&mut self) {
        // A transaction left open (a panic between begin and commit) never goes back to
        // the pool: closing the connection makes the server roll it back.
        if let Some(tx) = self.tx.take() {
            drop(Object::take(tx.conn));
        }
    }
}

impl PostgresStorage {
    /// Opens the store named by `url` (migrating the schema first when needed and allowed,
    /// and creating the store's row when it is new).
    pub fn open(url: &str, access: Access, _durability: Durability) -> Result<PostgresStorage> {
        let loc = PgLocation::parse(url)?;
        let shared = shared_for(&loc)?;
        shared.ensure_migrated(access)?;
        let store = loc.store.as_str();
        let stores = &shared.sql.stores;
        let store_id = Retries::new(&shared).run(|| {
            runtime::block_on(async {
                let conn = shared.conn().await?;
                let find = format!("SELECT id FROM {stores} WHERE name = $1");
                if let Some(row) = conn.query_opt(&find, &[&store]).await? {
                    return Ok(row.try_get::<_, i64>(0)?);
                }
                // Only a new store is inserted: an insert that meets an existing row would
                // wait for any write in progress on it (the row is locked while one runs).
                if access == Access::ReadWrite {
                    conn.execute(&format!("INSERT INTO {stores}(name) VALUES ($1) ON CONFLICT (name) DO NOTHING"), &[&store]).await?;
                }
                match conn.query_opt(&find, &[&store]).await? {
                    Some(row) => Ok(row.try_get::<_, i64>(0)?),
                    None => Err(Fail::Other(Error::NotAStore(format!(
                        "there is no store named {store:?} in schema {:?} of {}; a read-only open creates nothing",
                        shared.schema, shared.shown
                    )))),
                }
            })
        })?;
        Ok(PostgresStorage {
            shared,
            store: loc.store.clone(),
            store_id,
            access,
            max_staleness: loc.max_staleness,
            tx: None,
            last_poll: None,
            restarts_seen: 0,
        })
    }

    fn writable(&self) -> Result<()> {
        match self.access {
            Access::ReadWrite => Ok(()),
            Access::ReadOnly => Err(Error::ReadOnly(format!(
                "the store at {} was opened read-only: open it without read_only=True to change it",
                self.shared.shown
            ))),
        }
    }

    /// The transaction's connection; the write transaction is lost (the engine starts the
    /// write again) when it broke.
    fn lost_tx(&mut self, fail: Fail) -> Error {
        if let Some(tx) = self.tx.take() {
            drop(Object::take(tx.conn));
        }
        match fail {
            Fail::Lost(why) => Error::Retry(format!("the connection to {} was lost inside a write: {why}", self.shared.shown)),
            Fail::Other(e) => e,
        }
    }

    /// Runs `f` on the open write transaction's connection; a lost connection ends it.
    fn in_tx<T>(&mut self, f: impl AsyncFnOnce(&Object, i64, &Shared) -> Attempt<T>) -> Result<T> {
        let Some(tx) = self.tx.as_ref() else {
            return Err(Error::Storage("no write transaction is open".into()));
        };
        let r = runtime::block_on(f(&tx.conn, self.store_id, &self.shared));
        r.map_err(|fail| self.lost_tx(fail))
    }
}

async fn read_changes(conn: &Object, sql: &Sql, store_id: i64, epoch: u64, seq: u64) -> Attempt<Changes> {
    let (db_epoch, db_seq, dim) = read_position(conn, sql, store_id).await?;
    if db_epoch != epoch || db_seq < seq {
        return Ok(Changes::Reload(read_all(conn, sql, store_id).await?));
    }
    if db_seq == seq {
        return Ok(Changes::None);
    }
    let since = seq as i64;
    let (mut upserts, mut damaged) = (Vec::new(), Vec::new());
    let (upserts_stmt, deletes_stmt) = (conn.prepare_cached(&sql.upserts_since).await?, conn.prepare_cached(&sql.deletes_since).await?);
    for row in conn.query(&upserts_stmt, &[&store_id, &since]).await? {
        match read_record(&row)? {
            Ok(r) => upserts.push(r),
            Err(d) => damaged.push(d),
        }
    }
    let mut deletes = Vec::new();
    for row in conn.query(&deletes_stmt, &[&store_id, &since]).await? {
        let id: &[u8] = row.try_get(0)?;
        deletes.push((String::from_utf8_lossy(id).into_owned(), row.try_get::<_, i64>(1)?.max(0) as u64));
    }
    Ok(Changes::Delta { epoch: db_epoch, seq: db_seq, dim, upserts, deletes, damaged })
}

async fn read_all(conn: &Object, sql: &Sql, store_id: i64) -> Attempt<Snapshot> {
    let mut records = Vec::new();
    let Loaded { epoch, seq, dim, damaged } = stream_all(conn, sql, store_id, &mut |r| {
        records.push(r);
        Ok(())
    })
    .await?;
    Ok(Snapshot { epoch, seq, dim, records, damaged })
}

async fn stream_all(conn: &Object, sql: &Sql, store_id: i64, sink: &mut dyn FnMut(StoredRecord) -> Result<()>) -> Attempt<Loaded> {
    let (epoch, seq, dim) = read_position(conn, sql, store_id).await?;
    let stmt = conn.prepare_cached(&sql.load).await?;
    let rows = conn.query_raw(&stmt, params_iter(&[&store_id])).await?;
    futures_util::pin_mut!(rows);
    let mut damaged = Vec::new();
    while let Some(row) = rows.try_next().await? {
        match read_record(&row)? {
            Ok(r) => sink(r)?,
            Err(d) => damaged.push(d),
        }
    }
    Ok(Loaded { epoch, seq, dim, damaged })
}

impl Storage for PostgresStorage {
    fn load_each(&mut self, sink: &mut dyn FnMut(StoredRecord) -> Result<()>) -> Result<Loaded> {
        let shared = self.shared.clone();
        let store_id = self.store_id;
        // Retried only while nothing reached the sink: records already handed over cannot
        // be taken back.
        let delivered = std::cell::Cell::new(false);
        let mut counting = |r: StoredRecord| {
            delivered.set(true);
            sink(r)
        };
        let mut retries = Retries::new(&shared);
        loop {
            let attempt = runtime::block_on(async {
                let conn = shared.conn().await?;
                conn.batch_execute(BEGIN_SNAPSHOT).await?;
                let r = stream_all(&conn, &shared.sql, store_id, &mut counting).await;
                finish(conn, r.is_ok()).await;
                r
            });
            match attempt {
                Ok(loaded) => return Ok(loaded),
                Err(Fail::Other(e)) => return Err(e),
                Err(Fail::Lost(why)) if delivered.get() => {
                    return Err(Error::Unavailable(format!("the connection to {} was lost while the store was read: {why}", shared.shown)))
                }
                Err(Fail::Lost(why)) => retries.after(&why)?,
            }
        }
    }

    fn maybe_changed(&mut self, epoch: u64, seq: u64) -> Result<bool> {
        if self.shared.notified.position(self.store_id).is_some_and(|at| at > (epoch, seq)) {
            return Ok(true);
        }
        let restarts = self.shared.notified.restarts.load(Ordering::Acquire);
        if restarts != self.restarts_seen {
            // The listener (re)connected: what was notified meanwhile is lost. Ask.
            self.restarts_seen = restarts;
            self.last_poll = None;
        }
        if self.last_poll.is_some_and(|t| t.elapsed() < self.max_staleness) {
            return Ok(false);
        }
        let asked = Instant::now();
        let (shared, store_id) = (&self.shared, self.store_id);
        let (db_epoch, db_seq, _) = Retries::new(shared).run(|| {
            runtime::block_on(async {
                let conn = shared.conn().await?;
                read_position(&conn, &shared.sql, store_id).await
            })
        })?;
        self.last_poll = Some(asked);
        Ok((db_epoch, db_seq) != (epoch, seq))
    }

    fn changes_since(&mut self, epoch: u64, seq: u64) -> Result<Changes> {
        if let Some(tx) = &self.tx {
            if (tx.epoch, tx.seq) == (epoch, seq) {
                return Ok(Changes::None); // the position read under the lock: nothing new
            }
            // Inside the write transaction, after its lock: READ COMMITTED sees every commit.
            return self.in_tx(async |conn, store_id, shared| read_changes(conn, &shared.sql, store_id, epoch, seq).await);
        }
        let (shared, store_id) = (&self.shared, self.store_id);
        Retries::new(shared).run(|| {
            runtime::block_on(async {
                let conn = shared.conn().await?;
                conn.batch_execute(BEGIN_SNAPSHOT).await?;
                let r = read_changes(&conn, &shared.sql, store_id, epoch, seq).await;
                finish(conn, r.is_ok()).await;
                r
            })
        })
    }

    fn begin_write(&mut self) -> Result<()> {
        self.writable()?;
        if let Some(tx) = self.tx.take() {
            drop(Object::take(tx.conn)); // never reuse a transaction left open
        }
        let (shared, store_id) = (&self.shared, self.store_id);
        let tx = Retries::new(shared).run(|| {
            runtime::block_on(async {
                let conn = shared.conn().await?;
                // The store's row lock: one writer of this store at a time, across hosts.
                // BEGIN and the lock go in one round trip (pipelined).
                let locked = async {
                    let lock = conn.prepare_cached(&shared.sql.lock).await?;
                    let params: [&(dyn ToSql + Sync); 1] = [&store_id];
                    let (_, row) =
                        tokio::try_join!(conn.batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED"), conn.query_opt(&lock, &params))?;
                    let row = row.ok_or_else(dropped)?;
                    let (epoch, seq, _) = position_of(&row)?;
                    Ok::<(i64, u64, u64), Fail>((row.try_get(3)?, epoch, seq))
                }
                .await;
                match locked {
                    Ok((xid, epoch, seq)) => Ok(WriteTx { conn, xid, epoch, seq }),
                    Err(fail) => {
                        finish(conn, false).await;
                        Err(fail)
                    }
                }
            })
        })?;
        self.tx = Some(tx);
        Ok(())
    }

    fn write(&mut self, ops: &[WriteOp<'_>], seq: u64, dim: Option<usize>) -> Result<()> {
        let mut full = Columns::default();
        let mut fields_only = Columns::default();
        let mut deleted: Vec<&[u8]> = Vec::new();
        for op in ops {
            match op {
                WriteOp::Put { rec, vector: [] } => fields_only.push(rec, None)?,
                WriteOp::Put { rec, vector } => full.push(rec, Some(vector))?,
                WriteOp::Delete { id } => deleted.push(id.as_bytes()),
            }
        }
        let seq_i = seq as i64;
        let dim_i = dim.map(|d| d as i32);
        let epoch = self.tx.as_ref().map_or(0, |tx| tx.epoch);
        // The new position, notified to the other processes at commit.
        let payload = format!("{} {epoch} {seq}", self.store_id);
        self.in_tx(async |conn, store_id, shared| {
            let sql = &shared.sql;
            let (c, f) = (&full, &fields_only);
            let delete_params: [&(dyn ToSql + Sync); 2] = [&store_id, &deleted];
            let tomb_params: [&(dyn ToSql + Sync); 3] = [&store_id, &deleted, &seq_i];
            let put_params: [&(dyn ToSql + Sync); 15] = [
                &store_id,
                &seq_i,
                &c.ids,
                &c.contents,
                &c.scopes,
                &c.categories,
                &c.metadata,
                &c.importance,
                &c.created_at,
                &c.last_accessed,
                &c.sources,
                &c.private,
                &c.vectors,
                &c.fields_crc,
                &c.vector_crc,
            ];
            let untomb_params: [&(dyn ToSql + Sync); 2] = [&store_id, &c.ids];
            let fields_params: [&(dyn ToSql + Sync); 13] = [
                &store_id,
                &seq_i,
                &f.ids,
                &f.contents,
                &f.scopes,
                &f.categories,
                &f.metadata,
                &f.importance,
                &f.created_at,
                &f.last_accessed,
                &f.sources,
                &f.private,
                &f.fields_crc,
            ];
            let position_params: [&(dyn ToSql + Sync); 5] = [&store_id, &seq_i, &dim_i, &shared.channel, &payload];
            // Every statement is sent before any answer is awaited (the protocol's
            // pipelining): one round trip for the whole write. The server runs them in order.
            let mut statements: Vec<(&str, &[&(dyn ToSql + Sync)])> = Vec::with_capacity(6);
            if !deleted.is_empty() {
                statements.push((&sql.delete, &delete_params));
                statements.push((&sql.tomb, &tomb_params));
            }
            if !c.ids.is_empty() {
                statements.push((&sql.put, &put_params));
                statements.push((&sql.untomb, &untomb_params));
            }
            let fields_at = statements.len();
            if !f.ids.is_empty() {
                statements.push((&sql.put_fields, &fields_params));
            }
            statements.push((&sql.set_position, &position_params));
            let counts = execute_pipelined(conn, &statements).await?;
            if !f.ids.is_empty() && counts[fields_at] as usize != f.ids.len() {
                return Err(Fail::Other(Error::Storage("a record vanished inside its write transaction".into())));
            }
            Ok(())
        })
    }

    fn reset(&mut self, epoch: u64, seq: u64) -> Result<()> {
        let (epoch_i, seq_i) = (epoch as i64, seq as i64);
        self.in_tx(async |conn, store_id, shared| {
            let sql = &shared.sql;
            let payload = format!("{store_id} {epoch} {seq}");
            let store: [&(dyn ToSql + Sync); 1] = [&store_id];
            let position: [&(dyn ToSql + Sync); 5] = [&store_id, &epoch_i, &seq_i, &shared.channel, &payload];
            execute_pipelined(conn, &[(&sql.clear_records, &store), (&sql.clear_tombstones, &store), (&sql.reset_position, &position)])
                .await?;
            Ok(())
        })
    }

    fn commit(&mut self) -> Result<()> {
        let Some(tx) = self.tx.take() else {
            return Err(Error::Storage("no write transaction is open".into()));
        };
        let WriteTx { conn, xid, .. } = tx;
        let committed = runtime::block_on(async {
            let r = conn.batch_execute("COMMIT").await;
            if r.is_err() {
                drop(Object::take(conn));
            }
            r
        });
        match committed {
            Ok(()) => Ok(()),
            Err(e) if is_connection_error(&e) => self.commit_outcome(xid, &e.to_string()),
            Err(e) => Err(db_error(&e)),
        }
    }

    fn rollback(&mut self) {
        if let Some(tx) = self.tx.take() {
            runtime::block_on(finish(tx.conn, false));
        }
    }

    fn as_vectors_at(&mut self) -> Option<&mut dyn VectorsAt> {
        Some(self)
    }

    fn status(&self) -> serde_json::Value {
        let pool = self.shared.pool.status();
        serde_json::json!({
            "backend": "postgresql",
            "location": self.shared.shown,
            "schema": self.shared.schema,
            "store": self.store,
            "pool": {
                "max_size": pool.max_size,
                "open": pool.size,
                "idle": pool.available,
                "waiting": pool.waiting,
                "timeout_s": self.shared.pool_timeout.as_secs_f64(),
            },
            "listening": self.shared.notified.listening.load(Ordering::Acquire),
            "max_staleness_s": self.max_staleness.as_secs_f64(),
            "reconnect_timeout_s": self.shared.reconnect_timeout.as_secs_f64(),
        })
    }
}

impl PostgresStorage {
    /// The connection broke during COMMIT: the transaction may or may not have committed.
    /// Asks the server (`txid_status`), on a new connection, until it can tell: committed
    /// is success; aborted (or unknown to the server) is a write to run again.
    fn commit_outcome(&mut self, xid: i64, why: &str) -> Result<()> {
        let shared = &self.shared;
        Retries::new(shared).run(|| {
            runtime::block_on(async {
                let conn = shared.conn().await?;
                let status: Option<String> = conn.query_one("SELECT txid_status($1)", &[&xid]).await?.try_get(0)?;
                match status.as_deref() {
                    Some("committed") => Ok(()),
                    Some("in progress") => Err(Fail::Lost("the commit is still in progress".into())),
                    _ => Err(Fail::Other(Error::Retry(format!(
                        "the connection to {} was lost during a commit, which did not happen: {why}",
                        shared.shown
                    )))),
                }
            })
        })
    }
}

/// The columns of the records one statement writes, as arrays.
#[derive(Default)]
struct Columns<'a> {
    ids: Vec<&'a [u8]>,
    contents: Vec<&'a [u8]>,
    scopes: Vec<&'a [u8]>,
    categories: Vec<String>,
    metadata: Vec<&'a str>,
    importance: Vec<f64>,
    created_at: Vec<f64>,
    last_accessed: Vec<f64>,
    sources: Vec<Option<&'a [u8]>>,
    private: Vec<bool>,
    vectors: Vec<Vec<u8>>,
    fields_crc: Vec<i64>,
    vector_crc: Vec<i64>,
}

impl<'a> Columns<'a> {
    fn push(&mut self, rec: &'a crate::record::Record, vector: Option<&[f32]>) -> Result<()> {
        let categories = serde_json::to_string(&rec.categories).map_err(|e| Error::InvalidInput(format!("categories: {e}")))?;
        self.fields_crc.push(RawFields::of(rec, &categories).crc() as i64);
        self.ids.push(rec.id.as_bytes());
        self.contents.push(rec.content.as_bytes());
        self.scopes.push(rec.scope.as_bytes());
        self.categories.push(categories);
        self.metadata.push(&rec.metadata_json);
        self.importance.push(rec.importance);
        self.created_at.push(rec.created_at);
        self.last_accessed.push(rec.last_accessed);
        self.sources.push(rec.source.as_deref().map(str::as_bytes));
        self.private.push(rec.private);
        if let Some(v) = vector {
            let blob = vector_to_blob(v);
            self.vector_crc.push(vector_crc(&blob) as i64);
            self.vectors.push(blob);
        }
        Ok(())
    }
}

impl VectorsAt for PostgresStorage {
    fn vectors_at(&mut self, epoch: u64, seq: u64, ids: &[Arc<str>]) -> Result<Option<Vec<Option<Vec<f32>>>>> {
        let (shared, store_id) = (&self.shared, self.store_id);
        let keys: Vec<&[u8]> = ids.iter().map(|id| id.as_bytes()).collect();
        Retries::new(shared).run(|| {
            runtime::block_on(async {
                let conn = shared.conn().await?;
                conn.batch_execute(BEGIN_SNAPSHOT).await?;
                let r: Attempt<Option<Vec<Option<Vec<f32>>>>> = async {
                    let (db_epoch, db_seq, _) = read_position(&conn, &shared.sql, store_id).await?;
                    if db_epoch != epoch || db_seq < seq {
                        return Ok(None);
                    }
                    let mut found: HashMap<Vec<u8>, Vec<f32>> = HashMap::with_capacity(keys.len());
                    let stmt = conn.prepare_cached(&shared.sql.vectors).await?;
                    for row in conn.query(&stmt, &[&store_id, &keys]).await? {
                        let id: &[u8] = row.try_get(0)?;
                        let blob: &[u8] = row.try_get(1)?;
                        // A row no newer than `seq` holds what it held at `seq`.
                        if row.try_get::<_, i64>(2)? as u64 > seq {
                            return Ok(None);
                        }
                        if row.try_get::<_, i64>(3)? != vector_crc(blob) as i64 {
                            return Err(Fail::Other(Error::Corrupt(format!(
                                "record {:?} is damaged in the database: its vector fails its checksum. Save the record again or delete it",
                                String::from_utf8_lossy(id)
                            ))));
                        }
                        found.insert(id.to_vec(), super::sqlite::blob_to_vector(blob)?);
                    }
                    let mut out = Vec::with_capacity(keys.len());
                    for key in &keys {
                        match found.remove(*key) {
                            Some(v) => out.push(Some(v)),
                            None if db_seq > seq => return Ok(None), // possibly deleted since
                            None => out.push(None),
                        }
                    }
                    Ok(Some(out))
                }
                .await;
                finish(conn, r.is_ok()).await;
                r
            })
        })
    }
}

/// Opens the schema of `url` as a store would (migrating it when needed) and returns its
/// version: what `ferromem postgres migrate` runs, so an operator can migrate with a
/// privileged role before the application's role opens stores.
pub fn migrate(url: &str) -> Result<i32> {
    let loc = PgLocation::parse(url)?;
    let shared = shared_for(&loc)?;
    shared.ensure_migrated(Access::ReadWrite)?;
    Ok(SCHEMA_VERSION)
}

/// The names of the stores in the database and schema of `url` that start with `prefix`,
/// sorted. A schema without ferromem's tables has none (nothing is created).
pub fn list_stores(url: &str, prefix: &str) -> Result<Vec<String>> {
    let loc = PgLocation::parse(url)?;
    let shared = shared_for(&loc)?;
    let stores = &shared.sql.stores;
    Retries::new(&shared).run(|| {
        runtime::block_on(async {
            let conn = shared.conn().await?;
            if !table_exists(&conn, stores).await? {
                return Ok(Vec::new());
            }
            let rows = conn.query(&format!("SELECT name FROM {stores} WHERE starts_with(name, $1) ORDER BY name"), &[&prefix]).await?;
            Ok(rows.iter().map(|r| r.try_get::<_, String>(0)).collect::<std::result::Result<Vec<_>, _>>()?)
        })
    })
}

/// Creates the store `url` names (its `store` option), empty, migrating the schema first
/// when needed, as an open for writing would; true when this call created it, false when
/// it existed. The name is unique in the schema, so of processes creating the same store
/// at once exactly one is told it created it (what an exclusive create, such as a RAG
/// client's `create_collection`, needs). Should the server's acknowledgement be lost and
/// the statement run again, the store exists and the answer is false.
pub fn create_store(url: &str) -> Result<bool> {
    let loc = PgLocation::parse(url)?;
    let shared = shared_for(&loc)?;
    shared.ensure_migrated(Access::ReadWrite)?;
    let stores = &shared.sql.stores;
    let name = loc.store.as_str();
    Retries::new(&shared).run(|| {
        runtime::block_on(async {
            let conn = shared.conn().await?;
            let sql = format!("INSERT INTO {stores}(name) VALUES ($1) ON CONFLICT (name) DO NOTHING");
            Ok(conn.execute(&sql, &[&name]).await? == 1)
        })
    })
}

/// Deletes the store `url` names, with all its records, in one transaction; false when
/// there was none. Processes that have it open get an error at their next catch-up.
pub fn drop_store(url: &str) -> Result<bool> {
    let loc = PgLocation::parse(url)?;
    let shared = shared_for(&loc)?;
    let stores = &shared.sql.stores;
    let name = loc.store.as_str();
    Retries::new(&shared).run(|| {
        runtime::block_on(async {
            let conn = shared.conn().await?;
            if !table_exists(&conn, stores).await? {
                return Ok(false);
            }
            Ok(conn.execute(&format!("DELETE FROM {stores} WHERE name = $1"), &[&name]).await? > 0)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_and_keeps_the_password_out_of_sight() {
        let loc =
            PgLocation::parse("postgresql://alice:s3cret@db.example:6543/mem?store=team%20a&schema=t1&pool_size=3&max_staleness=0.25")
                .unwrap();
        assert_eq!(loc.store, "team a");
        assert_eq!(loc.schema, "t1");
        assert_eq!(loc.pool_size, 3);
        assert_eq!(loc.max_staleness, Duration::from_millis(250));
        assert_eq!(loc.shown, "postgresql://alice@db.example:6543/mem");
        assert!(!format!("{loc:?}").contains("s3cret"));
        assert_eq!(loc.config.get_ports(), &[6543]);
        assert_eq!(loc.config.get_dbname(), Some("mem"));
    }

    #[test]
    fn refuses_bad_options_without_echoing_the_password() {
        assert_eq!(scrub("a p%40ss b p@ss c", Some("p%40ss")), "a *** b *** c");
        for url in [
            "postgresql://u:s3cret@h/db?pool_size=0",
            "postgresql://u:s3cret@h/db?nonsense=1",
            "postgresql://u:s3cret@h/db?store=",
            "postgresql://u:s3cret@h/db?max_staleness=-1",
            "postgresql://u:s3cret@h/db?store=a&store=b",
        ] {
            match PgLocation::parse(url) {
                Err(Error::InvalidInput(msg)) => assert!(!msg.contains("s3cret"), "{msg}"),
                other => panic!("{url}: {other:?}"),
            }
        }
        assert!(matches!(PgLocation::parse("postgresql://h/db?sslmode=require"), Err(Error::Unsupported(_))));
    }

    #[test]
    fn notifications_keep_the_newest_position() {
        let n = Notified::default();
        n.record("7 0 5");
        n.record("7 0 3");
        n.record("garbage");
        assert_eq!(n.position(7), Some((0, 5)));
        n.record("7 1 1");
        assert_eq!(n.position(7), Some((1, 1)));
        assert_eq!(n.position(8), None);
    }
}

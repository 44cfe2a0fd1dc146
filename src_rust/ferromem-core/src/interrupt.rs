//! Giving up a wait when the caller is interrupted (Ctrl-C). The core knows nothing of
//! Python: a binding installs a check ("has the caller of this thread been
//! interrupted?"), and the long waits inside the engine (SQLite's write lock, which another
//! process may hold for minutes) ask it between pauses and stop waiting when it says so.

use std::sync::OnceLock;

static CHECK: OnceLock<fn() -> bool> = OnceLock::new();

/// Installs the check; the first one installed stays.
pub fn set_check(check: fn() -> bool) {
    let _ = CHECK.set(check);
}

/// Whether the caller on this thread asked to stop waiting.
pub fn requested() -> bool {
    CHECK.get().is_some_and(|check| check())
}

//! What the shared store logic (`src/sql/`) needs that SQLite has its own way of doing.

use sqlx::{Sqlite, Transaction};

use crate::Result;

pub(super) type Db = Sqlite;
pub(super) type DbRow = sqlx::sqlite::SqliteRow;
pub(super) type DbPool = sqlx::SqlitePool;
pub(super) type DbConn = sqlx::SqliteConnection;
/// The store type the shared logic implements [`crate::Store`] for.
pub(super) type Backend = super::SqliteStore;

/// A transaction that will write: `BEGIN IMMEDIATE` takes the database's write lock up front
/// (see the backend's docs for why a deferred one must not read before it writes).
pub(super) async fn begin_write(pool: &DbPool) -> Result<Transaction<'static, Db>> {
    Ok(pool.begin_with("BEGIN IMMEDIATE").await?)
}

/// A read transaction that sees one snapshot: in WAL mode, any transaction does.
pub(super) async fn begin_snapshot(pool: &DbPool) -> Result<Transaction<'static, Db>> {
    Ok(pool.begin().await?)
}

/// The suffix that locks the rows a read-then-write transaction selects: none here, its write
/// lock (`begin_write`) already keeps every other writer out until it ends.
macro_rules! for_update {
    () => {
        ""
    };
}
pub(super) use for_update;

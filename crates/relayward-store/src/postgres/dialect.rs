//! What the shared store logic (`src/sql/`) needs that PostgreSQL has its own way of doing.

use sqlx::{Postgres, Transaction};

use crate::Result;

pub(super) type Db = Postgres;
pub(super) type DbRow = sqlx::postgres::PgRow;
pub(super) type DbPool = sqlx::PgPool;
pub(super) type DbConn = sqlx::PgConnection;
/// The store type the shared logic implements [`crate::Store`] for.
pub(super) type Backend = super::PgStore;

/// A transaction that will write: a plain `BEGIN` (READ COMMITTED). Rows are locked as they
/// are read (`for_update!`) or written, not up front.
pub(super) async fn begin_write(pool: &DbPool) -> Result<Transaction<'static, Db>> {
    Ok(pool.begin().await?)
}

/// A read transaction that sees one snapshot of the database for all its statements.
pub(super) async fn begin_snapshot(pool: &DbPool) -> Result<Transaction<'static, Db>> {
    Ok(pool
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?)
}

/// The suffix that locks the rows a read-then-write transaction selects, until it ends.
macro_rules! for_update {
    () => {
        " FOR UPDATE"
    };
}
pub(super) use for_update;

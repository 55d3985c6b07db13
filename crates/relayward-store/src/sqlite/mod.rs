//! SQLite backend.
//!
//! One database file holds the directory, the audit log and the message trace. The CLI and a
//! running server open the same file at once, so:
//! - the file is in WAL mode (readers never block the writer and vice versa);
//! - every connection waits up to [`BUSY_TIMEOUT`] for a lock instead of failing at once;
//! - every transaction that writes starts with `BEGIN IMMEDIATE`, taking the write lock up front.
//!   A deferred transaction that reads and then writes cannot wait for the lock when another
//!   process committed in between (SQLite answers "database is locked" at once, whatever the
//!   busy timeout), so read-then-write must never start deferred.
//!
//! The store's logic is the one every backend shares (`src/sql/`, included below as `sql`),
//! compiled against this backend's `dialect`.

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, SqlitePool};

use crate::{Result, StoreError};

mod dialect;
// Each backend compiles the shared logic once, against its own dialect: loading the same files
// as a module of both backends is the point.
#[allow(clippy::duplicate_mod)]
#[path = "../sql/mod.rs"]
mod sql;

/// How long a connection waits for a lock held by another connection or process.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections in the pool. SQLite has one writer at a time anyway.
const POOL_SIZE: u32 = 4;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The SQLite [`crate::Store`].
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating it and its directory when missing) the database at `path` and applies
    /// pending migrations. Safe to call while another process has the same file open.
    pub async fn open(path: &str) -> Result<SqliteStore> {
        if path.is_empty() {
            return Err(StoreError::Invalid("empty SQLite database path".into()));
        }
        if let Some(parent) = Path::new(path).parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    StoreError::Backend(format!("creating directory {}: {e}", parent.display()))
                })?;
            }
        }

        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            .synchronous(SqliteSynchronous::Normal);

        // Switching to WAL is persistent in the file, and it needs an exclusive lock that the
        // busy timeout does not wait for: do it once here (with a few retries, in case another
        // process is opening the file at the same moment) rather than on every pooled connection.
        let mut conn = Self::connect_wal(&options).await?;
        // Migrations under the write lock, so two processes starting at once cannot both apply
        // the same migration: the second waits, then finds nothing left to do.
        {
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            migrate(&mut tx).await?;
            tx.commit().await?;
        }
        conn.close().await?;

        let pool = SqlitePoolOptions::new()
            .max_connections(POOL_SIZE)
            .connect_with(options)
            .await?;
        Ok(SqliteStore { pool })
    }

    async fn connect_wal(options: &SqliteConnectOptions) -> Result<SqliteConnection> {
        let mut attempt = 0;
        loop {
            match options
                .clone()
                .journal_mode(SqliteJournalMode::Wal)
                .connect()
                .await
            {
                Ok(conn) => return Ok(conn),
                Err(e) if attempt < 50 && is_busy(&e) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The underlying pool (for tests and maintenance tools).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// Applies pending migrations on `conn`.
///
/// `Migrator::run(&mut conn)` makes the caller's future fail the `Send` check ("implementation of
/// `Acquire` is not general enough") as soon as `SqliteStore::open` is spawned; `run_direct` is
/// sqlx's own way around that (it is what `run` calls after acquiring).
async fn migrate(conn: &mut SqliteConnection) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run_direct(None, conn, false).await
}

fn is_busy(e: &sqlx::Error) -> bool {
    match e.as_database_error() {
        // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes.
        Some(db) => db
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| matches!(c & 0xff, 5 | 6)),
        None => false,
    }
}

#[cfg(test)]
mod tests;

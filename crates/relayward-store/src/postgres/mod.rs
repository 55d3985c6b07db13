//! PostgreSQL backend, for a cluster of relay nodes sharing one directory, audit log and trace.
//!
//! Transactions run at PostgreSQL's default isolation, READ COMMITTED, so the shared logic
//! (`src/sql/`, included below as `sql`) never relies on a transaction seeing a frozen
//! database while it writes:
//! - a restriction-state transition is a compare-and-set on the tenant's state;
//! - the directory version is one row, bumped with `UPDATE ... RETURNING` in the transaction of
//!   each change: its row lock orders the changes of every node;
//! - what a change reads before writing it selects `FOR UPDATE`;
//! - a concurrent insert that a check missed fails on the unique constraint, which is a
//!   `StoreError::Conflict` as on SQLite.
//!
//! Readers that need one consistent picture (the directory snapshot, the suppression updates)
//! run at REPEATABLE READ.
//!
//! Nodes starting at once migrate safely: sqlx's migrator holds a session advisory lock
//! (`pg_advisory_lock`, keyed on the database's name) from before it creates its bookkeeping
//! table until it is done, so the second node waits, then finds nothing left to apply.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use crate::{Result, StoreError};

mod dialect;
// Each backend compiles the shared logic once, against its own dialect: loading the same files
// as a module of both backends is the point.
#[allow(clippy::duplicate_mod)]
#[path = "../sql/mod.rs"]
mod sql;

/// Connections in each node's pool.
const POOL_SIZE: u32 = 8;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The PostgreSQL [`crate::Store`].
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects to the database named by `url` (`postgres://` or `postgresql://`; it must exist)
    /// and applies pending migrations. Safe to call from several nodes at once.
    pub async fn open(url: &str) -> Result<PgStore> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Invalid(format!("PostgreSQL URL: {e}")))?;
        // Migrations on a connection of their own: the migrator's advisory lock is held by the
        // session, and closing the connection releases it even when a migration fails.
        let mut conn = options.connect().await?;
        let migrated = migrate(&mut conn).await;
        conn.close().await?;
        migrated?;
        // While the server is down a caller learns it within seconds (admin changes answer
        // 503; the relay keeps serving from its in-memory directory) instead of waiting for
        // sqlx's 30 s default.
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(std::time::Duration::from_secs(3))
            .connect_with(options)
            .await?;
        Ok(PgStore { pool })
    }

    /// The underlying pool (for tests and maintenance tools).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Applies pending migrations on `conn`, under the migrator's advisory lock (see the module
/// docs). `run_direct` rather than `run`: see the SQLite backend's `migrate`.
async fn migrate(conn: &mut PgConnection) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run_direct(None, conn, false).await
}

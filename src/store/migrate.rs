//! The built-in backends' schema: the migrations embedded per backend
//! (`migrations/<backend>/`), and the one runner that applies them on the crate's own
//! `byok_migrations` table, through the few statements each backend's transaction
//! runs for it ([`SchemaTx`], in `queries.rs`).
//!
//! A new migration is one file per backend and one entry in each list below. An applied
//! migration must never change: its checksum is checked at every open.

use std::future::Future;

use crate::error::{Error, ErrorKind, Result};
use crate::time::now_ms;

/// One embedded migration.
pub(crate) struct Migration {
    version: i64,
    description: &'static str,
    sql: &'static str,
}

#[cfg(feature = "sqlite")]
pub(crate) const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        description: "init",
        sql: include_str!("../../migrations/sqlite/0001_init.sql"),
    },
    Migration {
        version: 2,
        description: "change feed",
        sql: include_str!("../../migrations/sqlite/0002_changes.sql"),
    },
    Migration {
        version: 3,
        description: "owners",
        sql: include_str!("../../migrations/sqlite/0003_owners.sql"),
    },
];

#[cfg(feature = "postgres")]
pub(crate) const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        description: "init",
        sql: include_str!("../../migrations/postgres/0001_init.sql"),
    },
    Migration {
        version: 2,
        description: "change feed",
        sql: include_str!("../../migrations/postgres/0002_changes.sql"),
    },
    Migration {
        version: 3,
        description: "owners",
        sql: include_str!("../../migrations/postgres/0003_owners.sql"),
    },
];

/// The crate's own migrations table: apart from sqlx's `_sqlx_migrations`, so a host
/// application's `sqlx::migrate!` on the same database neither sees nor trips on ours.
const MIGRATIONS_TABLE_DDL: &str = "CREATE TABLE IF NOT EXISTS byok_migrations (\
    version BIGINT PRIMARY KEY, \
    description TEXT NOT NULL, \
    checksum TEXT NOT NULL, \
    applied_at BIGINT NOT NULL)";

const APPLIED: &str = "SELECT version, checksum FROM byok_migrations ORDER BY version";

const RECORD: &str =
    "INSERT INTO byok_migrations (version, description, checksum, applied_at) VALUES ($1, $2, $3, $4)";

fn checksum(sql: &str) -> String {
    use sha2::{Digest, Sha256};
    // Line endings normalized: a CRLF checkout must not look like an edited migration.
    Sha256::digest(sql.replace("\r\n", "\n").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(crate) fn failed(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::new(ErrorKind::Migration).with_source(e)
}

/// The migrations of `known` not yet in `applied` (`(version, checksum)`), each with its
/// checksum, in order; an error when the database has a migration this crate does not
/// know, or one whose text changed after it was applied.
fn pending<'m>(
    known: &'m [Migration],
    applied: &[(i64, String)],
) -> Result<Vec<(&'m Migration, String)>> {
    if let Some((version, _)) = applied
        .iter()
        .find(|(v, _)| !known.iter().any(|m| m.version == *v))
    {
        return Err(Error::new(ErrorKind::Migration).with_detail(format!(
            "the database has tower-byok migration {version}, which this version of the crate does not know; upgrade the crate"
        )));
    }
    let mut todo = Vec::new();
    for m in known {
        let sum = checksum(m.sql);
        match applied.iter().find(|(v, _)| *v == m.version) {
            Some((_, stored)) if *stored == sum => {}
            Some(_) => {
                return Err(Error::new(ErrorKind::Migration).with_detail(format!(
                    "migration {} was changed after it was applied",
                    m.version
                )))
            }
            None => todo.push((m, sum)),
        }
    }
    Ok(todo)
}

/// The statements the runner needs, on one transaction of a backend: implemented once,
/// in `queries.rs`, for each backend's `sqlx::Transaction`.
pub(crate) trait SchemaTx: Send {
    /// Runs a statement without parameters (DDL, a migration's text).
    fn execute(&mut self, sql: &'static str) -> impl Future<Output = sqlx::Result<()>> + Send;
    /// Runs [`APPLIED`]: `(version, checksum)` of the applied migrations.
    fn applied(
        &mut self,
        sql: &'static str,
    ) -> impl Future<Output = sqlx::Result<Vec<(i64, String)>>> + Send;
    /// Runs [`RECORD`] with its four parameters.
    fn record(
        &mut self,
        sql: &'static str,
        version: i64,
        description: &'static str,
        checksum: String,
        at: i64,
    ) -> impl Future<Output = sqlx::Result<()>> + Send;
    /// Commits.
    fn commit(self) -> impl Future<Output = sqlx::Result<()>> + Send;
}

/// Applies the migrations of `known` not yet recorded, in one transaction, `tx`, which
/// must hold the backend's migration lock (SQLite: the write lock; PostgreSQL: the
/// advisory lock), so that instances starting together migrate one at a time.
pub(crate) async fn run(mut tx: impl SchemaTx, known: &[Migration]) -> Result<()> {
    tx.execute(MIGRATIONS_TABLE_DDL).await.map_err(failed)?;
    let applied = tx.applied(APPLIED).await.map_err(failed)?;
    for (m, sum) in pending(known, &applied)? {
        tx.execute(m.sql).await.map_err(failed)?;
        tx.record(RECORD, m.version, m.description, sum, now_ms())
            .await
            .map_err(failed)?;
    }
    tx.commit().await.map_err(failed)
}

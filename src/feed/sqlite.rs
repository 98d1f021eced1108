//! The change feed on SQLite: one writer at a time, so sequence values commit in order;
//! an idle poll asks `PRAGMA data_version`, which changes when another connection (in
//! this process or another) has committed.

use std::time::Duration;

use sqlx::sqlite::{SqliteConnection, SqlitePool};
use sqlx::{ConnectOptions, Connection};

use super::tracker::owner_of;
use super::{Batch, ChangeSource, FeedMode, Wake};
use crate::error::{Error, Result};

pub(crate) struct SqliteChanges {
    pool: SqlitePool,
    /// A connection of the feed's own: `data_version` is per connection.
    probe: Option<SqliteConnection>,
    data_version: Option<i64>,
}

impl SqliteChanges {
    /// The feed of the database behind `pool`, or `None` for an in-memory database,
    /// which no other process can write.
    pub(crate) async fn new(pool: &SqlitePool) -> Result<Option<Self>> {
        let file: String =
            sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
                .fetch_one(pool)
                .await
                .map_err(Error::store)?;
        if file.is_empty() {
            return Ok(None);
        }
        Ok(Some(Self {
            pool: pool.clone(),
            probe: None,
            data_version: None,
        }))
    }
}

impl ChangeSource for SqliteChanges {
    const START_WINDOW: i64 = 0;

    async fn newest(&mut self) -> Result<i64> {
        let newest: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM byok_changes")
            .fetch_one(&self.pool)
            .await
            .map_err(Error::store)?;
        Ok(newest.unwrap_or(0))
    }

    async fn read(&mut self, after: i64, limit: u32) -> Result<Batch> {
        let rows: Vec<(i64, String, Option<String>)> = sqlx::query_as(
            "SELECT seq, owner_kind, user_id FROM byok_changes WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(Error::store)?;
        // Nothing can still commit below what was read: every gap is settled at once.
        Ok(Batch {
            rows: rows
                .into_iter()
                .map(|(seq, kind, owner_id)| (seq, owner_of(&kind, owner_id)))
                .collect(),
            xmin: i64::MAX,
            xmax: 0,
        })
    }

    async fn probe(&mut self) -> Result<bool> {
        let conn = match &mut self.probe {
            Some(conn) => conn,
            None => {
                let conn = self
                    .pool
                    .connect_options()
                    .connect()
                    .await
                    .map_err(Error::store)?;
                self.probe.insert(conn)
            }
        };
        let version: std::result::Result<i64, _> = sqlx::query_scalar("PRAGMA data_version")
            .fetch_one(&mut *conn)
            .await;
        let version = match version {
            Ok(v) => v,
            Err(e) => {
                // A fresh connection next time; its first answer reads the feed.
                if let Some(conn) = self.probe.take() {
                    let _ = conn.close().await;
                }
                self.data_version = None;
                return Err(Error::store(e));
            }
        };
        let changed = self.data_version != Some(version);
        self.data_version = Some(version);
        Ok(changed)
    }

    async fn prune(&mut self, age: Duration) -> Result<u64> {
        let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        let done = sqlx::query(
            "DELETE FROM byok_changes \
             WHERE at < CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) - $1",
        )
        .bind(age_ms)
        .execute(&self.pool)
        .await
        .map_err(Error::store)?;
        Ok(done.rows_affected())
    }

    async fn wait(&mut self, interval: Duration) -> Wake {
        tokio::time::sleep(interval).await;
        Wake::Timer
    }

    fn mode(&self) -> FeedMode {
        FeedMode::Polling
    }

    fn listening(&self) -> bool {
        false
    }

    fn heard(&self) -> u64 {
        0
    }
}

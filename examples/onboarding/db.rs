//! The app's own tables: each user's onboarding progress, on the pool the vault uses.
//!
//! Only progress lives here (the current step, the completed steps and what was entered
//! in them); provider keys live in the vault, sealed. The SQL is written once for both
//! backends (`$1` parameters, `ON CONFLICT`, `CASE`), so each query runs through
//! [`on_pool!`] on whichever pool the app was started with.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// The database the app and the vault share.
#[derive(Clone, Debug)]
pub(crate) enum Db {
    Sqlite(sqlx::SqlitePool),
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
}

/// Runs `$body` with `$pool` bound to the concrete pool, whichever backend it is.
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            Db::Sqlite($pool) => $body,
            #[cfg(feature = "postgres")]
            Db::Postgres($pool) => $body,
        }
    };
}

/// The app's migrations: idempotent, run at every start, before serving. (Instances
/// starting together on a fresh PostgreSQL database could race here; a larger app runs
/// its migrations with a tool that takes a lock, such as `sqlx migrate`.)
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS onboarding_progress (
        user_id TEXT PRIMARY KEY,
        current_step BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS onboarding_steps (
        user_id TEXT NOT NULL REFERENCES onboarding_progress (user_id) ON DELETE CASCADE,
        step BIGINT NOT NULL,
        data TEXT NOT NULL,
        completed_at BIGINT NOT NULL,
        PRIMARY KEY (user_id, step)
    )",
];

/// Creates the progress row, or moves its current step forward (never back).
const UPSERT_PROGRESS: &str = "INSERT INTO onboarding_progress (user_id, current_step, updated_at)
    VALUES ($1, $2, $3)
    ON CONFLICT (user_id) DO UPDATE SET
        current_step = CASE WHEN onboarding_progress.current_step > excluded.current_step
            THEN onboarding_progress.current_step ELSE excluded.current_step END,
        updated_at = excluded.updated_at";

const UPSERT_STEP: &str = "INSERT INTO onboarding_steps (user_id, step, data, completed_at)
    VALUES ($1, $2, $3, $4)
    ON CONFLICT (user_id, step) DO UPDATE SET data = excluded.data, completed_at = excluded.completed_at";

/// One user's onboarding progress.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// The step to do next; 1 for a user who has not started.
    pub(crate) current_step: i64,
    /// The completed steps and what was entered in each (never a secret).
    pub(crate) steps: BTreeMap<i64, Value>,
}

impl Db {
    pub(crate) async fn migrate(&self) -> sqlx::Result<()> {
        for sql in MIGRATIONS {
            on_pool!(self, pool => sqlx::query(*sql).execute(pool).await.map(drop))?;
        }
        Ok(())
    }

    /// `user`'s progress; a user with none is at step 1 with nothing completed.
    pub(crate) async fn progress(&self, user: &str) -> sqlx::Result<Progress> {
        const CURRENT: &str = "SELECT current_step FROM onboarding_progress WHERE user_id = $1";
        const STEPS: &str =
            "SELECT step, data FROM onboarding_steps WHERE user_id = $1 ORDER BY step";
        let (current, rows): (Option<i64>, Vec<(i64, String)>) = on_pool!(self, pool => (
            sqlx::query_scalar(CURRENT).bind(user).fetch_optional(pool).await?,
            sqlx::query_as(STEPS).bind(user).fetch_all(pool).await?,
        ));
        let steps = rows
            .into_iter()
            .map(|(step, data)| (step, serde_json::from_str(&data).unwrap_or(Value::Null)))
            .collect();
        Ok(Progress {
            current_step: current.unwrap_or(1),
            steps,
        })
    }

    /// Records `step` as completed with `data`, and moves the user on to `next` unless
    /// they are further already: one transaction.
    pub(crate) async fn complete_step(
        &self,
        user: &str,
        step: i64,
        data: &Value,
        next: i64,
    ) -> sqlx::Result<()> {
        let now = unix_now();
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(UPSERT_PROGRESS).bind(user).bind(next).bind(now).execute(&mut *tx).await?;
            sqlx::query(UPSERT_STEP)
                .bind(user).bind(step).bind(data.to_string()).bind(now)
                .execute(&mut *tx).await?;
            tx.commit().await
        })
    }

    /// Stores imported progress for a user who has none here yet. Returns `false`, and
    /// writes nothing, when the user already has progress: running an import twice, or
    /// after the user started over here, never overwrites it.
    #[cfg(feature = "import")]
    pub(crate) async fn import_progress(
        &self,
        user: &str,
        progress: &Progress,
    ) -> sqlx::Result<bool> {
        const INSERT: &str = "INSERT INTO onboarding_progress (user_id, current_step, updated_at)
            VALUES ($1, $2, $3) ON CONFLICT (user_id) DO NOTHING";
        let now = unix_now();
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let inserted = sqlx::query(INSERT)
                .bind(user).bind(progress.current_step).bind(now)
                .execute(&mut *tx).await?.rows_affected();
            if inserted == 0 {
                return Ok(false); // dropping the transaction rolls it back
            }
            for (step, data) in &progress.steps {
                sqlx::query(UPSERT_STEP)
                    .bind(user).bind(step).bind(data.to_string()).bind(now)
                    .execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(true)
        })
    }
}

pub(crate) fn unix_now() -> i64 {
    unix(SystemTime::now())
}

pub(crate) fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

//! The change feed on PostgreSQL: reads carry their snapshot, so that a change committed
//! late with a lower sequence value is still read (see `tracker.rs`); `LISTEN` on a
//! connection of its own rings the bell.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::sync::Notify;

use super::tracker::owner_of;
use super::{Batch, ChangeSource, FeedMode, Wake};
use crate::error::Result;
use crate::store::postgres::store_error;
use crate::PostgresStore;

/// The channel the trigger notifies (migration 2).
const CHANNEL: &str = "byok_changes";

pub(crate) struct PostgresChanges {
    store: PostgresStore,
    listener: Option<Listener>,
}

impl PostgresChanges {
    /// The feed of the store's database; with `listen`, also a `LISTEN` connection of
    /// its own (not one of the pool's), kept up in the background, on the store's
    /// direct URL if it has one. Behind a pooler in transaction mode without a direct
    /// URL it only polls: a `LISTEN` there would hear nothing.
    pub(crate) fn new(store: &PostgresStore, listen: bool) -> Self {
        let options = if listen {
            let options = store.listen_options();
            if options.is_none() {
                tracing::info!(
                    "behind a pooler in transaction mode without a direct URL, the change \
                     feed polls; give PostgresStore::direct_url to hear changes at once"
                );
            }
            options
        } else {
            None
        };
        Self {
            store: store.clone(),
            listener: options.map(Listener::start),
        }
    }
}

impl ChangeSource for PostgresChanges {
    /// Sequence values are handed out before commit, out of order: read the last
    /// changes again at start, in case a lower one was still in flight.
    const START_WINDOW: i64 = 1000;

    async fn newest(&mut self) -> Result<i64> {
        let mut session = self.store.session().await?;
        let newest: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM byok_changes")
            .persistent(self.store.prepared())
            .fetch_one(session.conn())
            .await
            .map_err(store_error)?;
        session.finish().await.map_err(store_error)?;
        Ok(newest.unwrap_or(0))
    }

    async fn read(&mut self, after: i64, limit: u32) -> Result<Batch> {
        // One statement, so the rows and the snapshot bounds come from one snapshot.
        let mut session = self.store.session().await?;
        // (seq, owner kind, owner id, xmin, xmax); one row of NULLs when nothing is new.
        type Row = (Option<i64>, Option<String>, Option<String>, i64, i64);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT c.seq, c.owner_kind, c.user_id, \
                    pg_snapshot_xmin(s.snap)::text::bigint, \
                    pg_snapshot_xmax(s.snap)::text::bigint \
             FROM (SELECT pg_current_snapshot() AS snap) s \
             LEFT JOIN LATERAL ( \
                 SELECT seq, owner_kind, user_id FROM byok_changes WHERE seq > $1 ORDER BY seq LIMIT $2 \
             ) c ON true",
        )
        .persistent(self.store.prepared())
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(session.conn())
        .await
        .map_err(store_error)?;
        session.finish().await.map_err(store_error)?;
        let (xmin, xmax) = rows.first().map_or((0, 0), |r| (r.3, r.4));
        Ok(Batch {
            rows: rows
                .into_iter()
                .filter_map(|(seq, kind, owner_id, _, _)| {
                    Some((seq?, owner_of(kind.as_deref().unwrap_or(""), owner_id)))
                })
                .collect(),
            xmin,
            xmax,
        })
    }

    async fn probe(&mut self) -> Result<bool> {
        Ok(true)
    }

    async fn prune(&mut self, age: Duration) -> Result<u64> {
        let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        let mut session = self.store.session().await?;
        let done = sqlx::query(
            "DELETE FROM byok_changes \
             WHERE at < (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT - $1",
        )
        .persistent(self.store.prepared())
        .bind(age_ms)
        .execute(session.conn())
        .await
        .map_err(store_error)?;
        session.finish().await.map_err(store_error)?;
        Ok(done.rows_affected())
    }

    async fn wait(&mut self, interval: Duration) -> Wake {
        match &self.listener {
            Some(listener) => {
                match tokio::time::timeout(interval, listener.bell.notified()).await {
                    Ok(()) => Wake::Notified,
                    Err(_) => Wake::Timer,
                }
            }
            None => {
                tokio::time::sleep(interval).await;
                Wake::Timer
            }
        }
    }

    fn mode(&self) -> FeedMode {
        if self.listener.is_some() {
            FeedMode::Listening
        } else {
            FeedMode::Polling
        }
    }

    fn listening(&self) -> bool {
        self.listener
            .as_ref()
            .is_some_and(|l| l.connected.load(Ordering::Relaxed))
    }

    fn heard(&self) -> u64 {
        self.listener
            .as_ref()
            .map_or(0, |l| l.heard.load(Ordering::Relaxed))
    }
}

/// A task that holds a `LISTEN` connection and rings `bell` for each notification, and
/// once more each time the connection comes back, since what was sent while it was down
/// is lost: the reader then catches up from the change table.
struct Listener {
    bell: Arc<Notify>,
    connected: Arc<AtomicBool>,
    /// Notifications heard (not counting the rings on reconnect).
    heard: Arc<AtomicU64>,
    task: tokio::task::AbortHandle,
}

impl Listener {
    fn start(options: PgConnectOptions) -> Self {
        let bell = Arc::new(Notify::new());
        let connected = Arc::new(AtomicBool::new(false));
        let heard = Arc::new(AtomicU64::new(0));
        // A pool of one connection of its own: the listener must not hold one of the
        // application's connections for ever.
        let own = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with(options);
        let task = tokio::spawn(listen(own, bell.clone(), connected.clone(), heard.clone()));
        Self {
            bell,
            connected,
            heard,
            task: task.abort_handle(),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn listen(
    pool: PgPool,
    bell: Arc<Notify>,
    connected: Arc<AtomicBool>,
    heard: Arc<AtomicU64>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut listener = match connect(&pool).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::debug!(error = %e, "the change listener could not connect; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        connected.store(true, Ordering::Relaxed);
        // Anything may have been missed before this connection listened.
        bell.notify_one();
        loop {
            match listener.try_recv().await {
                Ok(Some(_)) => {
                    heard.fetch_add(1, Ordering::Relaxed);
                    bell.notify_one();
                }
                // Lost and already reconnected (and listening again): catch up.
                Ok(None) => bell.notify_one(),
                // E.g. the server ended the session (`pg_terminate_backend`): start over
                // with a new connection.
                Err(e) => {
                    tracing::warn!(error = %e, "the change listener lost its connection; reconnecting");
                    break;
                }
            }
        }
        connected.store(false, Ordering::Relaxed);
        drop(listener);
        tokio::time::sleep(backoff).await;
    }
}

async fn connect(pool: &PgPool) -> std::result::Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.ignore_pool_close_event(true);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

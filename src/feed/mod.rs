//! Hearing of writes made elsewhere: another instance, the admin CLI, an operator's SQL.
//!
//! The database keeps its own change feed: triggers on `byok_keys` append the user id
//! of every inserted, updated or deleted row to `byok_changes` with a sequence value, in
//! the same transaction, whoever writes. Each [`Vault`](crate::Vault) runs one
//! background task that reads the feed and drops the cached keys of the users changed:
//!
//! - **polling**, on both backends: a cheap query every
//!   [`poll_interval`](crate::VaultBuilder::poll_interval) (1 s by default). On SQLite an
//!   idle poll is `PRAGMA data_version` on a connection of its own, which reads no table;
//! - **`LISTEN`/`NOTIFY`**, on PostgreSQL: the trigger also notifies (an empty payload,
//!   once per transaction), and the task reads the feed as soon as it hears one. The
//!   poll stays on as the backstop for notifications lost while the listening connection
//!   was down. A pooler in transaction mode cannot `LISTEN` (it hears nothing): there
//!   the listener connects over the store's direct URL, or, without one, the feed only
//!   polls. A listener that is connected but hears nothing while polls find changes is
//!   reported ([`FeedStatus::listener_deaf`]) and logged, once.
//!
//! Reads are gap-safe: a change whose sequence value is lower than one already read but
//! that commits later is still applied (see `tracker.rs`). Changes are pruned after
//! [`CHANGE_RETENTION`], every minute by each following vault and once by every vault
//! that opens without following (the admin CLI); an instance that could not read the
//! feed for half of that forgets every cached user when it can again.
//!
//! `sqlite.rs` and `postgres.rs` hold each backend's queries and its way of waiting.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime};

use crate::cache::KeyCache;
use crate::error::Result;
use crate::metrics::{self, Scope, Source};

#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;
mod tracker;

pub(crate) use self::tracker::{Batch, Invalidate, Tracker};

/// How long the database keeps a change: an instance that cannot read the feed for
/// half of this forgets every cached user once it can again.
pub const CHANGE_RETENTION: Duration = Duration::from_secs(3600);

/// How often each instance deletes changes older than [`CHANGE_RETENTION`].
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Rows per read of the change table.
const PAGE: u32 = 1000;

/// What woke the feed's task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// The poll interval passed.
    Timer,
    /// A notification came, or the listening connection came back: read now.
    #[cfg_attr(
        all(feature = "sqlite", not(feature = "postgres")),
        expect(dead_code, reason = "only PostgreSQL listens")
    )]
    Notified,
}

/// One backend's side of the feed.
pub(crate) trait ChangeSource: Send + 'static {
    /// How many changes below the newest a new reader reads again, for changes that were
    /// in flight when it started and commit with lower sequence values.
    const START_WINDOW: i64;

    /// The highest sequence value in the feed, 0 when it is empty.
    fn newest(&mut self) -> impl Future<Output = Result<i64>> + Send;

    /// Up to `limit` changes after `after`, in order, with the snapshot they were read in.
    fn read(&mut self, after: i64, limit: u32) -> impl Future<Output = Result<Batch>> + Send;

    /// Whether anything may have changed since the last call; `true` when it cannot tell.
    fn probe(&mut self) -> impl Future<Output = Result<bool>> + Send;

    /// Deletes changes older than `age` by the database's clock.
    fn prune(&mut self, age: Duration) -> impl Future<Output = Result<u64>> + Send;

    /// Waits for `interval`, or less if the backend hears of a change first.
    fn wait(&mut self, interval: Duration) -> impl Future<Output = Wake> + Send;

    /// Whether this source listens for notifications, or only polls.
    fn mode(&self) -> FeedMode;

    /// Whether a `LISTEN` connection is up now.
    fn listening(&self) -> bool;

    /// How many notifications the `LISTEN` connection has heard so far.
    fn heard(&self) -> u64;
}

/// Polls in a row that must find changes the listener did not ring for before the
/// listener counts as deaf: a working listener rings within milliseconds of a commit,
/// so it can be beaten by one poll, never by three.
const DEAF_AFTER: u32 = 3;

/// How a vault follows the change feed: set on [`VaultBuilder`](crate::VaultBuilder).
#[derive(Debug, Clone, Copy)]
pub(crate) struct FeedConfig {
    pub(crate) enabled: bool,
    pub(crate) poll_interval: Duration,
    pub(crate) listen: bool,
}

impl Default for FeedConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            poll_interval: Duration::from_secs(1),
            listen: true,
        }
    }
}

/// How this process follows writes made elsewhere: see [`Vault::change_feed`](crate::Vault::change_feed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FeedMode {
    /// Not following: only the cache TTL bounds how long another instance's write goes
    /// unseen (turned off, an in-memory SQLite database, or a store without a feed).
    Off,
    /// Reading the feed every poll interval.
    Polling,
    /// Reading the feed when PostgreSQL notifies, and every poll interval as a backstop.
    Listening,
}

/// The state of a vault's change feed, for a health check: see
/// [`Vault::change_feed`](crate::Vault::change_feed).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FeedStatus {
    /// How the vault follows the feed.
    pub mode: FeedMode,
    /// Whether the `LISTEN` connection is up ([`FeedMode::Listening`] only).
    pub listener_connected: bool,
    /// The highest change sequence value applied here.
    pub last_seq: i64,
    /// When this process last applied a change made anywhere.
    pub last_change_at: Option<SystemTime>,
    /// When this process last read the feed without error.
    pub last_read_at: Option<SystemTime>,
    /// Since when reads of the feed fail, while they do.
    pub failing_since: Option<SystemTime>,
    /// The `LISTEN` connection is up but heard nothing while three polls in a row found
    /// changes made elsewhere: it most likely goes through a pooler in transaction mode,
    /// which delivers no notification, and changes are seen only every poll interval.
    /// The fix: give the store a direct URL (`PostgresStore::direct_url`), or turn
    /// listening off. Cleared when the listener hears a notification.
    pub listener_deaf: bool,
}

impl FeedStatus {
    fn off() -> Self {
        Self {
            mode: FeedMode::Off,
            listener_connected: false,
            last_seq: 0,
            last_change_at: None,
            last_read_at: None,
            failing_since: None,
            listener_deaf: false,
        }
    }

    /// Whether the feed was read without error within `max_age`: a write made elsewhere
    /// is then seen here within about `max_age`. Always `false` when the feed is off.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_byok::{Keyring, MasterKey, SqliteStore, Vault};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_byok::Error> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let keyring = Keyring::new(MasterKey::generate("k1")?);
    /// let vault = Vault::open(SqliteStore::open(dir.path().join("keys.db")).await?, keyring).await?;
    /// // e.g. in a readiness probe: three missed polls make the instance unready.
    /// let ready = vault.change_feed().is_current(Duration::from_secs(3));
    /// # assert!(ready);
    /// # Ok(()) }
    /// ```
    pub fn is_current(&self, max_age: Duration) -> bool {
        self.mode != FeedMode::Off
            && self.failing_since.is_none()
            && self
                .last_read_at
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age <= max_age)
    }
}

/// The feed's task, stopped when the vault that started it is dropped.
pub(crate) struct Feed {
    status: Arc<Mutex<FeedStatus>>,
    task: Option<tokio::task::AbortHandle>,
}

impl Feed {
    /// No feed: the cache TTL alone bounds what another instance's write goes unseen.
    pub(crate) fn off() -> Self {
        Self {
            status: Arc::new(Mutex::new(FeedStatus::off())),
            task: None,
        }
    }

    /// Starts following `source` into `cache`: reads where the feed stands now, then
    /// runs in the background until the cache is dropped. Turned off, it only prunes
    /// the feed once.
    pub(crate) async fn start<S: ChangeSource>(
        mut source: S,
        cache: Weak<KeyCache>,
        config: FeedConfig,
    ) -> Result<Self> {
        if !config.enabled {
            // Nothing here reads the feed, and perhaps nothing anywhere does: prune it
            // once, so that it cannot grow for ever between the vaults that do.
            if let Err(e) = source.prune(CHANGE_RETENTION).await {
                tracing::debug!(error = %e, "pruning the change feed failed");
            }
            return Ok(Self::off());
        }
        let newest = source.newest().await?;
        let mut tracker = Tracker::new((newest - S::START_WINDOW).max(0));
        // The first read, before the vault serves anything: its invalidations find an
        // empty cache, instead of racing the first loads.
        if let Some(cache) = cache.upgrade() {
            catch_up(&mut source, &mut tracker, &*cache).await?;
        }
        let mode = source.mode();
        let status = Arc::new(Mutex::new(FeedStatus {
            mode,
            listener_connected: source.listening(),
            last_seq: tracker.newest(),
            last_change_at: None,
            last_read_at: Some(SystemTime::now()),
            failing_since: None,
            listener_deaf: false,
        }));
        let task = tokio::spawn(run(source, tracker, cache, status.clone(), config));
        Ok(Self {
            status,
            task: Some(task.abort_handle()),
        })
    }

    pub(crate) fn status(&self) -> FeedStatus {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl Invalidate for KeyCache {
    fn user(&self, user_id: &str) {
        self.invalidate(user_id);
        metrics::invalidated(Source::Feed, Scope::User);
    }

    fn owner(&self, kind: crate::owner::OwnerKind, owner_id: &str) {
        // The team's (or the platform's) one entry: its members' entries stay.
        self.owners()
            .invalidate(crate::cache::owner_key(kind, owner_id));
        metrics::invalidated(Source::Feed, Scope::User);
    }

    fn all(&self) {
        self.invalidate_all();
        metrics::invalidated(Source::Feed, Scope::All);
    }
}

async fn run<S: ChangeSource>(
    mut source: S,
    mut tracker: Tracker,
    cache: Weak<KeyCache>,
    status: Arc<Mutex<FeedStatus>>,
    config: FeedConfig,
) {
    let mut last_ok = Instant::now();
    let mut last_prune: Option<Instant> = None;
    let mut deaf = Deafness::default();
    let mut wake = source.wait(config.poll_interval).await;
    loop {
        let Some(cache) = cache.upgrade() else {
            return;
        };
        let read = match wake {
            Wake::Notified => Ok(true),
            Wake::Timer => source.probe().await,
        };
        let result = match read {
            Ok(false) => Ok(0),
            Ok(true) => {
                if last_ok.elapsed() > CHANGE_RETENTION / 2 {
                    // Changes may have been pruned unread: start over from the newest.
                    tracing::warn!(
                        "the change feed was unreadable for long; forgetting every cached user"
                    );
                    cache.invalidate_all();
                    metrics::invalidated(Source::Feed, Scope::All);
                    match source.newest().await {
                        Ok(newest) => {
                            tracker = Tracker::new(newest);
                            Ok(0)
                        }
                        Err(e) => Err(e),
                    }
                } else {
                    catch_up(&mut source, &mut tracker, &*cache).await
                }
            }
            Err(e) => Err(e),
        };
        drop(cache);
        let now = SystemTime::now();
        {
            let mut status = status.lock().unwrap_or_else(PoisonError::into_inner);
            status.listener_connected = source.listening();
            match &result {
                Ok(applied) => {
                    let polled = wake == Wake::Timer && source.listening();
                    status.listener_deaf = deaf.observe(source.heard(), polled && *applied > 0);
                    last_ok = Instant::now();
                    status.last_read_at = Some(now);
                    status.failing_since = None;
                    status.last_seq = tracker.newest();
                    if *applied > 0 {
                        status.last_change_at = Some(now);
                    }
                }
                Err(e) => {
                    if status.failing_since.is_none() {
                        tracing::warn!(error = %e, "reading the change feed failed; retrying every poll interval");
                        status.failing_since = Some(now);
                    }
                }
            }
        }
        if result.is_ok() && last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
            last_prune = Some(Instant::now());
            if let Err(e) = source.prune(CHANGE_RETENTION).await {
                tracing::debug!(error = %e, "pruning the change feed failed");
            }
        }
        wake = source.wait(config.poll_interval).await;
    }
}

/// Tells a listener that is connected but hears nothing, from the polls that find
/// changes it should have rung for.
#[derive(Debug, Default)]
struct Deafness {
    heard: u64,
    unheard_polls: u32,
    warned: bool,
}

impl Deafness {
    /// Takes the listener's count of notifications after a read, and whether that read
    /// was a poll (not a ring) that found changes while the listener was connected;
    /// returns whether the listener is deaf now. Warns the first time it is.
    fn observe(&mut self, heard: u64, unheard_changes: bool) -> bool {
        if heard != self.heard {
            self.heard = heard;
            self.unheard_polls = 0;
        } else if unheard_changes {
            self.unheard_polls = self.unheard_polls.saturating_add(1);
        }
        let deaf = self.unheard_polls >= DEAF_AFTER;
        if deaf && !self.warned {
            self.warned = true;
            tracing::warn!(
                "the change listener is connected but hears no notification while polls keep \
                 finding changes: it most likely goes through a pooler in transaction mode; \
                 give PostgresStore::direct_url a direct connection to the server (or set \
                 listen_for_changes(false)); until then changes are seen every poll interval"
            );
        }
        deaf
    }
}

/// Reads every change after the tracker's horizon and applies it; returns how many.
async fn catch_up<S: ChangeSource>(
    source: &mut S,
    tracker: &mut Tracker,
    sink: &impl Invalidate,
) -> Result<usize> {
    let first = source.read(tracker.horizon(), PAGE).await?;
    let mut applied = tracker.apply(&first, sink);
    // Only the first read started at the horizon, so only it can tell that a gap below
    // its last row is settled; later pages just apply what they find.
    let covered = last_of_full_page(&first);
    let mut cursor = covered;
    while let Some(after) = cursor {
        let page = source.read(after, PAGE).await?;
        applied += tracker.apply(&page, sink);
        cursor = last_of_full_page(&page);
    }
    let xmin = first.xmin;
    tracker.advance(covered.unwrap_or(i64::MAX), |xmax| xmin >= xmax);
    Ok(applied)
}

/// The last sequence value of a read that filled its page: more may follow it.
fn last_of_full_page(batch: &Batch) -> Option<i64> {
    let full = batch.rows.len() == PAGE as usize;
    batch.rows.last().filter(|_| full).map(|(seq, _)| *seq)
}

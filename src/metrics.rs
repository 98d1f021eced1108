//! Operational metrics through the [`metrics`](https://docs.rs/metrics) facade, with the
//! feature `metrics`: the cache's hits, misses and loads, load latency and errors,
//! invalidations, the keys the layer served by their source, and the layer's rejections.
//!
//! Every call site goes through the functions here. Without the feature they are empty
//! inline functions and [`CacheCounters`] and [`LoadTimer`] are zero-sized, so a build
//! without it has neither the code nor the dependency, and the call sites read the same
//! either way.
//!
//! Label values come from closed sets only: error kind names, status codes, sources and
//! scopes. Never a user id, and never a provider name: users choose those, and one label
//! value per provider would let a user grow every scrape without bound.
//!
//! The README's "Metrics" section documents each name, type, unit and label;
//! `tests/metrics.rs` compares that table with what the crate emits.

#![cfg_attr(not(feature = "metrics"), allow(dead_code))]

#[cfg(feature = "metrics")]
use std::time::Instant;

use http::StatusCode;

use crate::error::ErrorKind;
use crate::keys::UserKeys;

const HITS: &str = "tower_byok_cache_hits_total";
const MISSES: &str = "tower_byok_cache_misses_total";
const LOADS: &str = "tower_byok_loads_total";
const LOAD_DURATION: &str = "tower_byok_load_duration_seconds";
const LOAD_ERRORS: &str = "tower_byok_load_errors_total";
const STALE: &str = "tower_byok_stale_served_total";
const INVALIDATIONS: &str = "tower_byok_invalidations_total";
const REJECTIONS: &str = "tower_byok_rejections_total";
const KEYRING_REFRESHES: &str = "tower_byok_keyring_refreshes_total";
const SERVED: &str = "tower_byok_keys_served_total";

/// Where an invalidation came from.
#[derive(Clone, Copy)]
pub(crate) enum Source {
    /// A write through this process's vault, or [`Vault::forget_cached`](crate::Vault::forget_cached).
    Local,
    /// The change feed: a write made by another instance, the CLI or raw SQL.
    Feed,
}

/// What an invalidation forgot.
#[derive(Clone, Copy)]
pub(crate) enum Scope {
    /// One user.
    User,
    /// Every user.
    All,
}

/// Gives each metric its description and unit, for the exporter's `HELP` lines.
#[inline]
fn describe() {
    #[cfg(feature = "metrics")]
    {
        use ::metrics::{describe_counter, describe_histogram, Unit};
        describe_counter!(HITS, Unit::Count, "Key lookups served from the cache.");
        describe_counter!(MISSES, Unit::Count, "Key lookups the cache could not serve: each waited for a load, its own or one under way.");
        describe_counter!(
            LOADS,
            Unit::Count,
            "Loads of a user's keys from the store, one per single-flight group."
        );
        describe_histogram!(LOAD_DURATION, Unit::Seconds, "How long each load of a user's keys took, including decryption, up to the load timeout.");
        describe_counter!(
            LOAD_ERRORS,
            Unit::Count,
            "Loads that failed, by error kind."
        );
        describe_counter!(
            STALE,
            Unit::Count,
            "Failed loads answered with stale keys from the cache (stale-if-error)."
        );
        describe_counter!(
            INVALIDATIONS,
            Unit::Count,
            "Cache invalidations, by source and scope."
        );
        describe_counter!(
            KEYRING_REFRESHES,
            Unit::Count,
            "Keyring refreshes from the vault's keyring source, by result: ok or the error kind."
        );
        describe_counter!(
            SERVED,
            Unit::Count,
            "Keys the layer put into requests, by where each came from: user, team, platform or environment."
        );
        describe_counter!(
            REJECTIONS,
            Unit::Count,
            "Requests the layer answered itself, by the rejection's status."
        );
    }
}

/// The cache's unlabelled counters, registered with the recorder once, when the vault
/// is built: a hit then costs one atomic add instead of a registry lookup (about 450
/// instructions with the Prometheus recorder, BENCHMARKS.md §8). The price: a recorder
/// installed after the vault is built does not get these.
pub(crate) struct CacheCounters {
    #[cfg(feature = "metrics")]
    hits: ::metrics::Counter,
    #[cfg(feature = "metrics")]
    misses: ::metrics::Counter,
    #[cfg(feature = "metrics")]
    loads: ::metrics::Counter,
    #[cfg(feature = "metrics")]
    stale: ::metrics::Counter,
}

impl CacheCounters {
    /// Describes every metric and registers the cache's counters.
    pub(crate) fn register() -> Self {
        describe();
        #[cfg(feature = "metrics")]
        {
            Self {
                hits: ::metrics::counter!(HITS),
                misses: ::metrics::counter!(MISSES),
                loads: ::metrics::counter!(LOADS),
                stale: ::metrics::counter!(STALE),
            }
        }
        #[cfg(not(feature = "metrics"))]
        Self {}
    }

    /// A lookup served from the cache.
    #[inline]
    pub(crate) fn hit(&self) {
        #[cfg(feature = "metrics")]
        self.hits.increment(1);
    }

    /// A lookup that waits for a load.
    #[inline]
    pub(crate) fn miss(&self) {
        #[cfg(feature = "metrics")]
        self.misses.increment(1);
    }

    /// A failed load answered with stale keys.
    #[inline]
    pub(crate) fn stale_served(&self) {
        #[cfg(feature = "metrics")]
        self.stale.increment(1);
    }
}

/// The counters of keys served, one per source, registered when the layer is made, so
/// that counting a served key is one atomic add, as a cache hit is.
#[derive(Clone)]
pub(crate) struct ServedCounters {
    #[cfg(feature = "metrics")]
    by_source: [::metrics::Counter; 4],
}

impl Default for ServedCounters {
    fn default() -> Self {
        describe();
        #[cfg(feature = "metrics")]
        {
            // The label values: a closed set, one per `KeySource`. `database` is the
            // user's own key, labelled `user` beside `team` and `platform`.
            let counter = |source: &'static str| ::metrics::counter!(SERVED, "source" => source);
            Self {
                by_source: [
                    counter("user"),
                    counter("team"),
                    counter("platform"),
                    counter("environment"),
                ],
            }
        }
        #[cfg(not(feature = "metrics"))]
        Self {}
    }
}

impl ServedCounters {
    /// The keys put into a request: one count per key, under its source.
    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn served(&self, keys: &UserKeys) {
        #[cfg(feature = "metrics")]
        for key in keys.iter() {
            use crate::keys::KeySource;
            // Exhaustive on purpose: a new source must be given its label here.
            let i = match key.source() {
                KeySource::Database => 0,
                KeySource::Team => 1,
                KeySource::Platform => 2,
                KeySource::Environment => 3,
            };
            self.by_source[i].increment(1);
        }
    }
}

/// A cache invalidation.
#[inline]
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn invalidated(source: Source, scope: Scope) {
    #[cfg(feature = "metrics")]
    {
        let source = match source {
            Source::Local => "local",
            Source::Feed => "feed",
        };
        let scope = match scope {
            Scope::User => "user",
            Scope::All => "all",
        };
        ::metrics::counter!(INVALIDATIONS, "source" => source, "scope" => scope).increment(1);
    }
}

/// A refresh of the keyring from its source ended, with `error` if it failed.
#[inline]
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn keyring_refreshed(error: Option<ErrorKind>) {
    #[cfg(feature = "metrics")]
    {
        let result = error.map_or("ok", kind_label);
        ::metrics::counter!(KEYRING_REFRESHES, "result" => result).increment(1);
    }
}

/// A response the layer made itself.
#[inline]
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn rejected(status: StatusCode) {
    #[cfg(feature = "metrics")]
    {
        // The statuses `Rejection::status` returns; anything else would be a new one
        // this list has not caught up with.
        let status = match status.as_u16() {
            401 => "401",
            428 => "428",
            500 => "500",
            503 => "503",
            _ => "other",
        };
        ::metrics::counter!(REJECTIONS, "status" => status).increment(1);
    }
}

/// Times one load from its start: counts it, then its duration and, if it failed, its
/// error kind. A load dropped before it finished (every caller waiting on it went away)
/// is recorded with the outcome `cancelled`, so each counted load has one duration.
#[must_use]
pub(crate) struct LoadTimer {
    #[cfg(feature = "metrics")]
    start: Instant,
    #[cfg(feature = "metrics")]
    finished: bool,
}

impl LoadTimer {
    /// A load begins.
    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn start(counters: &CacheCounters) -> Self {
        #[cfg(feature = "metrics")]
        {
            counters.loads.increment(1);
            Self {
                start: Instant::now(),
                finished: false,
            }
        }
        #[cfg(not(feature = "metrics"))]
        Self {}
    }

    /// The load ended, with `error` if it failed.
    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    #[cfg_attr(not(feature = "metrics"), allow(unused_mut))]
    pub(crate) fn finish(mut self, error: Option<ErrorKind>) {
        #[cfg(feature = "metrics")]
        {
            let outcome = if error.is_some() { "error" } else { "ok" };
            self.record(outcome);
            if let Some(kind) = error {
                ::metrics::counter!(LOAD_ERRORS, "kind" => kind_label(kind)).increment(1);
            }
        }
    }

    #[cfg(feature = "metrics")]
    fn record(&mut self, outcome: &'static str) {
        self.finished = true;
        ::metrics::histogram!(LOAD_DURATION, "outcome" => outcome).record(self.start.elapsed());
    }
}

#[cfg(feature = "metrics")]
impl Drop for LoadTimer {
    fn drop(&mut self) {
        if !self.finished {
            self.record("cancelled");
        }
    }
}

/// An error kind's label value: its variant name in snake case.
#[cfg(feature = "metrics")]
fn kind_label(kind: ErrorKind) -> &'static str {
    // Exhaustive on purpose: a new kind must be given its label here.
    match kind {
        ErrorKind::InvalidUserId => "invalid_user_id",
        ErrorKind::InvalidProvider => "invalid_provider",
        ErrorKind::InvalidSecret => "invalid_secret",
        ErrorKind::TooManyProviders => "too_many_providers",
        ErrorKind::KeyRejected => "key_rejected",
        ErrorKind::InvalidActor => "invalid_actor",
        ErrorKind::InvalidKeyring => "invalid_keyring",
        ErrorKind::Decrypt => "decrypt",
        ErrorKind::UnknownMasterKey => "unknown_master_key",
        ErrorKind::WrongMasterKey => "wrong_master_key",
        ErrorKind::MasterKeyInUse => "master_key_in_use",
        ErrorKind::Store => "store",
        ErrorKind::Migration => "migration",
        ErrorKind::Timeout => "timeout",
        ErrorKind::Unsupported => "unsupported",
        ErrorKind::Import => "import",
        ErrorKind::InvalidEnvFile => "invalid_env_file",
        ErrorKind::InvalidTeamId => "invalid_team_id",
        ErrorKind::KmsUnreachable => "kms_unreachable",
        ErrorKind::KmsAccessDenied => "kms_access_denied",
        ErrorKind::KmsKeyDisabled => "kms_key_disabled",
        ErrorKind::WrappedKeyCorrupt => "wrapped_key_corrupt",
        ErrorKind::KeyringSource => "keyring_source",
    }
}

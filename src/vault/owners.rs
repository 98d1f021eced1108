//! Keys of teams and of the platform, teams' policies, and the chain that serves a team
//! member: the user's own key, else the team's, else the platform's.

use std::fmt;
use std::time::SystemTime;

use super::open::Opener;
use super::{from_unix_ms, unix_ms, Inner, Vault};
use crate::audit::{AuditAction, AuditRecord};
use crate::cache::owner_key;
use crate::error::{Error, ErrorKind, Result};
use crate::keys::{KeyInfo, UserKeys};
use crate::owner::{OwnerKind, PLATFORM_ID};
use crate::store::{AuditQuery, StoredKey};
use crate::validate;

/// Whose key a vault operation is about: a user, a team or the platform.
///
/// A team is its own kind of owner, not a user id with a prefix: user `team:acme` and
/// team `acme` never see each other's keys. `Debug` shows the kind only.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Owner<'a> {
    pub(super) kind: OwnerKind,
    pub(super) id: &'a str,
}

impl<'a> Owner<'a> {
    /// A user of the application.
    pub fn user(user_id: &'a str) -> Self {
        Self {
            kind: OwnerKind::User,
            id: user_id,
        }
    }

    /// A team (a workspace, an organization), by the application's id for it.
    pub fn team(team_id: &'a str) -> Self {
        Self {
            kind: OwnerKind::Team,
            id: team_id,
        }
    }

    /// The platform: the application's own keys, served to
    /// [`Vault::keys_for_member`] only with
    /// [`VaultBuilder::platform_fallback`](crate::VaultBuilder::platform_fallback).
    pub fn platform() -> Owner<'static> {
        Owner {
            kind: OwnerKind::Platform,
            id: PLATFORM_ID,
        }
    }

    /// The owner's kind.
    pub fn kind(&self) -> OwnerKind {
        self.kind
    }

    /// The kind and the checked id: a team id follows the rules of a user id.
    pub(super) fn validated(self) -> Result<(OwnerKind, &'a str)> {
        match self.kind {
            OwnerKind::User => Ok((self.kind, validate::user_id(self.id)?)),
            OwnerKind::Team => Ok((self.kind, team_id(self.id)?)),
            OwnerKind::Platform => Ok((self.kind, PLATFORM_ID)),
        }
    }
}

impl fmt::Debug for Owner<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Owner")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

fn team_id(id: &str) -> Result<&str> {
    validate::user_id(id).map_err(|_| {
        Error::new(ErrorKind::InvalidTeamId).with_detail(
            "a team id must be 1 to 255 bytes, without control characters or whitespace at either end",
        )
    })
}

/// Whether a team's members' own keys win over the team's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TeamPolicy {
    /// A member's own key for a provider wins; the team's serves the providers the
    /// member has no key for. The default, also for a team with no policy stored.
    #[default]
    MembersKeysFirst,
    /// Only the team's keys (and then the platform's) serve its members; their own keys
    /// are ignored while they act for the team.
    TeamKeysOnly,
}

impl Vault {
    /// Stores a key of a user, a team or the platform, replacing any earlier one for the
    /// provider; [`put`](Self::put) for a user.
    ///
    /// ```
    /// use tower_byok::{KeySource, Keyring, MasterKey, Owner, SqliteStore, Vault};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_byok::Error> {
    /// # let keyring = Keyring::new(MasterKey::generate("k1")?);
    /// let vault = Vault::open(SqliteStore::in_memory().await?, keyring).await?;
    /// vault.put_for(Owner::team("acme"), "openai", "sk-team-acme-0123456789").await?;
    ///
    /// // A member of acme without a key of his own is served the team's.
    /// let keys = vault.keys_for_member("alice", Some("acme")).await?;
    /// assert_eq!(keys.get("openai").map(|k| k.source()), Some(KeySource::Team));
    /// // A user named like the team is no member of it.
    /// assert!(vault.keys_for_member("team:acme", None).await?.is_empty());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`put`](Self::put), with [`ErrorKind::InvalidTeamId`] for a bad team id, and
    /// [`ErrorKind::Unsupported`] for a team or the platform on a store that is not an
    /// [`OwnerStore`](crate::store::OwnerStore).
    pub async fn put_for(
        &self,
        owner: Owner<'_>,
        provider: &str,
        secret: &str,
    ) -> Result<AuditAction> {
        self.write(owner, provider, secret, None).await
    }

    /// [`put_for`](Self::put_for) with an expiry, as [`put_expiring`](Self::put_expiring).
    ///
    /// # Errors
    ///
    /// As [`put_for`](Self::put_for).
    pub async fn put_expiring_for(
        &self,
        owner: Owner<'_>,
        provider: &str,
        secret: &str,
        expires_at: SystemTime,
    ) -> Result<AuditAction> {
        self.write(owner, provider, secret, Some(expires_at)).await
    }

    /// An owner's keys as masked listings, as [`list`](Self::list).
    ///
    /// # Errors
    ///
    /// As [`put_for`](Self::put_for).
    pub async fn list_for(&self, owner: Owner<'_>) -> Result<Vec<KeyInfo>> {
        let rows = self.owner_rows(owner).await?;
        Ok(rows
            .into_iter()
            .map(|row| KeyInfo {
                provider: row.provider,
                masked: row.hint,
                fingerprint: row.fingerprint,
                master_key_id: row.key_id,
                created_at: from_unix_ms(row.created_at),
                updated_at: from_unix_ms(row.updated_at),
                expires_at: row.expires_at.map(from_unix_ms),
            })
            .collect())
    }

    /// Deletes one key of an owner; returns whether there was one.
    ///
    /// # Errors
    ///
    /// As [`put_for`](Self::put_for).
    pub async fn delete_for(&self, owner: Owner<'_>, provider: &str) -> Result<bool> {
        let (kind, id) = owner.validated()?;
        if kind == OwnerKind::User {
            return self.delete(id, provider).await;
        }
        let provider = validate::provider(provider)?;
        Ok(!self
            .remove_owned(kind, id, Some(&provider))
            .await?
            .is_empty())
    }

    /// Deletes one key (or, with no provider, all keys) of a team or the platform.
    async fn remove_owned(
        &self,
        kind: OwnerKind,
        id: &str,
        provider: Option<&str>,
    ) -> Result<Vec<String>> {
        self.inner.owners()?;
        let audit = self.owner_audit(kind, id, unix_ms(SystemTime::now()));
        let (owner_id, provider) = (id.to_owned(), provider.map(str::to_owned));
        self.detached_write(Some(Owner { kind, id }), move |inner| async move {
            inner
                .owners()?
                .delete_owner(kind, &owner_id, provider.as_deref(), &audit)
                .await
        })
        .await
    }

    /// Deletes all keys of an owner, as [`delete_all`](Self::delete_all); returns how
    /// many there were. A team's policy stays: it is not a key.
    ///
    /// ```
    /// # use tower_byok::{Keyring, MasterKey, Owner, SqliteStore, Vault};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_byok::Error> {
    /// # let vault = Vault::open(SqliteStore::in_memory().await?, Keyring::new(MasterKey::generate("k1")?)).await?;
    /// vault.put_for(Owner::team("acme"), "openai", "sk-team-acme-0123456789").await?;
    /// vault.put_for(Owner::team("acme"), "gemini", "AIza-team-acme-0123456789").await?;
    /// assert_eq!(vault.delete_all_for(Owner::team("acme")).await?, 2);
    /// assert!(vault.list_for(Owner::team("acme")).await?.is_empty());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`put_for`](Self::put_for).
    pub async fn delete_all_for(&self, owner: Owner<'_>) -> Result<usize> {
        let (kind, id) = owner.validated()?;
        if kind == OwnerKind::User {
            return self.delete_all(id).await;
        }
        Ok(self.remove_owned(kind, id, None).await?.len())
    }

    /// Sets or clears an owner's key's expiry, as [`set_expiry`](Self::set_expiry).
    ///
    /// # Errors
    ///
    /// As [`put_for`](Self::put_for).
    pub async fn set_expiry_for(
        &self,
        owner: Owner<'_>,
        provider: &str,
        expires_at: Option<SystemTime>,
    ) -> Result<bool> {
        let (kind, id) = owner.validated()?;
        if kind == OwnerKind::User {
            return self.set_expiry(id, provider, expires_at).await;
        }
        let provider = validate::provider(provider)?.into_owned();
        self.inner.owners()?;
        let audit = self.owner_audit(kind, id, unix_ms(SystemTime::now()));
        let owner_id = id.to_owned();
        self.detached_write(Some(Owner { kind, id }), move |inner| async move {
            inner
                .owners()?
                .set_owner_expiry(kind, &owner_id, &provider, expires_at.map(unix_ms), &audit)
                .await
        })
        .await
    }

    /// The keyed hash that stands for an owner in the audit trail and in this crate's
    /// log lines, as [`user_ref`](Self::user_ref) for a user (which it equals): a team's
    /// never equals any user's, so a user named like a team is no match.
    pub fn owner_ref(&self, owner: Owner<'_>) -> String {
        self.inner.secret.owner_ref(owner.kind, owner.id)
    }

    /// The audit trail of one owner, oldest first, as [`audit_trail`](Self::audit_trail)
    /// for a user: every change of a team's keys and policy, recorded under its
    /// [`owner_ref`](Self::owner_ref), never its id.
    ///
    /// ```
    /// # use tower_byok::{AuditAction, Keyring, MasterKey, Owner, SqliteStore, TeamPolicy, Vault};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_byok::Error> {
    /// # let vault = Vault::open(SqliteStore::in_memory().await?, Keyring::new(MasterKey::generate("k1")?)).await?;
    /// let acme = Owner::team("acme");
    /// vault.put_for(acme, "openai", "sk-team-acme-0123456789").await?;
    /// vault.set_team_policy("acme", TeamPolicy::TeamKeysOnly).await?;
    /// let trail = vault.audit_trail_for(acme).await?;
    /// assert_eq!(trail.iter().map(|r| r.action).collect::<Vec<_>>(), [AuditAction::Put, AuditAction::PolicyChange]);
    /// assert!(trail.iter().all(|r| r.user_ref == vault.owner_ref(acme)));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`audit_trail`](Self::audit_trail), with [`ErrorKind::InvalidTeamId`].
    pub async fn audit_trail_for(&self, owner: Owner<'_>) -> Result<Vec<AuditRecord>> {
        let (kind, id) = owner.validated()?;
        let query = AuditQuery {
            user_ref: Some(self.inner.secret.owner_ref(kind, id)),
            ..AuditQuery::default()
        };
        self.inner.audit()?.audit_trail(&query).await
    }

    /// A team's policy: [`TeamPolicy::MembersKeysFirst`] unless set otherwise.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidTeamId`], [`ErrorKind::Store`], or [`ErrorKind::Unsupported`]
    /// on a store that is not an [`OwnerStore`](crate::store::OwnerStore).
    pub async fn team_policy(&self, team_id: &str) -> Result<TeamPolicy> {
        let team_id = self::team_id(team_id)?;
        Ok(policy(self.inner.owners()?.team_policy(team_id).await?))
    }

    /// Sets a team's policy, audited as [`AuditAction::PolicyChange`]. It takes effect
    /// like a write of the team's keys: at once here, through the change feed elsewhere.
    ///
    /// # Errors
    ///
    /// As [`team_policy`](Self::team_policy).
    pub async fn set_team_policy(&self, team_id: &str, policy: TeamPolicy) -> Result<()> {
        let team_id = self::team_id(team_id)?;
        self.inner.owners()?;
        let audit = self.owner_audit(OwnerKind::Team, team_id, unix_ms(SystemTime::now()));
        let members_keys = policy == TeamPolicy::MembersKeysFirst;
        let owner_id = team_id.to_owned();
        self.detached_write(Some(Owner::team(team_id)), move |inner| async move {
            inner
                .owners()?
                .set_team_policy(&owner_id, members_keys, &audit)
                .await
        })
        .await
    }

    /// The keys a request by `user_id`, acting for `team` (or for no team), is served,
    /// per provider:
    ///
    /// 1. the user's own key, unless the team's policy is [`TeamPolicy::TeamKeysOnly`];
    /// 2. else the team's key;
    /// 3. else the platform's key, with
    ///    [`VaultBuilder::platform_fallback`](crate::VaultBuilder::platform_fallback) on;
    /// 4. else none.
    ///
    /// Each key's [`source`](crate::ProviderKey::source) says which. Expired keys count
    /// as absent. Membership is the application's decision: the vault trusts `team`.
    ///
    /// Fails closed: a key that exists but does not open, or an owner whose keys cannot
    /// be loaded, fails the whole call; it never falls through to the next owner's key.
    ///
    /// # Errors
    ///
    /// As [`keys_for`](Self::keys_for), with [`ErrorKind::InvalidTeamId`]; and
    /// [`ErrorKind::Unsupported`] for a team or the platform fallback on a store that is
    /// not an [`OwnerStore`](crate::store::OwnerStore).
    pub async fn keys_for_member(&self, user_id: &str, team: Option<&str>) -> Result<UserKeys> {
        let user_id = validate::user_id(user_id)?;
        let team = team.map(self::team_id).transpose()?;
        let own = self.cached(user_id).await.map_err(Error::new)?;
        if team.is_none() && !self.inner.platform_fallback {
            return Ok(own);
        }
        let team_keys = match team {
            Some(team) => Some(self.cached_owner(OwnerKind::Team, team).await?),
            None => None,
        };
        let platform = match self.inner.platform_fallback {
            true => Some(self.cached_owner(OwnerKind::Platform, PLATFORM_ID).await?),
            false => None,
        };
        Ok(chain(own, team_keys.as_ref(), platform.as_ref()))
    }

    /// [`keys_for_member`](Self::keys_for_member) from the caches alone, without
    /// waiting: `None` unless the user's, the team's and (when on) the platform's keys
    /// are all cached. Ids need not have been validated: only validated ids are ever
    /// cached, so any other one misses.
    pub(crate) fn member_cache_hit(&self, user_id: &str, team: Option<&str>) -> Option<UserKeys> {
        self.inner
            .cache
            .member_hit(user_id, team, self.inner.platform_fallback, chain)
    }

    /// Whether [`keys_for_member`](Self::keys_for_member) falls back to the platform's
    /// keys: then even a request acting for no team takes the chain.
    pub(crate) fn platform_fallback(&self) -> bool {
        self.inner.platform_fallback
    }

    /// A team's or the platform's keys through the owners' cache: concurrent misses of
    /// one owner share one load, as users' do.
    async fn cached_owner(&self, kind: OwnerKind, owner_id: &str) -> Result<UserKeys> {
        self.inner.owners()?;
        self.inner
            .cache
            .owners()
            .get_or_load(owner_key(kind, owner_id), || async move {
                self.load_owner(kind, owner_id).await.inspect_err(|e| {
                    tracing::warn!(owner = kind.as_str(), error = %e, "loading an owner's keys failed");
                })
            })
            .await
            .map_err(Error::new)
    }

    /// An owner's rows, straight from the store.
    async fn owner_rows(&self, owner: Owner<'_>) -> Result<Vec<StoredKey>> {
        let (kind, id) = owner.validated()?;
        match kind {
            OwnerKind::User => self.inner.store.fetch_user(id).await,
            kind => self.inner.owners()?.fetch_owner(kind, id).await,
        }
    }

    /// A team's or the platform's unexpired keys, opened, with the team's policy: one
    /// that does not open, or a policy that cannot be read, fails the whole load.
    async fn load_owner(&self, kind: OwnerKind, owner_id: &str) -> Result<UserKeys> {
        let owners = self.inner.owners()?;
        let team_keys_only = match kind {
            OwnerKind::Team => {
                policy(owners.team_policy(owner_id).await?) == TeamPolicy::TeamKeysOnly
            }
            _ => false,
        };
        let rows = owners.fetch_owner(kind, owner_id).await?;
        let now = SystemTime::now();
        let keyring = self.inner.keyring.current();
        let mut opener = Opener::for_owner(&self.inner, &keyring, kind, owner_id);
        let mut keys = Vec::with_capacity(rows.len());
        for row in &rows {
            keys.extend(opener.open(row, now)?);
        }
        keys.sort_unstable_by(|a, b| a.provider().cmp(b.provider()));
        let mut keys = UserKeys::from_sorted(keys);
        keys.team_keys_only = team_keys_only;
        Ok(keys)
    }
}

/// The chain, per provider: the user's own key (unless the team's policy says team keys
/// only), else the team's, else the platform's.
fn chain(own: UserKeys, team: Option<&UserKeys>, platform: Option<&UserKeys>) -> UserKeys {
    let mut keys = own;
    if let Some(team) = team {
        if team.team_keys_only {
            keys = UserKeys::default();
        }
        keys = keys.or_else_from(team);
        if team.is_stale() {
            keys = keys.into_stale();
        }
    }
    if let Some(platform) = platform {
        keys = keys.or_else_from(platform);
    }
    keys
}

fn policy(members_keys: Option<bool>) -> TeamPolicy {
    match members_keys {
        Some(false) => TeamPolicy::TeamKeysOnly,
        Some(true) | None => TeamPolicy::MembersKeysFirst,
    }
}

impl Inner {
    /// Forgets what this process caches of an owner, after a write of its keys.
    pub(crate) fn forget(&self, kind: OwnerKind, owner_id: &str) {
        match kind {
            OwnerKind::User => self.cache.invalidate(owner_id),
            kind => self.cache.owners().invalidate(owner_key(kind, owner_id)),
        }
    }
}

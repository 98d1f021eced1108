//! The audit trail's records: every change to a key, by whom and when, never a secret.

/// What an audit record says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuditAction {
    /// A key was stored for a provider that had none.
    Put,
    /// A key replaced an earlier one for the same provider.
    Replace,
    /// A key was deleted.
    Delete,
    /// A key's expiry was set, changed or cleared.
    ExpiryChange,
    /// A key was re-sealed under another master key (rotation); its secret is unchanged.
    Rewrap,
    /// An expired key was removed by [`Vault::purge_expired`](crate::Vault::purge_expired).
    Purge,
    /// A team's policy was set ([`Vault::set_team_policy`](crate::Vault::set_team_policy));
    /// the record's provider is empty.
    PolicyChange,
}

impl AuditAction {
    /// The name stored in the audit table.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Put => "put",
            Self::Replace => "replace",
            Self::Delete => "delete",
            Self::ExpiryChange => "expiry",
            Self::Rewrap => "rewrap",
            Self::Purge => "purge",
            Self::PolicyChange => "policy",
        }
    }

    /// Parses a name stored in the audit table.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "put" => Self::Put,
            "replace" => Self::Replace,
            "delete" => Self::Delete,
            "expiry" => Self::ExpiryChange,
            "rewrap" => Self::Rewrap,
            "purge" => Self::Purge,
            "policy" => Self::PolicyChange,
            _ => return None,
        })
    }
}

/// One audit record: who did what to which provider key of which user, and when.
///
/// The user appears only as a keyed hash ([`user_ref`](Self::user_ref)); no secret is
/// ever part of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// When, in Unix milliseconds.
    pub at: i64,
    /// The user, as a keyed hash of the user id (HMAC-SHA256, truncated, hex).
    pub user_ref: String,
    /// The provider whose key changed.
    pub provider: String,
    /// What happened.
    pub action: AuditAction,
    /// Who did it, as the application named itself to the vault.
    pub actor: String,
}

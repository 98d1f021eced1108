//! Who a stored key belongs to: a user, a team, or the platform (the application
//! itself). Each kind is its own namespace: user `acme` and team `acme` are two owners,
//! and the kind is bound into every non-user row's derived key and associated data
//! (`docs/FORMAT.md` §4 and §6), so no row opens as another kind's.

/// The kind of owner a stored key belongs to.
///
/// Rows written before owners existed are users' rows, and open exactly as before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum OwnerKind {
    /// One user of the application: the key the user brought.
    User,
    /// A team (a workspace, an organization): the key its admin set for its members.
    Team,
    /// The application itself: the key that serves when neither the user nor the team
    /// has one, and only when the layer is told to use it.
    Platform,
}

/// The owner id under which the platform's keys are stored: there is one platform.
pub(crate) const PLATFORM_ID: &str = "platform";

impl OwnerKind {
    /// The name stored in the `owner_kind` column and bound into the associated data of
    /// non-user rows: `"user"`, `"team"` or `"platform"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Team => "team",
            Self::Platform => "platform",
        }
    }

    /// The kind stored as `name`, if it is one.
    pub(crate) fn parse(name: &str) -> Option<Self> {
        match name {
            "user" => Some(Self::User),
            "team" => Some(Self::Team),
            "platform" => Some(Self::Platform),
            _ => None,
        }
    }
}

impl std::fmt::Display for OwnerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

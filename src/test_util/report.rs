//! What the isolation check found: typed failures that show keys in masked form only.

use std::fmt;

use http::StatusCode;

/// One of the check's three users: A and B store keys, C stores none. With
/// [`IsolationCheck::team`](super::IsolationCheck::team), A is a member of the team, B
/// and C are not.
///
/// Reports name users by these letters, never by the ids the app saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TestUser {
    /// Stores keys first; the team's member.
    A,
    /// Stores keys after A.
    B,
    /// Stores no key: must see none.
    C,
}

impl TestUser {
    pub(super) const ALL: [Self; 3] = [Self::A, Self::B, Self::C];

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for TestUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::A => "A",
            Self::B => "B",
            Self::C => "C",
        })
    }
}

/// The part of the check a failure was found in, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Phase {
    /// A stores keys and is served; B stores keys and is served; then A again, then C.
    OneByOne,
    /// A and B replace their keys at the same time, then all three are served at the
    /// same time, several requests each.
    Concurrent,
    /// After the app is rebuilt over the reopened vault (a redeploy): A, B and C again.
    Reopened,
    /// With [`IsolationCheck::team`](super::IsolationCheck::team): the team stores keys;
    /// A, acting for the team, B and C are served at the same time, with A's own keys,
    /// then again after A's own keys are deleted.
    Team,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OneByOne => "one by one",
            Self::Concurrent => "concurrently",
            Self::Reopened => "after reopening the vault",
            Self::Team => "with a team",
        })
    }
}

/// One thing the isolation check found wrong.
///
/// Keys appear only in masked form (`sk-p…abcd`), and any text taken from the app (an
/// error message) has the check's keys masked in it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IsolationFailure {
    /// `user` was served a key that `owner` stored: the shared `.env` file bug.
    ServedOthersKey {
        /// Where it was seen.
        phase: Phase,
        /// Who made the request.
        user: TestUser,
        /// Whose key it was.
        owner: TestUser,
        /// The provider of the key.
        provider: String,
        /// The key, masked.
        masked: String,
    },
    /// `user` had stored a key for `provider` and the response did not show it.
    MissingOwnKey {
        /// Where it was seen.
        phase: Phase,
        /// Who made the request.
        user: TestUser,
        /// The provider of the key.
        provider: String,
        /// The key expected, masked.
        masked: String,
        /// The response's status.
        status: StatusCode,
    },
    /// Storing `user`'s key failed: the app's store request did not answer with a
    /// success status, or the vault refused the key.
    StoreFailed {
        /// Where it was seen.
        phase: Phase,
        /// Whose key it was.
        user: TestUser,
        /// The provider of the key.
        provider: String,
        /// What went wrong, keys masked.
        detail: String,
    },
    /// A request as `user` failed: the service or the response body returned an error.
    RequestFailed {
        /// Where it was seen.
        phase: Phase,
        /// Who made the request.
        user: TestUser,
        /// The error, keys masked.
        detail: String,
    },
    /// `user`, who is not the team's member (B or C), was served the team's key.
    ServedTeamKey {
        /// Where it was seen.
        phase: Phase,
        /// Who made the request.
        user: TestUser,
        /// The provider of the key.
        provider: String,
        /// The team's key, masked.
        masked: String,
    },
    /// `user`, the team's member acting for it with no key of their own, was not
    /// served the team's key for `provider`.
    MissingTeamKey {
        /// Where it was seen.
        phase: Phase,
        /// Who made the request.
        user: TestUser,
        /// The provider of the key.
        provider: String,
        /// The team's key expected, masked.
        masked: String,
        /// The response's status.
        status: StatusCode,
    },
    /// Storing the team's key through the vault failed.
    TeamStoreFailed {
        /// Where it was seen.
        phase: Phase,
        /// The provider of the key.
        provider: String,
        /// What went wrong, keys masked.
        detail: String,
    },
    /// The check's own vault could not be opened or reopened: nothing was checked after.
    Vault {
        /// Where it was seen.
        phase: Phase,
        /// The vault's error message (it never holds a secret).
        detail: String,
    },
}

impl IsolationFailure {
    /// The part of the check the failure was found in.
    pub fn phase(&self) -> Phase {
        match self {
            Self::ServedOthersKey { phase, .. }
            | Self::MissingOwnKey { phase, .. }
            | Self::StoreFailed { phase, .. }
            | Self::RequestFailed { phase, .. }
            | Self::ServedTeamKey { phase, .. }
            | Self::MissingTeamKey { phase, .. }
            | Self::TeamStoreFailed { phase, .. }
            | Self::Vault { phase, .. } => *phase,
        }
    }

    /// The user whose request or key it concerns, if any.
    pub fn user(&self) -> Option<TestUser> {
        match self {
            Self::ServedOthersKey { user, .. }
            | Self::MissingOwnKey { user, .. }
            | Self::StoreFailed { user, .. }
            | Self::RequestFailed { user, .. }
            | Self::ServedTeamKey { user, .. }
            | Self::MissingTeamKey { user, .. } => Some(*user),
            Self::TeamStoreFailed { .. } | Self::Vault { .. } => None,
        }
    }
}

impl fmt::Display for IsolationFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.phase())?;
        match self {
            Self::ServedOthersKey {
                user,
                owner,
                provider,
                masked,
                ..
            } => write!(
                f,
                "user {user} was served user {owner}'s {provider} key {masked}"
            ),
            Self::MissingOwnKey {
                user,
                provider,
                masked,
                status,
                ..
            } => write!(
                f,
                "user {user} was not served their own {provider} key {masked} (status {status})"
            ),
            Self::StoreFailed {
                user,
                provider,
                detail,
                ..
            } => write!(f, "storing user {user}'s {provider} key failed: {detail}"),
            Self::RequestFailed { user, detail, .. } => {
                write!(f, "a request as user {user} failed: {detail}")
            }
            Self::ServedTeamKey {
                user,
                provider,
                masked,
                ..
            } => write!(
                f,
                "user {user}, outside the team, was served the team's {provider} key {masked}"
            ),
            Self::MissingTeamKey {
                user,
                provider,
                masked,
                status,
                ..
            } => write!(
                f,
                "user {user}, the team's member with no {provider} key of their own, was not \
                 served the team's key {masked} (status {status})"
            ),
            Self::TeamStoreFailed {
                provider, detail, ..
            } => write!(f, "storing the team's {provider} key failed: {detail}"),
            Self::Vault { detail, .. } => write!(f, "the test vault failed: {detail}"),
        }
    }
}

/// What [`IsolationCheck::run`](super::IsolationCheck::run) found: empty when the app
/// kept every user to their own keys.
///
/// `Display` lists every failure, one a line; [`assert_ok`](Self::assert_ok) panics
/// with that list.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a report fails nothing until it is checked: call `assert_ok()`"]
pub struct IsolationReport {
    pub(super) failures: Vec<IsolationFailure>,
    pub(super) requests: usize,
}

impl IsolationReport {
    /// Whether the check found nothing wrong.
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }

    /// What the check found wrong, in the order found, each once.
    pub fn failures(&self) -> &[IsolationFailure] {
        &self.failures
    }

    /// How many requests the check sent to the app, store requests included.
    pub fn requests(&self) -> usize {
        self.requests
    }

    /// Panics with the list of failures unless the check found nothing wrong.
    #[track_caller]
    pub fn assert_ok(&self) {
        assert!(self.is_ok(), "{self}");
    }

    pub(super) fn push(&mut self, failure: IsolationFailure) {
        if !self.failures.contains(&failure) {
            self.failures.push(failure);
        }
    }
}

impl fmt::Display for IsolationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_ok() {
            return write!(f, "isolation check passed ({} requests)", self.requests);
        }
        let n = self.failures.len();
        let failures = if n == 1 { "failure" } else { "failures" };
        write!(
            f,
            "isolation check failed ({n} {failures}, {} requests):",
            self.requests
        )?;
        for failure in &self.failures {
            write!(f, "\n  - {failure}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_reads_as_one_line() {
        let phase = Phase::OneByOne;
        let (user, provider) = (TestUser::B, "openai".to_owned());
        let lines = [
            IsolationFailure::ServedOthersKey {
                phase,
                user,
                owner: TestUser::A,
                provider: provider.clone(),
                masked: "sk-p…abcd".into(),
            },
            IsolationFailure::MissingOwnKey {
                phase: Phase::Concurrent,
                user,
                provider: provider.clone(),
                masked: "sk-q…wxyz".into(),
                status: StatusCode::TOO_MANY_REQUESTS,
            },
            IsolationFailure::StoreFailed {
                phase: Phase::Reopened,
                user,
                provider,
                detail: "the app answered 400 Bad Request".into(),
            },
            IsolationFailure::RequestFailed {
                phase,
                user: TestUser::C,
                detail: "boom".into(),
            },
            IsolationFailure::Vault {
                phase,
                detail: "key store error".into(),
            },
            IsolationFailure::ServedTeamKey {
                phase: Phase::Team,
                user,
                provider: "openai".into(),
                masked: "sk-t…team".into(),
            },
            IsolationFailure::MissingTeamKey {
                phase: Phase::Team,
                user: TestUser::A,
                provider: "openai".into(),
                masked: "sk-t…team".into(),
                status: StatusCode::PRECONDITION_REQUIRED,
            },
            IsolationFailure::TeamStoreFailed {
                phase: Phase::Team,
                provider: "openai".into(),
                detail: "boom".into(),
            },
        ]
        .map(|f| f.to_string());
        assert_eq!(
            lines,
            [
                "one by one: user B was served user A's openai key sk-p…abcd",
                "concurrently: user B was not served their own openai key sk-q…wxyz (status 429 Too Many Requests)",
                "after reopening the vault: storing user B's openai key failed: the app answered 400 Bad Request",
                "one by one: a request as user C failed: boom",
                "one by one: the test vault failed: key store error",
                "with a team: user B, outside the team, was served the team's openai key sk-t…team",
                "with a team: user A, the team's member with no openai key of their own, was not served the team's key sk-t…team (status 428 Precondition Required)",
                "with a team: storing the team's openai key failed: boom",
            ]
        );
        let mut report = IsolationReport {
            failures: Vec::new(),
            requests: 3,
        };
        assert_eq!(report.to_string(), "isolation check passed (3 requests)");
        let failure = IsolationFailure::Vault {
            phase,
            detail: "x".into(),
        };
        report.push(failure.clone());
        report.push(failure);
        assert_eq!(report.failures().len(), 1, "each failure once");
        assert_eq!(
            report.to_string(),
            "isolation check failed (1 failure, 3 requests):\n  - one by one: the test vault failed: x"
        );
    }
}

//! The isolation check: drives an app as users A, B and C and reports who saw whose key.

use std::fmt;

use chacha20poly1305::aead::Generate;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;
use zeroize::Zeroizing;

use super::exchange::{answer, join_all, ready, Answer};
use super::report::{IsolationFailure, IsolationReport, Phase, TestUser};
use super::vault::TestVault;
use crate::vault::{Owner, Vault};

/// How many requests each user makes at once in [`Phase::Concurrent`].
const CONCURRENT_ROUNDS: usize = 4;
/// The longest error text kept in a report.
const MAX_DETAIL: usize = 300;

type MakeApp<'a, S> = Box<dyn Fn(Vault) -> S + 'a>;
type MakeRequest<'a, B> = Box<dyn Fn(&str) -> Request<B> + 'a>;
type MakeStore<'a, B> = Box<dyn Fn(&str, &str, &str) -> Request<B> + 'a>;
type MakeMemberRequest<'a, B> = Box<dyn Fn(&str, &str) -> Request<B> + 'a>;

/// The team of [`IsolationCheck::team`]: its id, and how a member's request acts for it.
struct Team<'a, B> {
    id: String,
    request: MakeMemberRequest<'a, B>,
}

/// Checks that an app serves each user their own keys and nobody else's, and that they
/// survive a restart: the old shared-`.env` bugs, as a test.
///
/// The check drives any [`Service`] of [`http::Request`]s (an axum `Router` is one) as
/// users A, B and C:
///
/// 1. **one by one**: A stores a key for each provider and is served; B stores keys
///    and is served; A is served again, then C, who stored nothing;
/// 2. **concurrently**: A and B replace their keys at the same time, then A, B and C
///    make several requests each, all in flight at once;
/// 3. **after reopening the vault**: the app is dropped and rebuilt over a new vault
///    on the same database file and keyring (a redeploy); A, B and C are served again;
/// 4. **with a team**, if [`team`](Self::team) names one: the team stores a key for each
///    provider; A, a member acting for the team, and B and C, who are not, are served
///    at the same time, several requests each; then A's own keys are deleted and they
///    are served again. B and C must never be shown the team's keys; A, once without
///    keys of their own, must be shown each of the team's.
///
/// Each key is a fresh random secret shaped like the provider's own (`sk-…`, `AIza…`,
/// `gsk_…`, `sk-ant-…`). A response (status, headers and body, read whole) "shows" a
/// key when it contains it in full or in its masked form
/// ([`ProviderKey::masked`](crate::ProviderKey::masked), `sk-p…abcd`). So the request
/// must reach a route whose answer shows which keys the handler got, e.g. one that
/// echoes `key.masked()` for each provider, or a listing of the caller's keys. Each
/// answer to A or B must show each of their current keys and none of the other's; each
/// answer to C must show none.
///
/// The check needs to know three things about the app:
///
/// - how to build it over a vault: `make_app`, called once at the start and once after
///   the reopening, with a [`Vault`] on a temporary SQLite file ([`TestVault`]);
/// - how to make a request as a given user id: `request`, which must authenticate it
///   the app's way (a signed bearer token, a session cookie, a trusted header);
/// - how users store keys: through the vault directly by default, or through the app's
///   own endpoint with [`store_through_app`](Self::store_through_app).
///
/// What it cannot see: state an app keeps in statics or environment variables outlives
/// the rebuild, since the check runs in one process; concurrency is one task's
/// interleaving at the app's `.await` points, not threads.
///
/// The report ([`IsolationReport`]) lists each failure with keys masked, e.g.
/// `one by one: user B was served user A's openai key sk-p…abcd`.
///
/// ```
/// use axum::{body::Body, routing::get, Router};
/// use http::Request;
/// use tower_byok::{resolve::FromHeader, test_util::IsolationCheck, ByokLayer, UserKeys, Vault};
///
/// async fn which_keys(keys: UserKeys) -> String {
///     keys.iter().map(|k| format!("{} {}\n", k.provider(), k.masked())).collect()
/// }
///
/// fn app(vault: Vault) -> Router {
///     Router::new()
///         .route("/which-keys", get(which_keys))
///         .layer(ByokLayer::new(vault, FromHeader::new("x-user")))
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// IsolationCheck::new(app, |user| {
///     Request::get("/which-keys").header("x-user", user).body(Body::empty()).unwrap()
/// })
/// .providers(["openai", "gemini"])
/// .run()
/// .await
/// .assert_ok();
/// # }
/// ```
pub struct IsolationCheck<'a, S, B> {
    make_app: MakeApp<'a, S>,
    request: MakeRequest<'a, B>,
    store: Option<MakeStore<'a, B>>,
    team: Option<Team<'a, B>>,
    users: [String; 3],
    providers: Vec<String>,
}

impl<'a, S, B> IsolationCheck<'a, S, B> {
    /// A check of the app `make_app` builds over a vault, with `request` making an
    /// authenticated request as a user id to a route that shows the keys it was served.
    ///
    /// The defaults: user ids `isolation-user-a`, `-b` and `-c`; one provider,
    /// `openai`; keys stored through the vault directly.
    pub fn new(
        make_app: impl Fn(Vault) -> S + 'a,
        request: impl Fn(&str) -> Request<B> + 'a,
    ) -> Self {
        Self {
            make_app: Box::new(make_app),
            request: Box::new(request),
            store: None,
            team: None,
            users: ["a", "b", "c"].map(|u| format!("isolation-user-{u}")),
            providers: vec!["openai".to_owned()],
        }
    }

    /// The user ids of A, B and C, for an app that only knows some users (e.g. fixed
    /// demo tokens).
    ///
    /// # Panics
    ///
    /// If two are equal or one is not a valid user id.
    #[must_use]
    pub fn users(mut self, a: &str, b: &str, c: &str) -> Self {
        for (i, id) in [a, b, c].into_iter().enumerate() {
            if let Err(e) = crate::validate::user_id(id) {
                panic!("IsolationCheck::users: user {}: {e}", TestUser::ALL[i]);
            }
        }
        assert!(
            a != b && b != c && a != c,
            "IsolationCheck::users: the three user ids must differ"
        );
        self.users = [a, b, c].map(str::to_owned);
        self
    }

    /// The providers A and B store a key for, in place of `["openai"]`. Every answer
    /// to A or B must show a key for each.
    ///
    /// # Panics
    ///
    /// If the list is empty or a name is not a valid provider name.
    #[must_use]
    pub fn providers<I, P>(mut self, providers: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: AsRef<str>,
    {
        let mut names = Vec::new();
        for (i, p) in providers.into_iter().enumerate() {
            let name = match crate::validate::provider(p.as_ref()) {
                Ok(name) => name.into_owned(),
                Err(e) => panic!("IsolationCheck::providers: provider {i}: {e}"),
            };
            if !names.contains(&name) {
                names.push(name);
            }
        }
        assert!(
            !names.is_empty(),
            "IsolationCheck::providers: name at least one provider"
        );
        self.providers = names;
        self
    }

    /// Users store their keys through the app: `store(user_id, provider, secret)` makes
    /// the app's authenticated store request (e.g. `PUT /keys/{provider}` with the
    /// secret as the body), and the app must answer with a success status (2xx).
    #[must_use]
    pub fn store_through_app(
        mut self,
        store: impl Fn(&str, &str, &str) -> Request<B> + 'a,
    ) -> Self {
        self.store = Some(Box::new(store));
        self
    }

    /// Adds the team cases (phase [`Phase::Team`]): user A is a member of the team
    /// `team_id`, B and C are not. `request(user_id, team_id)` makes an authenticated
    /// request as the user acting for the team, to the same kind of route as `request`
    /// of [`new`](Self::new); the app's resolver must name the team (e.g.
    /// [`FromExtension::with_team`](crate::resolve::FromExtension::with_team)). The
    /// team's keys are stored through the vault ([`Vault::put_for`]), with the team's
    /// default policy: a member's own key wins.
    ///
    /// ```
    /// use axum::{body::Body, routing::get, Router};
    /// use http::Request;
    /// use tower_byok::{resolve::FromHeader, test_util::IsolationCheck, ByokLayer, UserKeys, Vault};
    ///
    /// async fn which_keys(keys: UserKeys) -> String {
    ///     keys.iter().map(|k| format!("{} {}\n", k.provider(), k.masked())).collect()
    /// }
    ///
    /// fn app(vault: Vault) -> Router {
    ///     // Trusted headers set by an authenticating proxy in front.
    ///     let resolver = FromHeader::new("x-user").with_team_header("x-team");
    ///     Router::new().route("/which-keys", get(which_keys)).layer(ByokLayer::new(vault, resolver))
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let as_user = |user: &str| Request::get("/which-keys").header("x-user", user).body(Body::empty()).unwrap();
    /// let as_member = |user: &str, team: &str| {
    ///     Request::get("/which-keys").header("x-user", user).header("x-team", team).body(Body::empty()).unwrap()
    /// };
    /// IsolationCheck::new(app, as_user).team("isolation-team", as_member).run().await.assert_ok();
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// If `team_id` is not a valid team id.
    #[must_use]
    pub fn team(mut self, team_id: &str, request: impl Fn(&str, &str) -> Request<B> + 'a) -> Self {
        if let Err(e) = crate::validate::user_id(team_id) {
            panic!("IsolationCheck::team: {e}");
        }
        self.team = Some(Team {
            id: team_id.to_owned(),
            request: Box::new(request),
        });
        self
    }
}

impl<S, B, ResBody> IsolationCheck<'_, S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: fmt::Display,
    ResBody: Body,
    ResBody::Error: fmt::Display,
{
    /// Runs the check. Failures are in the report, not panics: call
    /// [`IsolationReport::assert_ok`] on it in a test.
    pub async fn run(self) -> IsolationReport {
        let mut run = Run {
            check: &self,
            keys: Keys::generate(&self.providers),
            report: IsolationReport {
                failures: Vec::new(),
                requests: 0,
            },
            member: false,
        };
        run.all().await;
        run.report
    }
}

impl<S, B> fmt::Debug for IsolationCheck<'_, S, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IsolationCheck")
            .field("providers", &self.providers)
            .field("store_through_app", &self.store.is_some())
            .field("team", &self.team.is_some())
            .finish_non_exhaustive()
    }
}

/// One secret of the check: user A's or B's, for one provider, in one generation (the
/// second replaces the first in [`Phase::Concurrent`]).
struct Canary {
    owner: TestUser,
    generation: usize,
    provider: String,
    secret: Zeroizing<String>,
    masked: String,
}

/// The check's secrets: A's and B's in `users`, the team's in `team` (their `owner`
/// is A, the member, and never read).
struct Keys {
    users: Vec<Canary>,
    team: Vec<Canary>,
}

impl Keys {
    /// Fresh random secrets with pairwise different masked forms.
    fn generate(providers: &[String]) -> Self {
        let mut keys: Vec<Canary> = Vec::new();
        let mut fresh = |owner, generation, provider: &String| loop {
            let secret = random_secret(provider);
            let masked = crate::validate::mask(&secret);
            if keys.iter().all(|k| k.masked != masked) {
                keys.push(Canary {
                    owner,
                    generation,
                    provider: provider.clone(),
                    secret,
                    masked,
                });
                return;
            }
        };
        for owner in [TestUser::A, TestUser::B] {
            for generation in 0..2 {
                for provider in providers {
                    fresh(owner, generation, provider);
                }
            }
        }
        // The team's, generation 2: after every user's.
        for provider in providers {
            fresh(TestUser::A, 2, provider);
        }
        let team = keys.split_off(keys.len() - providers.len());
        Self { users: keys, team }
    }

    fn of(&self, owner: TestUser, generation: usize) -> impl Iterator<Item = &Canary> {
        self.users
            .iter()
            .filter(move |k| k.owner == owner && k.generation == generation)
    }

    /// `text` with every secret of the check replaced by its masked form, cut short.
    fn scrub(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for key in self.users.iter().chain(&self.team) {
            text = text.replace(key.secret.as_str(), &key.masked);
        }
        match text.char_indices().nth(MAX_DETAIL) {
            Some((i, _)) => format!("{}…", &text[..i]),
            None => text,
        }
    }
}

/// A random key shaped like the provider's (so that the crate's built-in format checks
/// and most apps' own accept it), letters and digits after the prefix.
fn random_secret(provider: &str) -> Zeroizing<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let (prefix, len) = match provider {
        "anthropic" => ("sk-ant-", 48),
        "gemini" | "google" => ("AIza", 39),
        "groq" => ("gsk_", 48),
        _ => ("sk-", 48),
    };
    // From the OS CSPRNG (`getrandom`), as the crate's own keys.
    let bytes = Zeroizing::new(<[u8; 64]>::generate());
    let mut secret = Zeroizing::new(String::with_capacity(len));
    secret.push_str(prefix);
    for b in bytes.iter().take(len - prefix.len()) {
        secret.push(char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]));
    }
    secret
}

struct Run<'c, 'a, S, B> {
    check: &'c IsolationCheck<'a, S, B>,
    keys: Keys,
    report: IsolationReport,
    /// Whether A's requests act for the team (phase [`Phase::Team`]).
    member: bool,
}

impl<S, B, ResBody> Run<'_, '_, S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: fmt::Display,
    ResBody: Body,
    ResBody::Error: fmt::Display,
{
    async fn all(&mut self) {
        use TestUser::{A, B, C};
        let test_vault = match TestVault::try_new().await {
            Ok(v) => v,
            Err(e) => return self.vault_failed(Phase::OneByOne, &e),
        };
        let vault = test_vault.vault();
        let mut app = (self.check.make_app)(vault.clone());
        // The generation of each user's keys the app should serve, if any.
        let mut current: [Option<usize>; 3] = [None; 3];

        let phase = Phase::OneByOne;
        self.store(&mut app, &vault, phase, &[(A, 0)]).await;
        current[A.index()] = Some(0);
        self.serve(&mut app, phase, &[A], &current).await;
        self.store(&mut app, &vault, phase, &[(B, 0)]).await;
        current[B.index()] = Some(0);
        for user in [B, A, C] {
            self.serve(&mut app, phase, &[user], &current).await;
        }

        let phase = Phase::Concurrent;
        self.store(&mut app, &vault, phase, &[(A, 1), (B, 1)]).await;
        current = [Some(1), Some(1), None];
        let users: Vec<TestUser> = (0..CONCURRENT_ROUNDS).flat_map(|_| [A, B, C]).collect();
        self.serve(&mut app, phase, &users, &current).await;

        let phase = Phase::Reopened;
        drop(app);
        drop(vault);
        let vault = match test_vault.try_reopen().await {
            Ok(v) => v,
            Err(e) => return self.vault_failed(phase, &e),
        };
        let mut app = (self.check.make_app)(vault.clone());
        for user in [A, B, C] {
            self.serve(&mut app, phase, &[user], &current).await;
        }

        if let Some(team) = &self.check.team {
            self.team(&mut app, &vault, &team.id, current).await;
        }
    }

    /// Phase [`Phase::Team`]: the team stores its keys; A acts for it, B and C do not;
    /// then A's own keys are deleted.
    async fn team(
        &mut self,
        app: &mut S,
        vault: &Vault,
        team: &str,
        mut current: [Option<usize>; 3],
    ) {
        use TestUser::{A, B, C};
        let phase = Phase::Team;
        for k in &self.keys.team {
            if let Err(e) = vault
                .put_for(Owner::team(team), &k.provider, &k.secret)
                .await
            {
                let detail = self.keys.scrub(&e.to_string());
                let provider = k.provider.clone();
                self.report.push(IsolationFailure::TeamStoreFailed {
                    phase,
                    provider,
                    detail,
                });
            }
        }
        self.member = true;
        let users: Vec<TestUser> = (0..CONCURRENT_ROUNDS).flat_map(|_| [A, B, C]).collect();
        self.serve(app, phase, &users, &current).await;
        if let Err(e) = vault.delete_all(&self.check.users[A.index()]).await {
            let detail = self.keys.scrub(&e.to_string());
            return self.report.push(IsolationFailure::Vault { phase, detail });
        }
        current[A.index()] = None;
        self.serve(app, phase, &users, &current).await;
    }

    fn vault_failed(&mut self, phase: Phase, e: &crate::Error) {
        let detail = self.keys.scrub(&e.to_string());
        self.report.push(IsolationFailure::Vault { phase, detail });
    }

    /// Stores the keys of each `(user, generation)`, all at once.
    async fn store(&mut self, app: &mut S, vault: &Vault, phase: Phase, who: &[(TestUser, usize)]) {
        let keys = &self.keys;
        let users = &self.check.users;
        let puts: Vec<(TestUser, &Canary)> = who
            .iter()
            .flat_map(|&(user, generation)| keys.of(user, generation).map(move |k| (user, k)))
            .collect();
        let results: Vec<Result<(), String>> = match &self.check.store {
            None => {
                let futures = puts.iter().map(|(user, k)| async move {
                    let id = &users[user.index()];
                    vault
                        .put(id, &k.provider, &k.secret)
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string())
                });
                join_all(futures.collect()).await
            }
            Some(make) => {
                let mut futures = Vec::new();
                for (user, k) in &puts {
                    let req = make(&users[user.index()], &k.provider, &k.secret);
                    let call = ready(app).await.map(|()| app.call(req));
                    futures.push(answer(call));
                }
                self.report.requests += futures.len();
                join_all(futures)
                    .await
                    .into_iter()
                    .map(|answer| match answer {
                        Ok(a) if a.status.is_success() => Ok(()),
                        Ok(a) => Err(format!("the app answered {}", a.status)),
                        Err(e) => Err(e),
                    })
                    .collect()
            }
        };
        for ((user, k), result) in puts.iter().zip(results) {
            if let Err(detail) = result {
                let detail = self.keys.scrub(&detail);
                self.report.push(IsolationFailure::StoreFailed {
                    phase,
                    user: *user,
                    provider: k.provider.clone(),
                    detail,
                });
            }
        }
    }

    /// Sends one request as each of `users`, all at once, and checks each answer.
    async fn serve(
        &mut self,
        app: &mut S,
        phase: Phase,
        users: &[TestUser],
        current: &[Option<usize>; 3],
    ) {
        let mut futures = Vec::new();
        for user in users {
            let id = &self.check.users[user.index()];
            let req = match &self.check.team {
                Some(team) if self.member && *user == TestUser::A => (team.request)(id, &team.id),
                _ => (self.check.request)(id),
            };
            let call = ready(app).await.map(|()| app.call(req));
            futures.push(answer(call));
        }
        self.report.requests += futures.len();
        for (user, answer) in users.iter().zip(join_all(futures).await) {
            match answer {
                Ok(answer) => self.judge(phase, *user, &answer, current),
                Err(e) => {
                    let detail = self.keys.scrub(&e);
                    self.report.push(IsolationFailure::RequestFailed {
                        phase,
                        user: *user,
                        detail,
                    });
                }
            }
        }
    }

    /// The answer to `user` must show each of their current keys and no other user's.
    fn judge(
        &mut self,
        phase: Phase,
        user: TestUser,
        answer: &Answer,
        current: &[Option<usize>; 3],
    ) {
        let shows =
            |k: &Canary| answer.text.contains(k.secret.as_str()) || answer.text.contains(&k.masked);
        let mut found = Vec::new();
        if let Some(generation) = current[user.index()] {
            for k in self.keys.of(user, generation).filter(|k| !shows(k)) {
                found.push(IsolationFailure::MissingOwnKey {
                    phase,
                    user,
                    provider: k.provider.clone(),
                    masked: k.masked.clone(),
                    status: answer.status,
                });
            }
        }
        for k in self
            .keys
            .users
            .iter()
            .filter(|k| k.owner != user && shows(k))
        {
            found.push(IsolationFailure::ServedOthersKey {
                phase,
                user,
                owner: k.owner,
                provider: k.provider.clone(),
                masked: k.masked.clone(),
            });
        }
        // The team's keys: never shown to anyone not acting for it; shown to the member
        // acting for it once they have no keys of their own.
        let acting = self.member && user == TestUser::A;
        for k in &self.keys.team {
            if !acting && shows(k) {
                found.push(IsolationFailure::ServedTeamKey {
                    phase,
                    user,
                    provider: k.provider.clone(),
                    masked: k.masked.clone(),
                });
            } else if acting && current[user.index()].is_none() && !shows(k) {
                found.push(IsolationFailure::MissingTeamKey {
                    phase,
                    user,
                    provider: k.provider.clone(),
                    masked: k.masked.clone(),
                    status: answer.status,
                });
            }
        }
        for failure in found {
            self.report.push(failure);
        }
    }
}

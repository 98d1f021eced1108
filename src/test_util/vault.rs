//! Vaults for tests: one in memory, and one on a temporary file that can be reopened.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};
use crate::keyring::{Keyring, MasterKey};
use crate::store::sqlite::SqliteStore;
use crate::vault::Vault;

/// The id of the master key the test vaults generate.
const TEST_KEY_ID: &str = "test-1";

fn test_keyring() -> Result<Keyring> {
    Ok(Keyring::new(MasterKey::generate(TEST_KEY_ID)?))
}

/// A vault on a private in-memory SQLite database, with a freshly generated keyring: for
/// tests of routes that store and read keys. It is gone when its last clone is dropped
/// (use [`TestVault`] to test what survives a restart).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_byok::Error> {
/// let vault = tower_byok::test_util::memory_vault().await;
/// vault.put("alice", "openai", "sk-test-alice-0001").await?;
/// assert!(vault.get_all("bob").await?.is_empty());
/// # Ok(()) }
/// ```
///
/// # Panics
///
/// If SQLite cannot start: a test helper panics rather than return an error nobody
/// handles. The message holds no secret.
pub async fn memory_vault() -> Vault {
    let open = async { Vault::open(SqliteStore::in_memory().await?, test_keyring()?).await };
    match open.await {
        Ok(vault) => vault,
        Err(e) => panic!("test_util::memory_vault: cannot open an in-memory vault: {e}"),
    }
}

/// A vault on a SQLite file in a temporary directory, with a generated keyring that it
/// keeps, so that [`reopen`](Self::reopen) opens the same keys again, as a redeployed
/// app would. The directory is removed when the `TestVault` is dropped.
///
/// ```
/// use tower_byok::test_util::TestVault;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_byok::Error> {
/// let test_vault = TestVault::new().await;
/// test_vault.vault().put("alice", "openai", "sk-test-alice-0001").await?;
///
/// // "Redeploy": a new vault over the same file and keyring still has alice's key.
/// let reopened = test_vault.reopen().await;
/// assert!(reopened.get("alice", "openai").await?.is_some());
/// # Ok(()) }
/// ```
pub struct TestVault {
    // Dropped in this order: the vault (and its pool) before the directory.
    vault: Vault,
    keyring: Keyring,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestVault {
    /// Creates the temporary directory, the database file and the keyring, and opens a
    /// vault on them.
    ///
    /// # Panics
    ///
    /// If the directory or the database cannot be created. The message holds no secret.
    pub async fn new() -> Self {
        match Self::try_new().await {
            Ok(test_vault) => test_vault,
            Err(e) => panic!("test_util::TestVault::new: cannot open a test vault: {e}"),
        }
    }

    pub(super) async fn try_new() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("tower-byok-test-")
            .tempdir()
            .map_err(|e| {
                Error::new(ErrorKind::Store)
                    .with_detail("could not create a temporary directory")
                    .with_source(e)
            })?;
        let path = dir.path().join("keys.db");
        let keyring = test_keyring()?;
        let vault = Vault::open(SqliteStore::open(&path).await?, keyring.clone()).await?;
        Ok(Self {
            vault,
            keyring,
            path,
            _dir: dir,
        })
    }

    /// The vault opened by [`new`](Self::new) (a clone: clones share the cache).
    pub fn vault(&self) -> Vault {
        self.vault.clone()
    }

    /// A new vault over the same database file and keyring, with a cache of its own: what
    /// an app opens after a restart or a redeploy. Drop the old app first to test a
    /// restart faithfully; vaults opened earlier keep working meanwhile.
    ///
    /// # Panics
    ///
    /// If the database cannot be opened again. The message holds no secret.
    pub async fn reopen(&self) -> Vault {
        match self.try_reopen().await {
            Ok(vault) => vault,
            Err(e) => panic!("test_util::TestVault::reopen: cannot reopen the test vault: {e}"),
        }
    }

    pub(super) async fn try_reopen(&self) -> Result<Vault> {
        Vault::open(SqliteStore::open(&self.path).await?, self.keyring.clone()).await
    }

    /// The database file, e.g. to open it with the admin CLI or a second store.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl fmt::Debug for TestVault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestVault")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

//! tower-byok (crate docs are written in the README and below).
#![cfg_attr(docsrs, feature(doc_cfg))]

mod cache;
mod crypto;
mod error;
pub mod keyring;
mod keys;
pub mod store;
mod validate;
mod vault;

pub use crate::error::{Error, ErrorKind, Result};
pub use crate::keyring::{Keyring, MasterKey};
pub use crate::keys::{KeyInfo, KeySource, ProviderKey, UserKeys};
#[cfg(feature = "postgres")]
pub use crate::store::PostgresStore;
#[cfg(feature = "sqlite")]
pub use crate::store::SqliteStore;
pub use crate::store::{AuditAction, AuditRecord, KeyStore};
pub use crate::validate::{MAX_PROVIDER_LEN, MAX_SECRET_LEN, MAX_USER_ID_LEN};
pub use crate::vault::{Vault, VaultBuilder, DEFAULT_ACTOR};

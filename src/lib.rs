//! tower-byok (crate docs are written in the README and below).
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod cache;
mod crypto;
mod error;
#[cfg(feature = "axum")]
mod extract;
mod future;
pub mod keyring;
mod keys;
mod layer;
mod rejection;
pub mod resolve;
mod service;
pub mod store;
mod validate;
mod vault;

pub use crate::body::ByokBody;
pub use crate::error::{Error, ErrorKind, Result};
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub use crate::extract::KeysRejection;
pub use crate::future::ResponseFuture;
pub use crate::keyring::{Keyring, MasterKey};
pub use crate::keys::{KeyInfo, KeySource, ProviderKey, UserKeys};
pub use crate::layer::{ByokLayer, DevEnvFallback};
pub use crate::resolve::ResolveUser;
pub use crate::service::Byok;
#[cfg(feature = "postgres")]
pub use crate::store::PostgresStore;
#[cfg(feature = "sqlite")]
pub use crate::store::SqliteStore;
pub use crate::store::{AuditAction, AuditRecord, KeyStore};
pub use crate::validate::{MAX_PROVIDER_LEN, MAX_SECRET_LEN, MAX_USER_ID_LEN};
pub use crate::vault::{Vault, VaultBuilder, DEFAULT_ACTOR};

//! The middleware: [`ByokLayer`] makes [`Byok`] services, whose calls return a
//! [`ResponseFuture`].
//!
//! A request flows one way through these files:
//!
//! - `layer.rs`: [`ByokLayer`] and its `with_*` settings, which build a [`Config`];
//! - `service.rs`: [`Byok::call`](tower_service::Service::call) resolves the user and
//!   asks the vault's cache; a hit is prepared and handed to the inner service at once;
//! - `future.rs`: on a miss, [`ResponseFuture`] awaits the one boxed load, prepares the
//!   request, then calls the inner service;
//! - `config.rs`: what the layer was told ([`Config`], [`DevEnvFallback`]) and
//!   [`prepare`], the one step both the hit path and the miss path run;
//! - `rejection.rs`: the responses the layer answers with itself ([`Rejection`]);
//! - `body.rs`: [`ByokBody`], for inner services whose body type the layer cannot
//!   answer in.
//!
//! Each file uses only the ones listed after it.

mod body;
mod config;
mod future;
mod layer;
mod rejection;
mod service;

pub use self::body::ByokBody;
pub use self::config::DevEnvFallback;
pub use self::future::ResponseFuture;
pub use self::layer::ByokLayer;
pub use self::rejection::Rejection;
pub use self::service::Byok;

//! What the format parsers share: where a key was found, and the collector that
//! refuses ambiguous input.

use std::collections::HashMap;

use zeroize::Zeroizing;

use super::json::JsonPath;
use super::{import_error, SkipReason, Skipped};
use crate::env_file::looks_like_fernet;
use crate::error::Result;
use crate::validate::MAX_SECRET_LEN;

// ---------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------

/// Where in the file a key was found.
pub(super) enum Origin {
    Line { line: usize, var: String },
    Json(JsonPath),
}

impl Origin {
    /// For the plan, which the operator reads: JSON paths with their user ids.
    pub(super) fn for_plan(&self) -> String {
        match self {
            Self::Line { line, var } => format!("line {line} ({var})"),
            Self::Json(path) => path.render(true),
        }
    }

    /// For errors: user ids replaced by positions.
    pub(super) fn for_error(&self) -> String {
        match self {
            Self::Line { line, var } => format!("line {line} ({var})"),
            Self::Json(path) => format!("`{}`", path.render(false)),
        }
    }
}

pub(super) struct FoundKey {
    pub(super) user_id: String,
    pub(super) provider: String,
    pub(super) secret: Zeroizing<String>,
    pub(super) origin: Origin,
}

/// The keys found so far, one per user and provider, and what was skipped.
#[derive(Default)]
pub(super) struct Collector {
    pub(super) keys: Vec<FoundKey>,
    pub(super) index: HashMap<(String, String), usize>,
    pub(super) skipped: Vec<Skipped>,
}

impl Collector {
    pub(super) fn skip(&mut self, origin: &Origin, reason: SkipReason) {
        self.skipped.push(Skipped {
            origin: origin.for_plan(),
            reason,
        });
    }

    pub(super) fn add(
        &mut self,
        user_id: &str,
        provider: String,
        raw: &str,
        origin: Origin,
    ) -> Result<()> {
        let secret = raw.trim();
        if secret.is_empty() {
            self.skip(&origin, SkipReason::Empty);
            return Ok(());
        }
        if secret.len() > MAX_SECRET_LEN {
            return Err(import_error(format!(
                "{}: the key is longer than 16 KiB",
                origin.for_error()
            )));
        }
        if looks_like_fernet(secret) {
            return Err(import_error(format!(
                "{}: the value looks encrypted by the old app (a Fernet token); decrypt \
                 the file's keys before importing",
                origin.for_error()
            )));
        }
        let slot = (user_id.to_owned(), provider);
        if let Some(&i) = self.index.get(&slot) {
            let earlier = &self.keys[i];
            if earlier.secret.as_str() != secret {
                return Err(import_error(format!(
                    "ambiguous input: {} and {} hold different keys for provider `{}` of \
                     the same user; remove one and plan again",
                    earlier.origin.for_error(),
                    origin.for_error(),
                    earlier.provider
                )));
            }
            self.skip(&origin, SkipReason::Duplicate);
            return Ok(());
        }
        self.index.insert(slot.clone(), self.keys.len());
        self.keys.push(FoundKey {
            user_id: slot.0,
            provider: slot.1,
            secret: Zeroizing::new(secret.to_owned()),
            origin,
        });
        Ok(())
    }
}

pub(super) fn utf8(bytes: &[u8]) -> Result<&str> {
    std::str::from_utf8(bytes).map_err(|e| {
        let line = 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        import_error(format!("line {line}: not valid UTF-8"))
    })
}

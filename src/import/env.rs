//! `.env` files, read with the grammar and mapping of [`crate::env_file`].

use super::collect::{Collector, Origin};
use super::{import_error, SkipReason};
use crate::env_file::{assignments, EnvMapping};
use crate::error::Result;

pub(super) fn parse_dotenv(
    text: &str,
    user_id: &str,
    vars: &EnvMapping,
    found: &mut Collector,
) -> Result<()> {
    for assignment in assignments(text) {
        // The error names the line by number only: the line may hold a secret.
        let assignment =
            assignment.map_err(|e| import_error(format!("line {}: {}", e.line, e.what)))?;
        let origin = Origin::Line {
            line: assignment.line,
            var: assignment.name.to_owned(),
        };
        match vars.provider_for(assignment.name) {
            Some(provider) => found.add(user_id, provider, &assignment.value, origin)?,
            None => found.skip(&origin, SkipReason::NotAProviderKey),
        }
    }
    Ok(())
}

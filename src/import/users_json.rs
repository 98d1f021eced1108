//! Users JSON files: per-user key maps, keyed by user id or listed.

use super::collect::{Collector, Origin};
use super::json::{expected, member, ordinal, string_member, JsonPath, Node, Seg};
use super::{import_error, SkipReason};
use crate::env_file::strip_api_key_suffix;
use crate::error::Result;
use crate::validate;

pub(super) fn parse_users(root: &Node, found: &mut Collector) -> Result<()> {
    let root_path = JsonPath::default();
    match root {
        Node::Array(entries) => user_list(entries, &root_path, found),
        Node::Object(members) => match member(members, "users", &root_path)? {
            None => user_map(members, &root_path, found),
            Some(users) => {
                let entry_beside = members.iter().any(|(key, node)| {
                    key != "users"
                        && matches!(node, Node::Object(m) if m.iter().any(|(k, _)| k == "api_keys"))
                });
                if entry_beside {
                    return Err(import_error(
                        "ambiguous input: `$` has both a `users` member and user entries beside it",
                    ));
                }
                let path = root_path.key("users");
                match users {
                    Node::Array(entries) => user_list(entries, &path, found),
                    Node::Object(members) => user_map(members, &path, found),
                    other => Err(expected(&path, "an object or an array", other)),
                }
            }
        },
        other => Err(expected(&root_path, "an object or an array", other)),
    }
}

/// `{"<user id>": {"api_keys": {...}}, ...}`
pub(super) fn user_map(
    members: &[(String, Node)],
    path: &JsonPath,
    found: &mut Collector,
) -> Result<()> {
    for (i, (user_id, entry)) in members.iter().enumerate() {
        let path = path.with(Seg::User(user_id.clone(), i + 1));
        let Node::Object(fields) = entry else {
            return Err(expected(&path, "an object", entry));
        };
        for field in ["user_id", "username"] {
            if string_member(fields, field, &path)?.is_some_and(|named| named != user_id) {
                return Err(import_error(format!(
                    "ambiguous input: `{}`: the `{field}` member differs from the entry's name",
                    path.err()
                )));
            }
        }
        user_entry(user_id, fields, &path, found)?;
    }
    Ok(())
}

/// `[{"user_id": "<user id>", "api_keys": {...}}, ...]`, or `username` for `user_id`.
pub(super) fn user_list(entries: &[Node], path: &JsonPath, found: &mut Collector) -> Result<()> {
    for (i, entry) in entries.iter().enumerate() {
        let path = path.with(Seg::Index(i));
        let Node::Object(fields) = entry else {
            return Err(expected(&path, "an object", entry));
        };
        let user_id = match (
            string_member(fields, "user_id", &path)?,
            string_member(fields, "username", &path)?,
        ) {
            (Some(id), Some(name)) if id != name => {
                return Err(import_error(format!(
                    "ambiguous input: `{}`: `user_id` and `username` differ",
                    path.err()
                )))
            }
            (Some(id), _) | (None, Some(id)) => id,
            (None, None) => {
                return Err(import_error(format!(
                    "`{}`: expected a `user_id` or `username` string",
                    path.err()
                )))
            }
        };
        user_entry(user_id, fields, &path, found)?;
    }
    Ok(())
}

pub(super) fn user_entry(
    user_id: &str,
    fields: &[(String, Node)],
    path: &JsonPath,
    found: &mut Collector,
) -> Result<()> {
    if validate::user_id(user_id).is_err() {
        return Err(import_error(format!(
            "`{}`: a user id must be 1 to 255 bytes",
            path.err()
        )));
    }
    match member(fields, "api_keys", path)? {
        None | Some(Node::Null) => {
            found.skip(&Origin::Json(path.clone()), SkipReason::NoKeys);
            Ok(())
        }
        Some(Node::Object(keys)) => key_map(user_id, keys, &path.key("api_keys"), found),
        Some(other) => Err(expected(&path.key("api_keys"), "an object", other)),
    }
}

/// `{"openai": "...", "GEMINI_API_KEY": "...", ...}`
pub(super) fn key_map(
    user_id: &str,
    members: &[(String, Node)],
    path: &JsonPath,
    found: &mut Collector,
) -> Result<()> {
    for (i, (name, value)) in members.iter().enumerate() {
        let trimmed = name.trim();
        let base = strip_api_key_suffix(trimmed).unwrap_or(trimmed);
        let Ok(provider) = validate::provider(base) else {
            // Not quoted: a name that is no provider name may be anything, even a key.
            return Err(import_error(format!(
                "`{}`: the name of the {} member is not a valid provider name \
                 ([a-z0-9][a-z0-9_.-]{{0,63}}, optionally with `_api_key`)",
                path.err(),
                ordinal(i + 1)
            )));
        };
        let path = path.key(name);
        match value {
            Node::Null => found.skip(&Origin::Json(path), SkipReason::Empty),
            Node::Str(secret) => {
                found.add(user_id, provider.into_owned(), secret, Origin::Json(path))?
            }
            other => return Err(expected(&path, "a string", other)),
        }
    }
    Ok(())
}

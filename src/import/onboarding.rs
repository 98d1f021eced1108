//! Onboarding progress JSON files: the keys of every step's `data.api_keys`.

use super::collect::Collector;
use super::import_error;
use super::json::{expected, member, JsonPath, Node, Seg};
use super::users_json::key_map;
use crate::error::Result;

pub(super) fn parse_onboarding(root: &Node, user_id: &str, found: &mut Collector) -> Result<()> {
    let root_path = JsonPath::default();
    let Node::Object(members) = root else {
        return Err(expected(&root_path, "an object", root));
    };
    let path = root_path.key("steps");
    let steps = match member(members, "steps", &root_path)? {
        Some(Node::Array(steps)) => steps,
        Some(other) => return Err(expected(&path, "an array", other)),
        None => return Err(import_error("`$`: expected a `steps` array")),
    };
    for (i, step) in steps.iter().enumerate() {
        let path = path.with(Seg::Index(i));
        let Node::Object(step) = step else {
            return Err(expected(&path, "an object", step));
        };
        let data = match member(step, "data", &path)? {
            None | Some(Node::Null) => continue,
            Some(Node::Object(data)) => data,
            Some(other) => return Err(expected(&path.key("data"), "an object", other)),
        };
        let path = path.key("data");
        match member(data, "api_keys", &path)? {
            None | Some(Node::Null) => {}
            Some(Node::Object(keys)) => key_map(user_id, keys, &path.key("api_keys"), found)?,
            Some(other) => return Err(expected(&path.key("api_keys"), "an object", other)),
        }
    }
    Ok(())
}

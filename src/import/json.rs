//! The JSON reader the JSON formats share: members in file order, duplicates kept to
//! be refused, strings zeroized, and paths that can hide user ids.

use std::fmt::{self, Write as _};

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use zeroize::Zeroizing;

use super::import_error;
use crate::error::{Error, Result};

// --- JSON ---------------------------------------------------------------------------

/// A parsed JSON value that keeps members in file order, keeps duplicate members (to
/// refuse them), and holds strings zeroized.
pub(super) enum Node {
    Null,
    Bool,
    Number,
    Str(Zeroizing<String>),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

impl Node {
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::Bool => "a boolean",
            Self::Number => "a number",
            Self::Str(_) => "a string",
            Self::Array(_) => "an array",
            Self::Object(_) => "an object",
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Bool)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Number)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Number)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Number)
    }

    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(Zeroizing::new(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(Zeroizing::new(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut members = Vec::new();
        while let Some(member) = map.next_entry::<String, Node>()? {
            members.push(member);
        }
        Ok(Node::Object(members))
    }
}

pub(super) fn parse_json(bytes: &[u8]) -> Result<Node> {
    serde_json::from_slice(bytes).map_err(|e| {
        // Built from the position only: the parser's own message could quote input.
        let what = match e.classify() {
            serde_json::error::Category::Eof => "unexpected end of JSON",
            _ => "invalid JSON",
        };
        import_error(format!("line {}, column {}: {what}", e.line(), e.column()))
    })
}

/// A JSON path, rendered with or without the user ids it passes through.
#[derive(Clone, Default)]
pub(super) struct JsonPath(Vec<Seg>);

#[derive(Clone)]
pub(super) enum Seg {
    Key(String),
    /// A member named by a user id: the id, and the member's 1-based position.
    User(String, usize),
    Index(usize),
}

impl JsonPath {
    pub(super) fn with(&self, seg: Seg) -> Self {
        let mut path = self.clone();
        path.0.push(seg);
        path
    }

    pub(super) fn key(&self, key: &str) -> Self {
        self.with(Seg::Key(key.to_owned()))
    }

    pub(super) fn render(&self, reveal_users: bool) -> String {
        let mut out = String::from("$");
        for seg in &self.0 {
            match seg {
                Seg::Key(key) => push_key(&mut out, key),
                Seg::User(id, _) if reveal_users => push_key(&mut out, id),
                Seg::User(_, n) => {
                    let _ = write!(out, ".<{} user>", ordinal(*n));
                }
                Seg::Index(i) => {
                    let _ = write!(out, "[{i}]");
                }
            }
        }
        out
    }

    /// For errors.
    pub(super) fn err(&self) -> String {
        self.render(false)
    }
}

pub(super) fn push_key(out: &mut String, key: &str) {
    let mut bytes = key.bytes();
    let plain = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if plain {
        out.push('.');
        out.push_str(key);
    } else {
        let _ = write!(out, "[{}]", serde_json::Value::String(key.to_owned()));
    }
}

pub(super) fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

pub(super) fn expected(path: &JsonPath, what: &str, found: &Node) -> Error {
    import_error(format!(
        "`{}`: expected {what}, found {}",
        path.err(),
        found.kind()
    ))
}

/// The member `name` of an object, refusing it twice.
pub(super) fn member<'a>(
    members: &'a [(String, Node)],
    name: &str,
    path: &JsonPath,
) -> Result<Option<&'a Node>> {
    let mut matching = members.iter().filter(|(key, _)| key == name);
    let first = matching.next().map(|(_, node)| node);
    if matching.next().is_some() {
        return Err(import_error(format!(
            "ambiguous input: `{}` has the member `{name}` twice",
            path.err()
        )));
    }
    Ok(first)
}

/// A string member, if present.
pub(super) fn string_member<'a>(
    members: &'a [(String, Node)],
    name: &str,
    path: &JsonPath,
) -> Result<Option<&'a str>> {
    match member(members, name, path)? {
        None => Ok(None),
        Some(Node::Str(s)) => Ok(Some(s.as_str())),
        Some(other) => Err(expected(&path.key(name), "a string", other)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn paths_hide_user_ids_in_errors_only() {
        let path = JsonPath::default()
            .key("users")
            .with(Seg::User("alice@example.com".into(), 2))
            .key("api_keys")
            .key("azure.openai")
            .with(Seg::Index(3));
        assert_eq!(
            path.render(true),
            r#"$.users["alice@example.com"].api_keys["azure.openai"][3]"#
        );
        assert_eq!(
            path.err(),
            r#"$.users.<2nd user>.api_keys["azure.openai"][3]"#
        );
        assert_eq!(
            [1, 2, 3, 4, 11, 12, 13, 21, 22, 111].map(ordinal),
            ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "111th"]
        );
    }
}

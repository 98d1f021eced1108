//! The shape the crate docs promise a newcomer, checked so that it cannot drift: no
//! import cycle among the modules of `src/` (nor among the files of a module
//! directory), no source file much over 700 lines, and no SQL inside a macro.
//!
//! It reads the source as text: `crate::m` and `super::m` paths outside comments are
//! the edges; names re-exported at the crate root are traced to their module.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 700;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every source file with its path relative to `src/`, `/`-separated.
fn src_files() -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files
        .into_iter()
        .map(|f| {
            let rel = f
                .strip_prefix(src())
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            (f, rel)
        })
        .collect()
}

/// The code of a file without its comments (doc links are not imports) and without
/// its `#[cfg(test)]` tail.
fn code(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap();
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The identifiers that follow each occurrence of `prefix` (`crate::`, `super::`),
/// with the `{a, b}` groups of a `use` opened.
fn paths_after<'a>(code: &'a str, prefix: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let boundary = i == 0 || !rest.as_bytes()[i - 1].is_ascii_alphanumeric();
        rest = &rest[i + prefix.len()..];
        if !boundary {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            out.extend(group[..end].split(',').map(|p| ident(p.trim())));
        } else {
            out.push(ident(rest));
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Names re-exported at the crate root (`pub use crate::m::{A, B}`), to their module.
fn root_reexports() -> BTreeMap<String, String> {
    let lib = code(&src().join("lib.rs"));
    let mut map = BTreeMap::new();
    for stmt in lib.split(';') {
        let Some(i) = stmt.find("pub use crate::") else {
            continue;
        };
        let rest = &stmt[i + "pub use crate::".len()..];
        let module = ident(rest).to_owned();
        let tail = &rest[module.len()..];
        let names: Vec<&str> = match tail.find('{') {
            Some(j) => tail[j + 1..].trim_end_matches('}').split(',').collect(),
            None => vec![tail.rsplit("::").next().unwrap_or("")],
        };
        for name in names {
            let name = ident(name.trim());
            if !name.is_empty() {
                map.insert(name.to_owned(), module.clone());
            }
        }
    }
    map
}

/// The module a file belongs to, at the depth of `base` (a top-level module for
/// `src/`, a submodule for `src/<dir>/`).
fn module_of(base: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(base).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.trim_end_matches(".rs");
    (!matches!(name, "lib" | "mod" | "main" | "bin")).then(|| name.to_owned())
}

fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_modules_of_src_import_each_other_one_way() {
    let reexports = root_reexports();
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files.iter().filter(|f| !f.starts_with(src().join("bin"))) {
        let Some(from) = module_of(&src(), file) else {
            continue;
        };
        let code = code(file);
        for name in paths_after(&code, "crate::") {
            let to = reexports
                .get(name)
                .cloned()
                .unwrap_or_else(|| name.to_owned());
            let is_module = src().join(format!("{to}.rs")).exists() || src().join(&to).is_dir();
            if to != from && is_module {
                graph.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    assert!(graph.len() > 5, "the scan found the modules: {graph:?}");
    assert_eq!(
        find_cycle(&graph),
        None,
        "an import cycle among src/ modules"
    );
}

#[test]
fn the_files_of_a_module_directory_import_each_other_one_way() {
    let mut dirs = Vec::new();
    for entry in fs::read_dir(src()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() && path.file_name().is_some_and(|n| n != "bin") {
            dirs.push(path);
        }
    }
    assert!(!dirs.is_empty());
    for dir in dirs {
        let mut files = Vec::new();
        rust_files(&dir, &mut files);
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for file in &files {
            let Some(from) = module_of(&dir, file) else {
                continue;
            };
            for to in paths_after(&code(file), "super::") {
                let is_module = dir.join(format!("{to}.rs")).exists() || dir.join(to).is_dir();
                if to != from && is_module {
                    graph.entry(from.clone()).or_default().insert(to.to_owned());
                }
            }
        }
        assert_eq!(
            find_cycle(&graph),
            None,
            "an import cycle in {}",
            dir.display()
        );
    }
}

#[test]
fn no_source_file_is_over_the_line_limit() {
    let mut long = Vec::new();
    for (file, rel) in src_files() {
        let lines = fs::read_to_string(&file).unwrap().lines().count();
        if lines > MAX_LINES {
            long.push(format!("src/{rel}: {lines} lines"));
        }
    }
    assert!(long.is_empty(), "over {MAX_LINES} lines: {long:?}");
}

#[test]
fn no_sql_inside_a_macro() {
    for (file, _) in src_files() {
        let text = fs::read_to_string(&file).unwrap();
        for (i, _) in text.match_indices("macro_rules!") {
            let body = &text[i..];
            let end = body.find("\n}\n").unwrap_or(body.len());
            let body = body[..end].to_ascii_uppercase();
            for word in ["SELECT ", "INSERT ", "UPDATE ", "DELETE FROM"] {
                assert!(
                    !body.contains(word),
                    "{}: SQL inside a macro",
                    file.display()
                );
            }
        }
    }
}

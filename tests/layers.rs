//! The library's structure, read from its own `use` lines: the receiving and sending sides never
//! import each other, what both use sits below both, and no two files import each other. A
//! folder's `mod.rs` and the files in it may use each other (a room and its front door); every
//! other pair of files may depend one way only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each module of the library (as its path from the crate root, `recv::tree::answer`) and the
/// source file that holds it.
fn modules(src: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension() != Some("rs".as_ref()) {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap().with_extension("");
            let mut segments: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_str().unwrap().to_owned())
                .collect();
            if matches!(segments.last().map(String::as_str), Some("mod" | "lib")) {
                segments.pop();
            }
            out.insert(segments, path);
        }
    }
    out
}

/// The code of a file before its unit tests, without comments.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let body = text.split("#[cfg(test)]").next().unwrap();
    body.lines()
        .map(|l| l.split("//").next().unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The modules a module's code names: `crate::a::b`, `super::x`, `self::x`, or a child `x::`
/// at the start of a `use`; each resolved to the longest prefix that is a module.
fn imports(
    module: &[String],
    code: &str,
    all: &BTreeMap<Vec<String>, PathBuf>,
) -> BTreeSet<Vec<String>> {
    let this: Vec<String> = module.to_vec();
    let mut found = BTreeSet::new();
    let words: Vec<&str> = code
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.contains("::"))
        .collect();
    let children: BTreeSet<&str> = all
        .keys()
        .filter(|k| k.len() == this.len() + 1 && k.starts_with(&this))
        .map(|k| k.last().unwrap().as_str())
        .collect();
    let mut uses: Vec<String> = words.iter().map(|w| w.to_string()).collect();
    // `use super as partial;`
    if code.contains("use super as ") {
        uses.push("super::".into());
    }
    for word in uses {
        let mut parts = word.split("::").filter(|p| !p.is_empty());
        let Some(first) = parts.next() else { continue };
        let mut path: Vec<String> = match first {
            "crate" => Vec::new(),
            "super" => this[..this.len().saturating_sub(1)].to_vec(),
            "self" => this.clone(),
            child if children.contains(child) => {
                let mut p = this.clone();
                p.push(child.to_owned());
                p
            }
            _ => continue,
        };
        for part in parts {
            if part == "super" {
                path.pop();
                continue;
            }
            let mut longer = path.clone();
            longer.push(part.to_owned());
            if !all.contains_key(&longer) {
                break;
            }
            path = longer;
        }
        found.insert(path);
    }
    found
}

fn name(m: &[String]) -> String {
    match m.is_empty() {
        true => "lib".into(),
        false => m.join("::"),
    }
}

/// Every import between two files where neither is the other's ancestor.
fn edges() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("common/src");
    let all = modules(&src);
    let mut out = BTreeMap::new();
    for (module, path) in &all {
        let targets = imports(module, &code(path), &all)
            .into_iter()
            .filter(|t| !t.starts_with(module) && !module.starts_with(t))
            .collect();
        out.insert(module.clone(), targets);
    }
    out
}

#[test]
fn the_receiving_and_sending_sides_never_import_each_other() {
    let edges = edges();
    assert!(edges.contains_key(&vec!["recv".to_owned(), "chain".to_owned()]));
    let mut wrong = Vec::new();
    for (from, targets) in &edges {
        for to in targets {
            let (a, b) = (
                from.first().map(String::as_str),
                to.first().map(String::as_str),
            );
            // Below both sides: the wire, the client handshake, and everything they use.
            let low = |m: Option<&str>| !matches!(m, Some("recv" | "send"));
            let bad = matches!((a, b), (Some("recv"), Some("send")) | (Some("send"), Some("recv")))
                || (low(a) && !low(b))
                // The wire is below the typed errors and the client that use it.
                || (a == Some("wire") && matches!(b, Some("client" | "error")));
            if bad {
                wrong.push(format!("{} imports {}", name(from), name(to)));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_two_files_import_each_other() {
    let edges = edges();
    // Any cycle, found by walking from each module (the graph is small).
    let mut cycles = BTreeSet::new();
    for start in edges.keys() {
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((at, trail)) = stack.pop() {
            for next in edges.get(&at).into_iter().flatten() {
                if next == start {
                    let mut names: Vec<String> = trail.iter().map(|m| name(m)).collect();
                    names.push(name(start));
                    cycles.insert(names.join(" -> "));
                } else if seen.insert(next.clone()) {
                    let mut t = trail.clone();
                    t.push(next.clone());
                    stack.push((next.clone(), t));
                }
            }
        }
    }
    assert!(cycles.is_empty(), "files that import each other:\n{}", {
        let v: Vec<String> = cycles.into_iter().collect();
        v.join("\n")
    });
}

//! The crate's modules form layers: `schema` (the shared vocabulary and
//! readers), then `sections` (one file per policy section), then `engine`,
//! then `layers` and `explain`. A module may use its own layer and those
//! below, and no two modules may use each other, directly or in a cycle.
//!
//! Read from the source text: every `crate::...` and `super::...` path
//! outside `#[cfg(test)]` code is resolved to the longest module it names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The layer of a module: its first path segment's rank.
fn rank(module: &str) -> usize {
    let top = module.split("::").next().unwrap_or(module);
    match top {
        "schema" => 0,
        "sections" => 1,
        "engine" => 2,
        "layers" => 3,
        "explain" => 4,
        other => panic!("module {other} has no layer; add it to tests/layering.rs"),
    }
}

/// Every module of `src` (as `a::b`) with its source text, tests cut off.
fn modules(src: &Path) -> std::io::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let Ok(rel) = path.strip_prefix(src) else {
                continue;
            };
            let mut parts: Vec<String> = rel
                .with_extension("")
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            let name = parts.join("::");
            if name == "lib" {
                continue;
            }
            let text = std::fs::read_to_string(&path)?;
            let code = text.split("#[cfg(test)]").next().unwrap_or("").to_owned();
            out.insert(name, code);
        }
    }
    Ok(out)
}

/// The paths after `prefix` in `code`, with `{a::b, c}` groups expanded
/// one level (enough for this crate's imports).
fn paths_after(code: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (at, _) in code.match_indices(prefix) {
        if code[..at]
            .chars()
            .last()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
        {
            continue;
        }
        let rest = &code[at + prefix.len()..];
        let word = |s: &str| -> String {
            s.chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect()
        };
        if let Some(group) = rest.strip_prefix('{') {
            let body = group.split('}').next().unwrap_or("");
            out.extend(body.split(',').map(|p| word(p.trim())));
        } else {
            out.push(word(rest));
        }
    }
    out
}

/// The longest module among `known` that `path` names, if any.
fn resolve(path: &str, known: &BTreeMap<String, String>) -> Option<String> {
    let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find(|m| known.contains_key(m))
}

/// Which modules each module uses (itself excluded).
fn graph(known: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut g = BTreeMap::new();
    for (name, code) in known {
        let parent = name.rsplit_once("::").map_or("", |(p, _)| p);
        let mut deps = BTreeSet::new();
        for p in paths_after(code, "crate::") {
            deps.extend(resolve(&p, known));
        }
        for p in paths_after(code, "super::") {
            let full = if parent.is_empty() {
                p
            } else {
                format!("{parent}::{p}")
            };
            // `super::x` naming an item of the parent module uses the parent.
            deps.insert(resolve(&full, known).unwrap_or_else(|| parent.to_owned()));
        }
        deps.remove(name);
        deps.remove("");
        g.insert(name.clone(), deps);
    }
    g
}

#[test]
fn modules_use_only_their_layer_and_those_below() -> std::io::Result<()> {
    let known = modules(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))?;
    assert!(known.contains_key("schema::read") && known.contains_key("sections::ssh"));
    let mut wrong = Vec::new();
    for (module, deps) in graph(&known) {
        for dep in deps {
            if rank(&dep) > rank(&module) {
                wrong.push(format!("{module} uses {dep}, a higher layer"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    Ok(())
}

#[test]
fn no_modules_use_each_other() -> std::io::Result<()> {
    let known = modules(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))?;
    let g = graph(&known);
    // Depth-first search for a cycle, reporting the first one found.
    fn visit<'a>(
        m: &'a str,
        g: &'a BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<String> {
        if let Some(at) = stack.iter().position(|s| *s == m) {
            return Some(format!("{} -> {m}", stack[at..].join(" -> ")));
        }
        if !done.insert(m) {
            return None;
        }
        stack.push(m);
        for dep in g.get(m).into_iter().flatten() {
            if let Some(cycle) = visit(dep, g, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    for m in g.keys() {
        let cycle = visit(m, &g, &mut Vec::new(), &mut done);
        assert!(cycle.is_none(), "modules use each other: {cycle:?}");
    }
    Ok(())
}

//! The module graph of `host/src` points one way: each module uses only modules of its own layer or of the
//! layers below (see the layers in `lib.rs`), and no modules use each other in a circle. Test modules are
//! left out: a test may use whatever it needs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every top-level module and its layer: a lower number is a lower layer.
const LAYERS: &[(&str, u8)] = &[
    ("attributes", 0),
    ("cloud", 0),
    ("dn", 0),
    ("model", 0),
    ("naming", 0),
    ("ownership", 0),
    ("pim", 0),
    ("plan", 0),
    ("reasons", 0),
    ("config", 1),
    ("directory", 2),
    ("graph", 2),
    ("lease", 2),
    ("metrics", 2),
    ("plugins", 2),
    ("progress", 2),
    ("state", 2),
    ("status", 2),
    ("sync", 3),
    ("cli", 4),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's code without comments and without top-level `#[cfg(test)]` modules (rustfmt closes those
/// with a `}` in the first column).
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut in_tests = false;
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if in_tests {
            in_tests = line != "}";
            continue;
        }
        if line == "#[cfg(test)]" && lines.peek().is_some_and(|next| next.starts_with("mod ")) {
            let header = lines.next().unwrap_or_default();
            // `mod tests;` and a one-line `mod tests { … }` end on their own line.
            in_tests = !(header.ends_with(';') || header.ends_with('}'));
            continue;
        }
        if !line.trim_start().starts_with("//") {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The top-level modules a piece of code names as `crate::name` or inside `use crate::{…}`.
fn used(code: &str) -> BTreeSet<String> {
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    let mut names = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && !c.is_whitespace() => {
                        names.insert(ident(&group[i..]));
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            names.insert(ident(rest));
        }
    }
    names
}

/// Ways to reach another module without naming it as `crate::…`, which the checks would not see: `super::`
/// where it is the crate root, `super::super::`, and renaming the crate.
fn hidden_paths(relative: &Path, code: &str) -> Vec<String> {
    let depth = relative.components().count();
    let at_root = depth == 1 || (depth == 2 && relative.ends_with("mod.rs"));
    let mut found = Vec::new();
    if at_root && code.contains("super::") {
        found.push("super:: (the crate root here)".to_string());
    }
    for pattern in ["super::super", "crate as ", "extern crate self"] {
        if code.contains(pattern) {
            found.push(pattern.to_string());
        }
    }
    found
}

/// Which top-level modules each top-level module uses.
fn edges() -> BTreeMap<String, BTreeSet<String>> {
    let root = src();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(&root).unwrap();
        let first = relative.components().next().unwrap().as_os_str().to_string_lossy().to_string();
        let module = first.trim_end_matches(".rs").to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let code = code(&text);
        let hidden = hidden_paths(relative, &code);
        assert!(
            hidden.is_empty(),
            "{} reaches other modules by {hidden:?}; write crate::… instead",
            relative.display()
        );
        let uses = edges.entry(module.clone()).or_default();
        uses.extend(used(&code).into_iter().filter(|m| *m != module));
    }
    edges
}

fn layer(module: &str) -> u8 {
    LAYERS
        .iter()
        .find(|(name, _)| *name == module)
        .unwrap_or_else(|| panic!("module {module} has no layer: add it to LAYERS here and to lib.rs"))
        .1
}

#[test]
fn every_module_uses_only_its_own_layer_or_lower_ones() {
    let mut upward = Vec::new();
    for (module, uses) in edges() {
        for used in uses {
            if layer(&used) > layer(&module) {
                upward.push(format!("{module} → {used}"));
            }
        }
    }
    assert!(upward.is_empty(), "modules that use a higher layer: {upward:?}");
}

#[test]
fn no_modules_use_each_other_in_a_circle() {
    let edges = edges();
    // Kahn's algorithm: whatever cannot be ordered lies on a circle.
    let mut remaining = edges.clone();
    loop {
        let leaves: Vec<String> = remaining
            .iter()
            .filter(|(_, uses)| uses.iter().all(|u| !remaining.contains_key(u)))
            .map(|(m, _)| m.clone())
            .collect();
        if leaves.is_empty() {
            break;
        }
        for leaf in leaves {
            remaining.remove(&leaf);
        }
    }
    assert!(remaining.is_empty(), "modules on a circle of uses: {:?}", remaining.keys().collect::<Vec<_>>());
}

#[test]
fn the_checks_see_uses_and_skip_tests_and_comments() {
    let text = "use crate::{dn, plan::{Op, Plan}};\nfn f() { crate::model::x(); }\n// crate::sync\n\
                #[cfg(test)]\nmod tests {\n    use crate::cli;\n}\nfn g() { crate::state::y() }\n";
    let names: Vec<String> = used(&code(text)).into_iter().collect();
    assert_eq!(names, ["dn", "model", "plan", "state"]);
    let one_line = "#[cfg(test)]\nmod tests { }\nfn h() { crate::graph::z() }\n";
    assert_eq!(used(&code(one_line)).into_iter().collect::<Vec<_>>(), ["graph"]);
    assert!(!hidden_paths(Path::new("model.rs"), "use super::plan;").is_empty());
    assert!(!hidden_paths(Path::new("sync/mod.rs"), "use super::plan;").is_empty());
    assert!(hidden_paths(Path::new("sync/apply.rs"), "use super::TenantSync;").is_empty());
    assert!(!hidden_paths(Path::new("sync/apply.rs"), "use super::super::cli;").is_empty());
    let edges = edges();
    assert!(edges["sync"].contains("directory"), "{:?}", edges["sync"]);
    assert!(edges.keys().all(|m| LAYERS.iter().any(|(name, _)| name == m)));
}

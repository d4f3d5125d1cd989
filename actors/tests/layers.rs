//! The engine's layers only look down: no top-level module imports one
//! that imports it back (test modules included), the domain imports no
//! other module, and storage only the domain, the clock and metric names.
//! Read from the sources, so a new import that breaks the house fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module → the top-level modules its files name as `crate::x`
/// (a `crate::x!` macro call names no module).
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = vec![src.clone()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(
                std::fs::read_dir(&path)
                    .expect("a source directory")
                    .map(|e| e.expect("an entry").path()),
            );
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let relative = path.strip_prefix(&src).expect("under src");
        let first = relative.components().next().expect("a file").as_os_str();
        let module = first
            .to_str()
            .expect("UTF-8")
            .trim_end_matches(".rs")
            .to_owned();
        if module == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("a readable source");
        let deps = graph.entry(module.clone()).or_default();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            // `crate::name!` is a macro the crate exports, not a module.
            let macro_call = rest[name.len()..].starts_with('!');
            if !name.is_empty() && name != module && !macro_call {
                deps.insert(name);
            }
        }
    }
    graph
}

fn reaches(graph: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.to_owned()];
    while let Some(m) = stack.pop() {
        for next in graph.get(&m).into_iter().flatten() {
            if next == to {
                return true;
            }
            if seen.insert(next.clone()) {
                stack.push(next.clone());
            }
        }
    }
    false
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let graph = imports();
    assert!(graph.len() > 10, "read the modules: {graph:?}");
    for (module, deps) in &graph {
        for dep in deps {
            assert!(
                !reaches(&graph, dep, module),
                "{module} imports {dep}, which leads back to {module}"
            );
        }
    }
}

#[test]
fn records_sit_at_the_bottom() {
    let graph = imports();
    assert_eq!(graph["domain"], BTreeSet::new(), "domain imports nothing");
    let allowed: BTreeSet<String> = ["domain", "clock", "metrics"].map(String::from).into();
    assert!(
        graph["storage"].is_subset(&allowed),
        "storage imports {:?}",
        graph["storage"]
    );
}

//! The module stack points one way (docs/ARCHITECTURE.md): a module may use
//! modules of lower layers, and modules of its own layer as long as no
//! cycle forms. This test reads every `crate::<module>` reference outside
//! unit-test code and fails on an import against the order or a cycle, so
//! the stack cannot erode one convenient `use` at a time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Bottom to top. Every top-level module of `src/` must be listed.
const LAYERS: &[&[&str]] = &[
    &[
        "secret",
        "body",
        "encoding",
        "files",
        "host",
        "json",
        "credentials",
        "redact",
        "identity",
        "server",
        "metrics",
        "totp",
    ],
    &["config"],
    &[
        "connector",
        "store",
        "tls",
        "upstream",
        "audit",
        "policy",
        "vault",
    ],
    &["catalog", "tokens", "budget", "approvals"],
    &["state", "error", "reload"],
    &["proxy", "admin"],
    &["app", "cli", "fuzzing", "refresh"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// `module → modules it refers to`, read from `src/`.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&src).unwrap();
            let first = rel.components().next().unwrap().as_os_str();
            let module = Path::new(first)
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if module == "lib" || module == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            // Unit tests sit at the bottom of a file and may use anything.
            let code = text.split("#[cfg(test)]").next().unwrap();
            let used: &mut BTreeSet<String> = graph.entry(module.clone()).or_default();
            for (i, _) in code.match_indices("crate::") {
                let after = &code[i + "crate::".len()..];
                let name: String = after
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    used.insert(name);
                }
            }
        }
    }
    graph
}

#[test]
fn every_module_has_a_layer() {
    let graph = imports();
    let unplaced: Vec<&String> = graph.keys().filter(|m| layer_of(m).is_none()).collect();
    assert!(
        unplaced.is_empty(),
        "modules without a layer in tests/layers.rs: {unplaced:?}"
    );
}

#[test]
fn no_module_imports_a_higher_layer() {
    let mut against = Vec::new();
    for (module, used) in imports() {
        let Some(own) = layer_of(&module) else {
            continue;
        };
        for other in used {
            if layer_of(&other).is_some_and(|l| l > own) {
                against.push(format!("{module} → {other}"));
            }
        }
    }
    assert!(
        against.is_empty(),
        "imports against the layer order: {against:?}"
    );
}

#[test]
fn no_cycle_among_modules() {
    let graph = imports();
    // Depth-first search; a grey node met again closes a cycle.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(node) {
            Some(1) => {
                let start = path.iter().position(|n| n == node).unwrap();
                let mut cycle = path[start..].to_vec();
                cycle.push(node.to_owned());
                return Some(cycle);
            }
            Some(2) => return None,
            _ => {}
        }
        state.insert(node.to_owned(), 1);
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, state, path) {
                return Some(cycle);
            }
        }
        path.pop();
        state.insert(node.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for module in graph.keys() {
        if let Some(cycle) = visit(module, &graph, &mut state, &mut Vec::new()) {
            panic!("import cycle: {}", cycle.join(" → "));
        }
    }
}

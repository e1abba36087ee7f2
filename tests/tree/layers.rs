//! The tree shows the data path, and this test keeps it so: every `crate::` path in `src/`
//! (comments aside) must point at the same layer or one below, and no two modules may
//! import each other, directly or round a longer loop. Layers, bottom to top:
//! `model`, `modbus` → `image`, `ops`, `control` → `config` → `link` → `sources`,
//! `servers` → `app` → `tools`. A source never imports a server and vice versa: they
//! meet only in the image.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Rank of each top-level module; a module may use only ranks below its own (or itself).
fn rank(top: &str) -> Option<u8> {
    Some(match top {
        "model" | "modbus" => 0,
        "image" | "ops" | "control" => 1,
        "config" => 2,
        "link" => 3,
        "sources" | "servers" => 4,
        "app" => 5,
        "tools" => 6,
        _ => return None,
    })
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/servers/rtu_slave/mod.rs` → `servers::rtu_slave`; `src/image.rs` → `image`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file
        .strip_prefix(src)
        .expect("under src")
        .with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

/// The code of a file without line comments (doc links are not imports) and without its
/// `#[cfg(test)]` module tail (tests may reach anywhere).
fn code(text: &str) -> String {
    let body = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
    body.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::a::b…` path in `code`, expanded over one level of `{…}` groups.
fn crate_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let head = rest[..end].trim_end_matches(':').to_string();
        if rest[end..].starts_with('{') {
            let close = rest[end..].find('}').map_or(rest.len(), |c| end + c);
            for item in rest[end + 1..close].split(',') {
                let item = item.trim().split("::").next().unwrap_or("").trim();
                if !item.is_empty() && item != "self" {
                    out.push(format!("{head}::{item}"));
                }
            }
        }
        out.push(head);
    }
    out
}

#[test]
fn lower_layers_never_import_higher_ones_and_modules_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/gateway/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    assert!(modules.contains("image") && modules.contains("servers::rtu_slave"));

    let mut violations = Vec::new();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let from = module_of(&src, file);
        if from == "main" || from == "lib" {
            continue;
        }
        let top = from.split("::").next().unwrap_or("");
        let Some(from_rank) = rank(top) else {
            violations.push(format!(
                "{from}: not in any layer (add it to tests/layers.rs)"
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("read source");
        for path in crate_paths(&code(&text)) {
            // The module the path lands in: its longest prefix that is a file of ours.
            let parts: Vec<&str> = path.split("::").collect();
            let Some(target) = (1..=parts.len())
                .rev()
                .map(|n| parts[..n].join("::"))
                .find(|m| modules.contains(m))
            else {
                continue;
            };
            if target == from {
                continue;
            }
            let to_top = target.split("::").next().unwrap_or("");
            if to_top != top {
                match rank(to_top) {
                    Some(r) if r < from_rank => {}
                    _ => violations.push(format!("{from} imports {path} (layer {to_top})")),
                }
            }
            // A parent module's own file declares its children; that is no import.
            if !target.starts_with(&format!("{from}::")) {
                graph.entry(from.clone()).or_default().insert(target);
            }
        }
    }

    // Cycles: depth-first search over the module graph.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        cycles: &mut Vec<String>,
    ) {
        if let Some(i) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(node.to_string());
            cycles.push(cycle.join(" → "));
            return;
        }
        if !done.insert(node.to_string()) {
            return;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, stack, done, cycles);
        }
        stack.pop();
    }
    let mut cycles = Vec::new();
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit(node, &graph, &mut Vec::new(), &mut done, &mut cycles);
    }
    violations.extend(cycles.into_iter().map(|c| format!("import cycle: {c}")));
    assert!(
        violations.is_empty(),
        "layering broken:\n  {}",
        violations.join("\n  ")
    );
}

#[test]
fn the_path_scanner_sees_groups_and_ignores_comments() {
    let text = "use crate::image::{Image, Snapshot};\n// crate::tools::demo\nlet x = crate::ops::stats::X;\n";
    let paths = crate_paths(&code(text));
    assert!(paths.contains(&"image::Image".to_string()), "{paths:?}");
    assert!(paths.contains(&"ops::stats::X".to_string()), "{paths:?}");
    assert!(!paths.iter().any(|p| p.starts_with("tools")), "{paths:?}");
}

//! The layers inside `crates/gateway`, checked with a parser. Between the crates Cargo
//! enforces the order (modbus ← gateway ← sim ← bench ← the binary); inside the gateway
//! crate this test does. Bottom to top: `image`, `ops` → `control` (the one write path reads
//! old values from the image) → `config` → `link` → `sources`, `servers` → `app`. A module may name only its own top-level module or one of a
//! lower layer, so a source never imports a server and vice versa: they meet in the image
//! (the data path) and in `control` (the write path: servers → control → the device's
//! queue). No modules may import each other round a loop either.
//!
//! Every file of `crates/gateway/src` is read with `syn`, from `lib.rs` along its `mod`
//! declarations. What names a module of the crate: `crate::` paths, `use crate::{…}` trees
//! however grouped, `super::` chains (resolved to the module they land in) and such paths
//! inside macro calls. Comments and string literals are not code to a parser; `#[cfg(test)]`
//! items are skipped (tests may reach anywhere).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proc_macro2::{Ident, TokenStream, TokenTree};
use syn::visit::{self, Visit};
use syn::{Attribute, ImplItem, Item, ItemMod, UseTree};

/// Top-level modules and their layers; a module may name only layers below its own.
const LAYERS: [(&str, u8); 8] = [
    ("image", 1),
    ("ops", 1),
    ("control", 2),
    ("config", 3),
    ("link", 4),
    ("sources", 5),
    ("servers", 5),
    ("app", 6),
];

fn layer(top: &str) -> Option<u8> {
    LAYERS
        .iter()
        .find(|(name, _)| *name == top)
        .map(|&(_, n)| n)
}

/// A module's path in the crate, e.g. `["sources", "rtu_poll"]`; the root is `[]`.
type ModPath = Vec<String>;

/// One path in the code that names a module of the crate.
#[derive(Debug)]
struct Reference {
    /// The module whose code holds the path.
    from: ModPath,
    line: usize,
    /// The path resolved from the crate root (`super::` and `self::` applied).
    path: ModPath,
    /// The path as written.
    written: String,
}

/// An out-of-line `mod name;`, to be read from its own file.
#[derive(Debug)]
struct Child {
    /// The inline modules of its file it is declared in (they are directories too).
    inline: Vec<String>,
    name: String,
    /// `#[path = "…"]`, relative to the declaring file's directory.
    path_attr: Option<String>,
    /// Declared under `#[cfg(test)]`: its file is not read.
    test_only: bool,
}

/// What one file declares and names.
#[derive(Debug, Default)]
struct Scan {
    references: Vec<Reference>,
    children: Vec<Child>,
    /// The inline `mod name { … }` modules of the file (modules of the crate too).
    inline_modules: Vec<ModPath>,
}

/// `#[cfg(test)]` or `#[cfg(all(test, …))]`: code only the tests compile.
fn is_test_only(attrs: &[Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.meta.require_list().is_ok_and(|list| {
                let text = list.tokens.to_string();
                let words: Vec<&str> = text
                    .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .filter(|w| !w.is_empty())
                    .collect();
                words.first() == Some(&"test")
                    || (words.first() == Some(&"all") && words.contains(&"test"))
            })
    })
}

fn item_attrs(item: &Item) -> &[Attribute] {
    match item {
        Item::Const(i) => &i.attrs,
        Item::Enum(i) => &i.attrs,
        Item::ExternCrate(i) => &i.attrs,
        Item::Fn(i) => &i.attrs,
        Item::ForeignMod(i) => &i.attrs,
        Item::Impl(i) => &i.attrs,
        Item::Macro(i) => &i.attrs,
        Item::Mod(i) => &i.attrs,
        Item::Static(i) => &i.attrs,
        Item::Struct(i) => &i.attrs,
        Item::Trait(i) => &i.attrs,
        Item::TraitAlias(i) => &i.attrs,
        Item::Type(i) => &i.attrs,
        Item::Union(i) => &i.attrs,
        Item::Use(i) => &i.attrs,
        _ => &[],
    }
}

fn impl_item_attrs(item: &ImplItem) -> &[Attribute] {
    match item {
        ImplItem::Const(i) => &i.attrs,
        ImplItem::Fn(i) => &i.attrs,
        ImplItem::Type(i) => &i.attrs,
        ImplItem::Macro(i) => &i.attrs,
        _ => &[],
    }
}

/// `path` (as written in `module`) resolved from the crate root, if it starts at the crate
/// (`crate::`), at an ancestor (`super::`, any number) or at the module itself (`self::`).
/// `None` for other paths (extern crates, local names) and for a `super` above the root.
fn resolve(module: &[String], path: &[String]) -> Option<ModPath> {
    match path.first().map(String::as_str) {
        Some("crate") => Some(path[1..].to_vec()),
        Some("self") => Some(module.iter().chain(&path[1..]).cloned().collect()),
        Some("super") => {
            let ups = path.iter().take_while(|s| *s == "super").count();
            let base = module.len().checked_sub(ups)?;
            Some(module[..base].iter().chain(&path[ups..]).cloned().collect())
        }
        _ => None,
    }
}

/// Every path of a `use` tree, groups expanded: `a::{b, c::{d as e, *}}` →
/// `a::b`, `a::c::d`, `a::c`.
fn use_paths(tree: &UseTree, prefix: &mut Vec<String>, out: &mut Vec<(Vec<String>, usize)>) {
    match tree {
        UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            use_paths(&p.tree, prefix, out);
            prefix.pop();
        }
        UseTree::Name(n) if n.ident == "self" => out.push((prefix.clone(), line_of(&n.ident))),
        UseTree::Name(n) => out.push((with(prefix, &n.ident), line_of(&n.ident))),
        UseTree::Rename(r) => out.push((with(prefix, &r.ident), line_of(&r.ident))),
        UseTree::Glob(g) => out.push((prefix.clone(), g.star_token.spans[0].start().line)),
        UseTree::Group(g) => {
            for tree in &g.items {
                use_paths(tree, prefix, out);
            }
        }
    }
}

fn with(prefix: &[String], last: &Ident) -> Vec<String> {
    prefix.iter().cloned().chain([last.to_string()]).collect()
}

fn line_of(ident: &Ident) -> usize {
    ident.span().start().line
}

/// `crate::a::b` and `super::…` paths among the tokens of a macro call, at any depth.
fn macro_paths(tokens: TokenStream, out: &mut Vec<(Vec<String>, usize)>) {
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            TokenTree::Group(g) => {
                macro_paths(g.stream(), out);
                i += 1;
            }
            TokenTree::Ident(id) if id == "crate" || id == "super" => {
                let line = line_of(id);
                let mut path = vec![id.to_string()];
                let mut j = i + 1;
                // `::` is two ':' puncts, then an identifier.
                while let (
                    Some(TokenTree::Punct(a)),
                    Some(TokenTree::Punct(b)),
                    Some(TokenTree::Ident(next)),
                ) = (tokens.get(j), tokens.get(j + 1), tokens.get(j + 2))
                {
                    if a.as_char() != ':' || b.as_char() != ':' {
                        break;
                    }
                    path.push(next.to_string());
                    j += 3;
                }
                out.push((path, line));
                i = j;
            }
            _ => i += 1,
        }
    }
}

/// Walks one file's syntax tree.
struct Collector {
    /// The module being read: the file's, then any inline module inside it.
    module: ModPath,
    /// How many of `module`'s trailing segments are inline modules of this file.
    inline_depth: usize,
    scan: Scan,
}

impl Collector {
    fn note(&mut self, written: Vec<String>, line: usize) {
        if let Some(path) = resolve(&self.module, &written) {
            self.scan.references.push(Reference {
                from: self.module.clone(),
                line,
                path,
                written: written.join("::"),
            });
        }
    }
}

impl<'ast> Visit<'ast> for Collector {
    fn visit_item(&mut self, item: &'ast Item) {
        if is_test_only(item_attrs(item)) {
            if let Item::Mod(m) = item {
                if m.content.is_none() {
                    self.scan
                        .children
                        .push(child(m, &self.module, self.inline_depth, true));
                }
            }
            return;
        }
        visit::visit_item(self, item);
    }

    fn visit_impl_item(&mut self, item: &'ast ImplItem) {
        if !is_test_only(impl_item_attrs(item)) {
            visit::visit_impl_item(self, item);
        }
    }

    fn visit_item_mod(&mut self, m: &'ast ItemMod) {
        let Some((_, items)) = &m.content else {
            self.scan
                .children
                .push(child(m, &self.module, self.inline_depth, false));
            return;
        };
        self.module.push(m.ident.to_string());
        self.inline_depth += 1;
        self.scan.inline_modules.push(self.module.clone());
        for item in items {
            self.visit_item(item);
        }
        self.inline_depth -= 1;
        self.module.pop();
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        let mut found = Vec::new();
        use_paths(&u.tree, &mut Vec::new(), &mut found);
        for (path, line) in found {
            self.note(path, line);
        }
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        if p.leading_colon.is_none() {
            if let Some(first) = p.segments.first() {
                let written = p.segments.iter().map(|s| s.ident.to_string()).collect();
                self.note(written, line_of(&first.ident));
            }
        }
        visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        let mut found = Vec::new();
        macro_paths(m.tokens.clone(), &mut found);
        for (path, line) in found {
            self.note(path, line);
        }
        visit::visit_macro(self, m);
    }

    /// `pub(in crate::x)` limits who sees an item; it imports nothing.
    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}
}

fn child(m: &ItemMod, module: &[String], inline_depth: usize, test_only: bool) -> Child {
    let path_attr = m
        .attrs
        .iter()
        .find(|a| a.path().is_ident("path"))
        .and_then(|a| match &a.meta.require_name_value().ok()?.value {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) => Some(s.value()),
            _ => None,
        });
    Child {
        inline: module[module.len() - inline_depth..].to_vec(),
        name: m.ident.to_string(),
        path_attr,
        test_only,
    }
}

/// Parse one file of module `module`.
fn scan(module: &[String], text: &str) -> Result<Scan, String> {
    let file = syn::parse_file(text).map_err(|e| {
        let at = e.span().start();
        format!("{}:{}: {e}", at.line, at.column)
    })?;
    let mut c = Collector {
        module: module.to_vec(),
        inline_depth: 0,
        scan: Scan::default(),
    };
    c.visit_file(&file);
    Ok(c.scan)
}

/// The crate read from its `lib.rs` along its `mod` declarations: every reference with the
/// file it is in, every module, and the files read or skipped (test-only).
struct Crate {
    references: Vec<(PathBuf, Reference)>,
    modules: BTreeSet<ModPath>,
    read: BTreeSet<PathBuf>,
    test_only: Vec<PathBuf>,
}

fn read_crate(src: &Path) -> Result<Crate, String> {
    let mut krate = Crate {
        references: Vec::new(),
        modules: BTreeSet::new(),
        read: BTreeSet::new(),
        test_only: Vec::new(),
    };
    // (module, its file, the directory its out-of-line children live in)
    let mut queue = vec![(ModPath::new(), src.join("lib.rs"), src.to_path_buf())];
    while let Some((module, file, dir)) = queue.pop() {
        let text =
            std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let scan = scan(&module, &text).map_err(|e| format!("{}:{e}", file.display()))?;
        krate.read.insert(file.clone());
        krate.modules.insert(module.clone());
        krate.modules.extend(scan.inline_modules);
        krate
            .references
            .extend(scan.references.into_iter().map(|r| (file.clone(), r)));
        for c in scan.children {
            let base = c.inline.iter().fold(dir.clone(), |d, m| d.join(m));
            let (child_file, child_dir) = match &c.path_attr {
                Some(p) => {
                    let f = file.parent().unwrap_or(src).join(p);
                    let d = f.parent().unwrap_or(src).to_path_buf();
                    (f, d)
                }
                None if base.join(format!("{}.rs", c.name)).is_file() => {
                    (base.join(format!("{}.rs", c.name)), base.join(&c.name))
                }
                None => (base.join(&c.name).join("mod.rs"), base.join(&c.name)),
            };
            if c.test_only {
                krate.test_only.push(child_file);
                krate.test_only.push(child_dir);
                continue;
            }
            let mut child_module = module.clone();
            child_module.extend(c.inline.iter().cloned());
            child_module.push(c.name);
            queue.push((child_module, child_file, child_dir));
        }
    }
    Ok(krate)
}

/// The module `path` lands in: its longest prefix that is a module of the crate, else its
/// first segment (an item of the root, or, in the checker's own tests, an unknown module).
fn landing(modules: &BTreeSet<ModPath>, path: &[String]) -> ModPath {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|m| modules.contains(m))
        .unwrap_or_else(|| path.iter().take(1).cloned().collect())
}

/// Every broken rule: a reference up or across the layers, a module of no layer, a loop.
fn violations(references: &[(PathBuf, Reference)], modules: &BTreeSet<ModPath>) -> Vec<String> {
    let mut out = Vec::new();
    let mut graph: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    for (file, r) in references {
        let (Some(from_top), target) = (r.from.first(), landing(modules, &r.path)) else {
            continue; // the crate root names its modules: no layer of its own
        };
        let Some(to_top) = target.first() else {
            continue;
        };
        let at = format!("{}:{}", file.display(), r.line);
        if from_top != to_top {
            match (layer(from_top), layer(to_top)) {
                (Some(f), Some(t)) if t < f => {}
                (None, _) => out.push(format!("{at}: module {from_top} is in no layer (add it to LAYERS in tests/tree/layers.rs)")),
                (Some(_), None) => out.push(format!("{at}: {} names {} (module {to_top} is in no layer)", r.from.join("::"), r.written)),
                (Some(f), Some(t)) => out.push(format!(
                    "{at}: {} (layer {f}) names {} in {to_top} (layer {t}){}",
                    r.from.join("::"),
                    r.written,
                    if f == t { ": one layer, two modules that must not meet" } else { ": a higher layer" },
                )),
            }
        }
        // A parent's file declares its children; naming them is no import.
        if target != r.from && !target.starts_with(&r.from) {
            graph.entry(r.from.clone()).or_default().insert(target);
        }
    }
    out.extend(
        cycles(&graph)
            .into_iter()
            .map(|c| format!("import cycle: {c}")),
    );
    out
}

/// Every loop of the module graph, found depth-first.
fn cycles(graph: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<String> {
    fn visit(
        node: &ModPath,
        graph: &BTreeMap<ModPath, BTreeSet<ModPath>>,
        stack: &mut Vec<ModPath>,
        done: &mut BTreeSet<ModPath>,
        found: &mut Vec<String>,
    ) {
        if let Some(i) = stack.iter().position(|n| n == node) {
            let mut cycle: Vec<String> = stack[i..].iter().map(|m| m.join("::")).collect();
            cycle.push(node.join("::"));
            found.push(cycle.join(" → "));
            return;
        }
        if !done.insert(node.clone()) {
            return;
        }
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, stack, done, found);
        }
        stack.pop();
    }
    let mut found = Vec::new();
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit(node, graph, &mut Vec::new(), &mut done, &mut found);
    }
    found
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

#[test]
fn lower_layers_never_import_higher_ones_and_modules_form_no_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("crates/gateway/src");
    let krate = read_crate(&src).unwrap_or_else(|e| panic!("{e}"));
    for (top, _) in LAYERS {
        assert!(
            krate.modules.contains(&vec![top.to_string()]),
            "no module {top}"
        );
    }
    // Every file was read, or belongs to a #[cfg(test)] module: none escapes the check.
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let unread: Vec<_> = files
        .iter()
        .filter(|f| !krate.read.contains(*f) && !krate.test_only.iter().any(|t| f.starts_with(t)))
        .collect();
    assert!(unread.is_empty(), "files no `mod` declares: {unread:?}");

    let references: Vec<_> = krate
        .references
        .into_iter()
        .map(|(f, r)| (f.strip_prefix(root).map(Path::to_path_buf).unwrap_or(f), r))
        .collect();
    let broken = violations(&references, &krate.modules);
    assert!(
        broken.is_empty(),
        "layering broken:\n  {}",
        broken.join("\n  ")
    );
}

/// The checker on code of our own: what it must find, and what it must let pass.
fn check_text(module: &str, code: &str) -> Vec<String> {
    let module: ModPath = module.split("::").map(String::from).collect();
    let scan = scan(&module, code).expect("parses");
    let modules: BTreeSet<ModPath> = LAYERS.iter().map(|(t, _)| vec![t.to_string()]).collect();
    let references: Vec<_> = scan
        .references
        .into_iter()
        .map(|r| (PathBuf::from("planted.rs"), r))
        .collect();
    violations(&references, &modules)
}

#[test]
fn the_check_bites_on_planted_violations() {
    let many_lines = "fn filler() {}\n".repeat(300);
    let planted = [
        (
            "sources::push",
            "use crate::{image::Image, app::gateway::Gateway};".to_string(),
            "app",
        ),
        (
            "sources::rtu_poll",
            format!("#[cfg(test)]\nmod tests;\n{many_lines}use crate::servers::mqtt;"),
            "servers",
        ),
        (
            "servers::meter_tcp::front",
            "fn f() { super::super::super::sources::push::run(); }".into(),
            "sources",
        ),
        (
            "link::tcp_front",
            "const U: &str = \"tcp://host:502\"; fn f() { crate::app::run(); }".into(),
            "app",
        ),
        (
            "image",
            "fn f() { tracing::info!(\"{}\", crate::config::NAME); }".into(),
            "config",
        ),
        (
            "ops",
            "use crate::{control::{self, writes::*}};".into(),
            "control",
        ),
        (
            "config::validate",
            "fn f(x: crate::link::Port) {}".into(),
            "link",
        ),
    ];
    for (module, code, target) in planted {
        let found = check_text(module, &code);
        assert!(
            !found.is_empty() && found.iter().all(|v| v.contains(&format!(" in {target} "))),
            "{module}: violations naming {target} expected, got {found:?}\n{code}"
        );
    }
    // The line is the path's own.
    let found = check_text("link::x", "\n\nuse crate::sources::y;");
    assert!(found[0].starts_with("planted.rs:3:"), "{found:?}");
}

#[test]
fn the_check_lets_lower_layers_tests_and_other_crates_pass() {
    let fine = [
        ("servers::rtu_slave", "use crate::{image::Image, control::writes, config::Config, link::serial};"),
        ("app::gateway", "use crate::sources::push; use crate::servers::mqtt; fn f() { super::status::x(); }"),
        ("sources::push", "#[cfg(test)]\nmod tests { use crate::app::gateway::Gateway; }"),
        ("sources::push", "impl X { #[cfg(test)] fn t() { crate::servers::mqtt::f(); } }"),
        ("sources::push", "use airbridge_modbus::crc; use tokio::net; // crate::servers::mqtt\nconst S: &str = \"crate::servers::x\";"),
        ("link::x", "pub(in crate::link) fn f() { self::g(); super::y::h(); }"),
    ];
    for (module, code) in fine {
        let found = check_text(module, code);
        assert!(found.is_empty(), "{module}: {found:?}\n{code}");
    }
}

#[test]
fn a_loop_between_modules_is_found() {
    let modules: BTreeSet<ModPath> = [
        vec!["ops".into()],
        vec!["ops".into(), "a".into()],
        vec!["ops".into(), "b".into()],
    ]
    .into_iter()
    .collect();
    let mut references = Vec::new();
    for (from, code) in [
        ("ops::a", "use super::b::X;"),
        ("ops::b", "fn f() { crate::ops::a::g(); }"),
    ] {
        let module: ModPath = from.split("::").map(String::from).collect();
        let scan = scan(&module, code).expect("parses");
        references.extend(
            scan.references
                .into_iter()
                .map(|r| (PathBuf::from(from), r)),
        );
    }
    let found = violations(&references, &modules);
    assert_eq!(
        found,
        ["import cycle: ops::a → ops::b → ops::a"],
        "{found:?}"
    );
}

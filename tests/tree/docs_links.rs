//! Every link in README.md and docs/*.md resolves: `](#anchor)` to a heading of the same
//! file, `](path)` to a file of the repository, `](path#anchor)` to a heading of that file.
//! Anchors are computed as GitHub does (lower case, punctuation dropped, spaces → `-`,
//! repeats numbered). Links inside fenced code blocks and to other sites are not checked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The lines outside fenced code blocks.
fn prose(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate() {
        if l.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push((i + 1, l));
        }
    }
    out
}

/// GitHub's anchor for a heading's text.
fn anchor(heading: &str) -> String {
    // Links keep their text: `[text](url)` → `text`.
    let mut text = String::new();
    let mut rest = heading;
    while let Some(open) = rest.find('[') {
        match rest[open..]
            .find("](")
            .and_then(|m| rest[open + m..].find(')').map(|c| (open + m, open + m + c)))
        {
            Some((mid, close)) => {
                text.push_str(&rest[..open]);
                text.push_str(&rest[open + 1..mid]);
                rest = &rest[close + 1..];
            }
            None => break,
        }
    }
    text.push_str(rest);
    text.trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every anchor of a markdown file.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for (_, l) in prose(text) {
        let Some(h) = l.strip_prefix('#') else {
            continue;
        };
        let h = h.trim_start_matches('#');
        if !h.starts_with(' ') {
            continue;
        }
        let a = anchor(h);
        let n = seen.entry(a.clone()).or_insert(0);
        out.insert(if *n == 0 {
            a.clone()
        } else {
            format!("{a}-{n}")
        });
        *n += 1;
    }
    out
}

/// `(line, target)` of every inline link `](target)`.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, l) in prose(text) {
        // Inline code is not a link.
        let l: String = l.split('`').step_by(2).collect::<Vec<_>>().join("");
        let mut rest = l.as_str();
        while let Some(p) = rest.find("](") {
            let after = &rest[p + 2..];
            let Some(end) = after.find(')') else { break };
            let target = after[..end].split_whitespace().next().unwrap_or("");
            out.push((n, target.to_string()));
            rest = &after[end..];
        }
    }
    out
}

fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

#[test]
fn anchors_are_computed_as_github_does() {
    assert_eq!(anchor("Hot reload (SIGHUP)"), "hot-reload-sighup");
    assert_eq!(
        anchor("Kernel RS485 mode (`rtu.rs485`)"),
        "kernel-rs485-mode-rturs485"
    );
    assert_eq!(anchor("Configure, enable, watch"), "configure-enable-watch");
    assert_eq!(
        anchor("Status says \"serving from fallback poll\""),
        "status-says-serving-from-fallback-poll"
    );
    assert_eq!(anchor("See [Bench](#bench) now"), "see-bench-now");
    let a = anchors("# A\n## Set up\n```\n# not a heading\n```\n### Set up\n");
    assert_eq!(
        a,
        ["a", "set-up", "set-up-1"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
}

#[test]
fn every_link_in_readme_and_docs_resolves() {
    let files = markdown_files();
    assert!(
        files.len() >= 3,
        "README.md, docs/performance.md, docs/reliability.md"
    );
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read");
        let here = anchors(&text);
        let dir = file.parent().unwrap_or(Path::new("."));
        for (line, target) in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, frag) = match target.split_once('#') {
                Some((p, f)) => (p, Some(f)),
                None => (target.as_str(), None),
            };
            let where_ = format!("{}:{line}: ]({target})", file.display());
            let target_anchors = if path.is_empty() {
                here.clone()
            } else {
                let p = dir.join(path);
                if !p.exists() {
                    broken.push(format!("{where_}: no file {}", p.display()));
                    continue;
                }
                match (frag, std::fs::read_to_string(&p)) {
                    (Some(_), Ok(t)) => anchors(&t),
                    _ => BTreeSet::new(),
                }
            };
            if let Some(f) = frag {
                if !target_anchors.contains(f) {
                    broken.push(format!("{where_}: no heading with anchor #{f}"));
                }
            }
        }
    }
    assert!(
        checked > 20,
        "only {checked} links found: is the parser blind?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

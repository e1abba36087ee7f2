//! Outside tools a test needs (systemd-analyze, promtool, chromium, mosquitto, a python venv,
//! dpkg-deb, …). Such a test is `#[ignore = "needs TOOL: how to install it"]`, so a plain
//! `cargo test` lists it as ignored instead of passing it unseen; run with `--include-ignored`
//! (as `.ci/run` does, after installing the tools) it fails when its tool is missing.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Fail the test: `tool` is not installed. `install` says how to get it (e.g.
/// `apt-get install prometheus`).
pub fn missing(tool: &str, install: &str) -> ! {
    panic!(
        "{tool} is not installed ({install}); this test is #[ignore]d for that reason and \
         runs only with --ignored or --include-ignored, which need it (.ci/run installs it)"
    );
}

/// True when `program` can be started (with `--help`, output discarded).
pub fn on_path(program: &str) -> bool {
    Command::new(program)
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Headless Chromium (`chromium` or `chromium-browser`); fails the test if neither runs.
pub fn chromium() -> PathBuf {
    ["chromium", "chromium-browser"]
        .iter()
        .find_map(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|_| PathBuf::from(c))
        })
        .unwrap_or_else(|| missing("chromium", "apt-get install chromium"))
}

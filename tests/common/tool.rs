//! Outside tools a test needs (systemd-analyze, promtool, chromium, mosquitto, …): in CI a
//! missing tool fails the test, since `.ci/run` installs it; elsewhere the test may skip
//! with the reason printed.

/// Call when `tool` is not installed: panics under `CI=true`, else prints why the test is
/// skipped. `install` says how to get it (e.g. `apt-get install prometheus`).
pub fn missing(tool: &str, install: &str) {
    let msg = format!("{tool} is not installed ({install})");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}: CI must install it (see .ci/run)");
    }
    println!("SKIPPED: {msg}");
}

//! Hot reload: a new config for a running gateway, applied whole or not at all.
//!
//! Owns the config in force ([`Live`]) and the rule of what may change while running:
//! freshness (`max_age`, `on_stale`), poll intervals (`every`, `fallback_poll`),
//! `poll.timeout`, the push allow list, connection limit and idle timeout, and `log.level`.
//! Anything else (serial settings, listen and upstream addresses, region layout, profile,
//! sections added later) needs a restart: such a file is reported and nothing of it is
//! applied. It touches the image's freshness rules, the push server's live settings, the
//! poller's config channel and the log level; never a connection or the serial port.

use std::path::Path;
use std::sync::Arc;

use crate::app::handles::Handles;
use crate::config::{self, Config, PushConfig};
use crate::ops::logging::{self, LevelChange};

/// What a reload did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The new config is in force; one line per changed setting.
    Applied {
        changes: Vec<String>,
        log: Option<LevelChange>,
    },
    /// The file says what is running.
    Unchanged,
    /// The file changes settings that only a restart applies; nothing was applied. Each
    /// entry names the setting; `also` lists live changes that were held back with them.
    NeedsRestart {
        settings: Vec<String>,
        also: Vec<String>,
    },
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Applied { changes, log } => {
                write!(f, "reload applied: {}", changes.join("; "))?;
                if log == &Some(LevelChange::OverriddenByEnv) {
                    f.write_str(" (log.level: RUST_LOG is set and wins)")?;
                }
                Ok(())
            }
            Outcome::Unchanged => f.write_str("reload: nothing changed"),
            Outcome::NeedsRestart { settings, also } => {
                write!(
                    f,
                    "reload not applied: needs restart: {}; the running config stays (systemctl restart airbridge)",
                    settings.join("; ")
                )?;
                if !also.is_empty() {
                    write!(f, "; held back with it: {}", also.join("; "))?;
                }
                Ok(())
            }
        }
    }
}

/// The differences between two configs: what can change live and what needs a restart.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Diff {
    /// Changes a running gateway can take, one line each (`key old → new`).
    pub live: Vec<String>,
    /// Changes that need a restart, one line each.
    pub restart: Vec<String>,
}

fn dur(d: std::time::Duration) -> String {
    if d == std::time::Duration::MAX {
        "never".into()
    } else {
        humantime::format_duration(d).to_string()
    }
}

fn opt_dur(d: Option<std::time::Duration>) -> String {
    d.map_or_else(|| "-".into(), dur)
}

fn nets(p: &PushConfig) -> String {
    let v: Vec<String> = p.allow_from.iter().map(ToString::to_string).collect();
    format!("[{}]", v.join(", "))
}

/// `old` with the live settings of `new`. Equal to `new` exactly when nothing else differs.
fn with_live_from(old: &Config, new: &Config) -> Config {
    let mut out = old.clone();
    if out.regions.len() == new.regions.len() {
        for (o, n) in out.regions.iter_mut().zip(&new.regions) {
            o.max_age = n.max_age;
            o.on_stale = n.on_stale;
            // The KSEM poller follows reloads; the RTU poller (KSTAR) does not yet, so a
            // changed `every` of an rtu_poll region stays a "needs restart" difference.
            if o.every.is_some() && n.every.is_some() && !o.source.rtu_poll {
                o.every = n.every;
            }
            if o.fallback_poll.is_some() && n.fallback_poll.is_some() {
                o.fallback_poll = n.fallback_poll;
            }
        }
    }
    if let (Some(o), Some(n)) = (&mut out.push, &new.push) {
        o.allow_from = n.allow_from.clone();
        o.max_connections = n.max_connections;
        o.idle_timeout = n.idle_timeout;
    }
    if let (Some(o), Some(n)) = (&mut out.poll, &new.poll) {
        o.timeout = n.timeout;
    }
    out.log = new.log.clone();
    out
}

/// Compare a running config with a new one.
pub fn diff(old: &Config, new: &Config) -> Diff {
    let mut d = Diff::default();
    let mut restart = |key: &str, a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| {
        d.restart.push(format!("{key} {a:?} → {b:?}"));
    };
    // Needs restart: the serial side, addresses, the layout, the profile.
    let (r, s) = (&old.rtu, &new.rtu);
    macro_rules! rtu {
        ($($f:ident),*) => {$(
            if r.$f != s.$f {
                restart(concat!("rtu.", stringify!($f)), &r.$f, &s.$f);
            }
        )*};
    }
    rtu!(
        device,
        baud,
        data_bits,
        parity,
        stop_bits,
        unit_id,
        turnaround,
        frame_timeout,
        input_registers,
        rs485
    );
    match (&old.push, &new.push) {
        (Some(a), Some(b)) if a.listen != b.listen => restart("push.listen", &a.listen, &b.listen),
        (Some(_), None) | (None, Some(_)) => restart(
            "push",
            &old.push.as_ref().map(|p| p.listen),
            &new.push.as_ref().map(|p| p.listen),
        ),
        _ => {}
    }
    match (&old.poll, &new.poll) {
        (Some(a), Some(b)) => {
            if a.host != b.host {
                restart("poll.host", &a.host, &b.host);
            }
            if a.unit_id != b.unit_id {
                restart("poll.unit_id", &a.unit_id, &b.unit_id);
            }
        }
        (None, None) => {}
        _ => restart(
            "poll",
            &old.poll.as_ref().map(|p| &p.host),
            &new.poll.as_ref().map(|p| &p.host),
        ),
    }
    let layout = |c: &Config| -> Vec<String> {
        c.regions
            .iter()
            .map(|g| {
                format!(
                    "{} {}+{} {}{}{}{}",
                    g.name,
                    g.start,
                    g.count,
                    g.source,
                    if g.every.is_some() { " every" } else { "" },
                    if g.fallback_poll.is_some() {
                        " fallback_poll"
                    } else {
                        ""
                    },
                    if g.values.is_empty() {
                        String::new()
                    } else {
                        format!(" values {:?}", g.values)
                    }
                )
            })
            .collect()
    };
    let (la, lb) = (layout(old), layout(new));
    if la != lb {
        let gone: Vec<&String> = la.iter().filter(|x| !lb.contains(x)).collect();
        let added: Vec<&String> = lb.iter().filter(|x| !la.contains(x)).collect();
        d.restart.push(format!(
            "regions (layout, sources, static values): {gone:?} → {added:?}"
        ));
    }
    if old.profile.as_ref().map(|p| &p.path) != new.profile.as_ref().map(|p| &p.path) {
        d.restart.push(format!(
            "profile {:?} → {:?}",
            old.profile.as_ref().map(|p| &p.path),
            new.profile.as_ref().map(|p| &p.path)
        ));
    }
    // The RTU poller (KSTAR) reads its intervals once, at start.
    if la == lb {
        for (a, b) in old.regions.iter().zip(&new.regions) {
            if a.source.rtu_poll && a.every != b.every {
                d.restart.push(format!(
                    "regions.{}.every {} → {} (rtu_poll)",
                    a.name,
                    opt_dur(a.every),
                    opt_dur(b.every)
                ));
            }
        }
    }
    // Anything else that differs: named by its section.
    let mut live = with_live_from(old, new);
    // Where things are written is not a setting: moving a line is no reason to restart.
    live.region_lines = new.region_lines.clone();
    if let (Some(a), Some(b)) = (&mut live.profile, &new.profile) {
        if a.path == b.path {
            a.line = b.line;
        }
    }
    for (a, b) in live.devices.iter_mut().zip(&new.devices) {
        if let (Some(a), Some(b)) = (&mut a.profile, &b.profile) {
            if a.path == b.path {
                a.line = b.line;
            }
        }
    }
    if d.restart.is_empty() && live != *new {
        let mut keys = Vec::new();
        macro_rules! section {
            ($($f:ident),*) => {$(
                if live.$f != new.$f {
                    keys.push(stringify!($f));
                }
            )*};
        }
        section!(
            rtu, push, poll, regions, profile, rtu_slave, rtu_poll, tcp_server, writable, log,
            status, mqtt, devices
        );
        let keys = if keys.is_empty() {
            "a setting".to_string()
        } else {
            keys.iter()
                .map(|k| format!("`{k}:`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        d.restart.push(format!(
            "{keys} changed, and only a restart applies it (see `airbridge check`)"
        ));
    }

    // Live.
    if la == lb {
        for (a, b) in old.regions.iter().zip(&new.regions) {
            let mut line = |what: &str, x: String, y: String| {
                if x != y {
                    d.live.push(format!("regions.{}.{what} {x} → {y}", a.name));
                }
            };
            line("max_age", dur(a.max_age), dur(b.max_age));
            line(
                "on_stale",
                a.on_stale.as_str().into(),
                b.on_stale.as_str().into(),
            );
            if !a.source.rtu_poll {
                line("every", opt_dur(a.every), opt_dur(b.every));
            }
            line(
                "fallback_poll",
                opt_dur(a.fallback_poll),
                opt_dur(b.fallback_poll),
            );
        }
    }
    if let (Some(a), Some(b)) = (&old.push, &new.push) {
        if a.allow_from != b.allow_from {
            d.live
                .push(format!("push.allow_from {} → {}", nets(a), nets(b)));
        }
        if a.max_connections != b.max_connections {
            d.live.push(format!(
                "push.max_connections {} → {}",
                a.max_connections, b.max_connections
            ));
        }
        if a.idle_timeout != b.idle_timeout {
            d.live.push(format!(
                "push.idle_timeout {} → {}",
                dur(a.idle_timeout),
                dur(b.idle_timeout)
            ));
        }
    }
    if let (Some(a), Some(b)) = (&old.poll, &new.poll) {
        if a.timeout != b.timeout {
            d.live.push(format!(
                "poll.timeout {} → {}",
                dur(a.timeout),
                dur(b.timeout)
            ));
        }
    }
    if old.log != new.log {
        d.live
            .push(format!("log.level {} → {}", old.log.level, new.log.level));
    }
    d
}

/// Apply `new` to a running gateway, whole or not at all. Never drops a connection of an
/// allowed peer, never touches the serial port: readers see the new rules from their next
/// request on.
pub fn apply(handles: &Handles, new: Config) -> Outcome {
    let old = handles.live.current();
    let d = diff(&old, &new);
    if !d.restart.is_empty() {
        return Outcome::NeedsRestart {
            settings: d.restart,
            also: d.live,
        };
    }
    if d.live.is_empty() {
        return Outcome::Unchanged;
    }
    handles.image.set_freshness(&new.regions);
    if let (Some(settings), Some(p)) = (handles.live.push.get(), &new.push) {
        settings.store(Arc::new(p.clone()));
    }
    let log = if old.log != new.log {
        match logging::set_level(&new.log.level) {
            Ok(c) => Some(c),
            // The config was validated, so this cannot happen; say so if it does.
            Err(e) => {
                tracing::error!("log.level: {e}");
                None
            }
        }
    } else {
        None
    };
    handles.live.config.send_replace(Arc::new(new));
    Outcome::Applied {
        changes: d.live,
        log,
    }
}

/// Re-read `path` and apply it (SIGHUP). A file that does not load is rejected with its
/// error and the running config stays. Everything is logged; the outcome is returned.
pub fn reload_file(handles: &Handles, path: &Path) -> Result<Outcome, config::ConfigError> {
    tracing::info!(config = %path.display(), "reloading the config");
    let loaded = match config::load(path) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("reload rejected, the running config stays: {e}");
            return Err(e);
        }
    };
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let outcome = apply(handles, loaded.config);
    match &outcome {
        Outcome::Applied { .. } | Outcome::Unchanged => tracing::info!("{outcome}"),
        Outcome::NeedsRestart { .. } => tracing::warn!("{outcome}"),
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::handles::Live;
    use crate::image::Image;
    use arc_swap::ArcSwap;
    use std::time::Duration;

    const BASE: &str = "rtu: {device: /dev/ttyUSB0}
push: {listen: '127.0.0.1:0', allow_from: [127.0.0.1], max_connections: 2}
poll: {host: '127.0.0.1:5021', timeout: 500ms}
regions:
  - {name: totals, start: 0, count: 2, source: push, max_age: 600ms, on_stale: silence}
  - {name: energy, start: 512, count: 2, source: poll, every: 1s, max_age: 5s}
";

    fn config(text: &str) -> Config {
        config::parse(text, "test").expect("config").config
    }

    fn handles(cfg: &Config) -> Handles {
        Handles {
            image: Arc::new(Image::new(&cfg.regions)),
            push: Arc::default(),
            poll: Arc::default(),
            rtu: Arc::default(),
            rtu_poll: Arc::default(),
            tcp: Arc::default(),
            live: Arc::new(Live::new(cfg.clone())),
            journal: Arc::default(),
            mqtt: Arc::default(),
        }
    }

    #[test]
    fn live_settings_are_applied_and_named() {
        let old = config(BASE);
        let h = handles(&old);
        let settings = Arc::new(ArcSwap::from_pointee(old.push.clone().expect("push")));
        h.live.attach_push(Arc::clone(&settings));
        let text = BASE
            .replace("max_age: 600ms", "max_age: 900ms")
            .replace("max_connections: 2", "max_connections: 3")
            .replace("every: 1s", "every: 2s");
        let Outcome::Applied { changes, .. } = apply(&h, config(&text)) else {
            panic!("expected applied");
        };
        let all = changes.join("; ");
        assert!(all.contains("totals.max_age"), "{all}");
        assert!(all.contains("every"), "{all}");
        assert!(all.contains("max_connections"), "{all}");
        assert_eq!(settings.load().max_connections, 3, "push settings follow");
        assert_eq!(
            h.image.freshness(0).expect("rule").max_age,
            Duration::from_millis(900),
            "the image's freshness rule follows"
        );
        assert_eq!(
            h.live.current().regions[0].max_age,
            Duration::from_millis(900)
        );
    }

    #[test]
    fn a_restart_setting_holds_back_the_whole_file() {
        let old = config(BASE);
        let h = handles(&old);
        let text = BASE
            .replace("/dev/ttyUSB0", "/dev/ttyUSB1")
            .replace("max_age: 600ms", "max_age: 900ms");
        let outcome = apply(&h, config(&text));
        let Outcome::NeedsRestart { settings, also } = &outcome else {
            panic!("expected needs restart, got {outcome:?}");
        };
        assert!(
            settings.iter().any(|s| s.starts_with("rtu.device")),
            "{settings:?}"
        );
        assert!(also.iter().any(|s| s.contains("max_age")), "{also:?}");
        assert!(outcome.to_string().contains("systemctl restart airbridge"));
        // Nothing of it applied.
        assert_eq!(
            h.image.freshness(0).expect("rule").max_age,
            Duration::from_millis(600)
        );
        assert_eq!(*h.live.current(), old);
    }

    #[test]
    fn the_same_file_again_changes_nothing() {
        let old = config(BASE);
        let h = handles(&old);
        assert_eq!(apply(&h, config(BASE)), Outcome::Unchanged);
        assert!(diff(&old, &config(BASE)).live.is_empty());
    }

    #[test]
    fn a_file_that_does_not_load_is_rejected_and_the_config_stays() {
        let old = config(BASE);
        let h = handles(&old);
        let dir = std::env::temp_dir().join(format!("airbridge-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("gateway.yaml");
        std::fs::write(&path, "regions: [").expect("write");
        let err = reload_file(&h, &path).expect_err("rejected");
        assert!(err.to_string().contains("gateway.yaml"), "{err}");
        assert_eq!(*h.live.current(), old);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

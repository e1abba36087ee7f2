//! Hot reload: a new config for a running gateway, applied whole or not at all.
//!
//! Owns the config in force ([`Live`](crate::app::handles::Live)) and the rule of what may
//! change while running: freshness (`max_age`, `on_stale`), poll intervals (`every`,
//! `fallback_poll`), `poll.timeout`, the push allow list, connection limit and idle
//! timeout, and `log.level`. Anything else (serial settings, listen and upstream addresses,
//! region layout, profile, sections added later) needs a restart: such a file is reported
//! and nothing of it is applied. `SETTINGS` and `REGION_SETTINGS` are that rule, one row
//! per setting (what they name live, `with_live_from` takes over). It touches the image's
//! freshness rules, the push server's live settings, the poller's config channel and the
//! log level; never a connection or the serial port.

use std::path::Path;
use std::sync::Arc;

use crate::app::handles::Handles;
use crate::config::{self, Config, Region};
use crate::ops::logging::{self, LevelChange};
use ipnet::IpNet;

/// What a reload did.
#[derive(Debug, Clone, PartialEq)]
pub enum ReloadOutcome {
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

impl std::fmt::Display for ReloadOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadOutcome::Applied { changes, log } => {
                write!(f, "reload applied: {}", changes.join("; "))?;
                if log == &Some(LevelChange::OverriddenByEnv) {
                    f.write_str(" (log.level: RUST_LOG is set and wins)")?;
                }
                Ok(())
            }
            ReloadOutcome::Unchanged => f.write_str("reload: nothing changed"),
            ReloadOutcome::NeedsRestart { settings, also } => {
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

/// A duration as shown: `1m 30s`, or `never`.
fn dur(d: std::time::Duration) -> String {
    if d == std::time::Duration::MAX {
        "never".into()
    } else {
        humantime::format_duration(d).to_string()
    }
}

/// An optional duration as shown: `-` when unset.
fn opt_dur(d: Option<std::time::Duration>) -> String {
    d.map_or_else(|| "-".into(), dur)
}

/// An allow list as shown: `[192.168.178.100/32, 10.0.0.0/8]`.
fn nets(allow_from: &[IpNet]) -> String {
    let v: Vec<String> = allow_from.iter().map(ToString::to_string).collect();
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

/// Whether a changed setting can be taken live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    /// A running gateway takes it ([`apply`]).
    Live,
    /// Only a restart applies it.
    Restart,
}

/// How a setting is compared.
enum Compare {
    /// One line when it differs; gives `old → new`.
    Whole(fn(&Config, &Config) -> Option<String>),
    /// Each region of an unchanged layout, region by region: [`REGION_SETTINGS`] with this
    /// row's [`Needs`].
    EachRegion,
}

/// One row of [`SETTINGS`]: a setting, what a change of it needs, how it is compared.
struct Setting {
    /// The setting as named in the outcome (`rtu.baud`; a region's are named by
    /// [`RegionSetting::key`]).
    key: &'static str,
    /// Live or restart.
    needs: Needs,
    /// How old and new are compared.
    compare: Compare,
}

/// One row of [`REGION_SETTINGS`]: a setting of one region (`regions.NAME.key`).
struct RegionSetting {
    /// The setting's key within the region.
    key: &'static str,
    /// Live or restart.
    needs: Needs,
    /// `old → new` when it differs.
    compare: fn(&Region, &Region) -> Option<String>,
}

/// A setting only a restart applies.
const fn restart(key: &'static str, compare: fn(&Config, &Config) -> Option<String>) -> Setting {
    Setting {
        key,
        needs: Needs::Restart,
        compare: Compare::Whole(compare),
    }
}

/// A setting a running gateway takes.
const fn live(key: &'static str, compare: fn(&Config, &Config) -> Option<String>) -> Setting {
    Setting {
        key,
        needs: Needs::Live,
        compare: Compare::Whole(compare),
    }
}

/// The [`REGION_SETTINGS`] with `needs`, region by region.
const fn each_region(needs: Needs) -> Setting {
    Setting {
        key: "regions.NAME",
        needs,
        compare: Compare::EachRegion,
    }
}

/// `a → b` in `Debug` form, when they differ.
fn debug_change<T: PartialEq + std::fmt::Debug>(a: &T, b: &T) -> Option<String> {
    (a != b).then(|| format!("{a:?} → {b:?}"))
}

/// `a → b` as shown by `show`, when they differ.
fn shown_change<T: PartialEq>(a: &T, b: &T, show: impl Fn(&T) -> String) -> Option<String> {
    (a != b).then(|| format!("{} → {}", show(a), show(b)))
}

/// `a → b` when the shown forms differ.
fn text_change(a: String, b: String) -> Option<String> {
    (a != b).then(|| format!("{a} → {b}"))
}

/// `a → b` in `Debug` form when a section was added or removed (not when it changed).
fn presence_change<T: std::fmt::Debug>(a: Option<T>, b: Option<T>) -> Option<String> {
    (a.is_some() != b.is_some()).then(|| format!("{a:?} → {b:?}"))
}

/// Compare a section present in both configs (`None` when either lacks it).
fn both<T>(
    a: &Option<T>,
    b: &Option<T>,
    compare: impl Fn(&T, &T) -> Option<String>,
) -> Option<String> {
    compare(a.as_ref()?, b.as_ref()?)
}

/// Every setting a reload looks at, in the order the outcome lists them. Anything not
/// listed that differs is a restart named by its section (see [`unlisted_change`]).
const SETTINGS: &[Setting] = &[
    // Needs restart: the serial side, addresses, the layout, the profile.
    restart("rtu.device", |o, n| {
        debug_change(&o.rtu.device, &n.rtu.device)
    }),
    restart("rtu.baud", |o, n| debug_change(&o.rtu.baud, &n.rtu.baud)),
    restart("rtu.data_bits", |o, n| {
        debug_change(&o.rtu.data_bits, &n.rtu.data_bits)
    }),
    restart("rtu.parity", |o, n| {
        debug_change(&o.rtu.parity, &n.rtu.parity)
    }),
    restart("rtu.stop_bits", |o, n| {
        debug_change(&o.rtu.stop_bits, &n.rtu.stop_bits)
    }),
    restart("rtu.unit_id", |o, n| {
        debug_change(&o.rtu.unit_id, &n.rtu.unit_id)
    }),
    restart("rtu.turnaround", |o, n| {
        debug_change(&o.rtu.turnaround, &n.rtu.turnaround)
    }),
    restart("rtu.frame_timeout", |o, n| {
        debug_change(&o.rtu.frame_timeout, &n.rtu.frame_timeout)
    }),
    restart("rtu.input_registers", |o, n| {
        debug_change(&o.rtu.input_registers, &n.rtu.input_registers)
    }),
    restart("rtu.rs485", |o, n| debug_change(&o.rtu.rs485, &n.rtu.rs485)),
    restart("push.listen", |o, n| {
        both(&o.push, &n.push, |a, b| debug_change(&a.listen, &b.listen))
    }),
    restart("push", |o, n| {
        let listen = |c: &Config| c.push.as_ref().map(|p| p.listen);
        presence_change(listen(o), listen(n))
    }),
    restart("poll.host", |o, n| {
        both(&o.poll, &n.poll, |a, b| debug_change(&a.host, &b.host))
    }),
    restart("poll.unit_id", |o, n| {
        both(&o.poll, &n.poll, |a, b| {
            debug_change(&a.unit_id, &b.unit_id)
        })
    }),
    restart("poll", |o, n| {
        let host = |c: &Config| c.poll.as_ref().map(|p| p.host.clone());
        presence_change(host(o), host(n))
    }),
    restart("regions (layout, sources, static values):", layout_change),
    restart("profile", |o, n| {
        let path = |c: &Config| c.profile.as_ref().map(|p| p.path.clone());
        debug_change(&path(o), &path(n))
    }),
    each_region(Needs::Restart),
    // Live.
    each_region(Needs::Live),
    live("push.allow_from", |o, n| {
        both(&o.push, &n.push, |a, b| {
            shown_change(&a.allow_from, &b.allow_from, |v| nets(v))
        })
    }),
    live("push.max_connections", |o, n| {
        both(&o.push, &n.push, |a, b| {
            shown_change(&a.max_connections, &b.max_connections, ToString::to_string)
        })
    }),
    live("push.idle_timeout", |o, n| {
        both(&o.push, &n.push, |a, b| {
            shown_change(&a.idle_timeout, &b.idle_timeout, |d| dur(*d))
        })
    }),
    live("poll.timeout", |o, n| {
        both(&o.poll, &n.poll, |a, b| {
            shown_change(&a.timeout, &b.timeout, |d| dur(*d))
        })
    }),
    live("log.level", |o, n| {
        shown_change(&o.log, &n.log, |l| l.level.clone())
    }),
];

/// Every setting of one region a reload compares (only while the layout stays), in the
/// order the outcome lists them for each region.
const REGION_SETTINGS: &[RegionSetting] = &[
    RegionSetting {
        key: "max_age",
        needs: Needs::Live,
        compare: |a, b| text_change(dur(a.max_age), dur(b.max_age)),
    },
    RegionSetting {
        key: "on_stale",
        needs: Needs::Live,
        compare: |a, b| text_change(a.on_stale.as_str().into(), b.on_stale.as_str().into()),
    },
    // The KSEM poller follows reloads; the RTU poller (KSTAR) reads its intervals once, at
    // start.
    RegionSetting {
        key: "every",
        needs: Needs::Live,
        compare: |a, b| {
            if a.source.rtu_poll {
                None
            } else {
                text_change(opt_dur(a.every), opt_dur(b.every))
            }
        },
    },
    RegionSetting {
        key: "fallback_poll",
        needs: Needs::Live,
        compare: |a, b| text_change(opt_dur(a.fallback_poll), opt_dur(b.fallback_poll)),
    },
    RegionSetting {
        key: "every",
        needs: Needs::Restart,
        compare: |a, b| {
            (a.source.rtu_poll && a.every != b.every)
                .then(|| format!("{} → {} (rtu_poll)", opt_dur(a.every), opt_dur(b.every)))
        },
    },
];

/// The regions' layout (name, addresses, sources, which are polled, static values), one
/// line per region: any difference needs a restart.
fn layout(c: &Config) -> Vec<String> {
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
}

/// The regions that went and came, when the layout differs.
fn layout_change(old: &Config, new: &Config) -> Option<String> {
    let (la, lb) = (layout(old), layout(new));
    if la == lb {
        return None;
    }
    let gone: Vec<&String> = la.iter().filter(|x| !lb.contains(x)).collect();
    let added: Vec<&String> = lb.iter().filter(|x| !la.contains(x)).collect();
    Some(format!("{gone:?} → {added:?}"))
}

/// The changes of each region with `needs`, region by region (none when the layout
/// differs: that is one restart of its own).
fn region_changes(old: &Config, new: &Config, needs: Needs) -> Vec<String> {
    if layout(old) != layout(new) {
        return Vec::new();
    }
    let mut lines = Vec::new();
    for (a, b) in old.regions.iter().zip(&new.regions) {
        for s in REGION_SETTINGS.iter().filter(|s| s.needs == needs) {
            if let Some(change) = (s.compare)(a, b) {
                lines.push(format!("regions.{}.{} {change}", a.name, s.key));
            }
        }
    }
    lines
}

/// A difference no row of [`SETTINGS`] names, by its section: anything a reload does not
/// know to take live needs a restart.
fn unlisted_change(old: &Config, new: &Config) -> Option<String> {
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
    if live == *new {
        return None;
    }
    let mut keys = Vec::new();
    macro_rules! section {
        ($($f:ident),*) => {$(
            if live.$f != new.$f {
                keys.push(stringify!($f));
            }
        )*};
    }
    section!(
        rtu, push, poll, regions, profile, rtu_slave, rtu_poll, tcp_server, writable, log, status,
        mqtt, devices
    );
    let keys = if keys.is_empty() {
        "a setting".to_string()
    } else {
        keys.iter()
            .map(|k| format!("`{k}:`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Some(format!(
        "{keys} changed, and only a restart applies it (see `airbridge check`)"
    ))
}

/// Compare a running config with a new one.
pub fn diff(old: &Config, new: &Config) -> Diff {
    let mut d = Diff::default();
    for s in SETTINGS {
        let lines = match s.compare {
            Compare::Whole(compare) => compare(old, new)
                .map(|change| format!("{} {change}", s.key))
                .into_iter()
                .collect(),
            Compare::EachRegion => region_changes(old, new, s.needs),
        };
        match s.needs {
            Needs::Live => d.live.extend(lines),
            Needs::Restart => d.restart.extend(lines),
        }
    }
    if d.restart.is_empty() {
        d.restart.extend(unlisted_change(old, new));
    }
    d
}

/// Apply `new` to a running gateway, whole or not at all. Never drops a connection of an
/// allowed peer, never touches the serial port: readers see the new rules from their next
/// request on.
pub fn apply(handles: &Handles, new: Config) -> ReloadOutcome {
    let old = handles.live.current();
    let d = diff(&old, &new);
    if !d.restart.is_empty() {
        return ReloadOutcome::NeedsRestart {
            settings: d.restart,
            also: d.live,
        };
    }
    if d.live.is_empty() {
        return ReloadOutcome::Unchanged;
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
    ReloadOutcome::Applied {
        changes: d.live,
        log,
    }
}

/// Re-read `path` and apply it (SIGHUP). A file that does not load is rejected with its
/// error and the running config stays. Everything is logged; the outcome is returned.
pub fn reload_file(handles: &Handles, path: &Path) -> Result<ReloadOutcome, config::ConfigError> {
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
        ReloadOutcome::Applied { .. } | ReloadOutcome::Unchanged => tracing::info!("{outcome}"),
        ReloadOutcome::NeedsRestart { .. } => tracing::warn!("{outcome}"),
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
        let ReloadOutcome::Applied { changes, .. } = apply(&h, config(&text)) else {
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
        let ReloadOutcome::NeedsRestart { settings, also } = &outcome else {
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
        assert_eq!(apply(&h, config(BASE)), ReloadOutcome::Unchanged);
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

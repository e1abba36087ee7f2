//! `/status` and `/journal`: what the gateway knows, as JSON (and the journal as text).
//!
//! Owns the list of "key values" (by register name in the profile) and their decoding from
//! one image snapshot through the configured register profile. Each section of `/status`
//! is one function below. Objects are serde_json maps without `preserve_order`, so their
//! keys come out sorted, whatever order they are written in. Reads only.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value as Json};
use tokio::time::Instant;

use super::{unix_ms, StatusContext};
use crate::config::Config;
use crate::control::profile::{self, Profile, Value};
use crate::image::{Image, RegionSpec, Snapshot};
use crate::ops::journal::Journal;
use crate::servers::rtu_slave::RtuStats;
use crate::sources::ksem_poll::{PollStats, RegionPollCounts};
use crate::sources::push::PushStats;
use crate::sources::rtu_poll::{DeviceStats, RtuPollStats};

/// One value shown on the status page: a register of the profile, or the difference of
/// two (import minus export).
#[derive(Debug, Clone, Copy)]
pub struct KeyValue {
    /// Stable id in `/status` JSON and on the page.
    pub id: &'static str,
    /// Human label on the page.
    pub label: &'static str,
    /// Register name in the profile.
    pub register: &'static str,
    /// Register subtracted from it, if any.
    pub minus: Option<&'static str>,
}

const fn kv(
    id: &'static str,
    label: &'static str,
    register: &'static str,
    minus: Option<&'static str>,
) -> KeyValue {
    KeyValue {
        id,
        label,
        register,
        minus,
    }
}

/// The key values, by profile register name. A profile without some of them shows those
/// as unavailable; nothing else depends on them.
pub const KEY_VALUES: &[KeyValue] = &[
    kv(
        "grid_power",
        "Grid power (import − export)",
        "active_power_import",
        Some("active_power_export"),
    ),
    kv(
        "power_l1",
        "Power L1",
        "active_power_import_l1",
        Some("active_power_export_l1"),
    ),
    kv(
        "power_l2",
        "Power L2",
        "active_power_import_l2",
        Some("active_power_export_l2"),
    ),
    kv(
        "power_l3",
        "Power L3",
        "active_power_import_l3",
        Some("active_power_export_l3"),
    ),
    kv("voltage_l1", "Voltage L1", "voltage_l1", None),
    kv("voltage_l2", "Voltage L2", "voltage_l2", None),
    kv("voltage_l3", "Voltage L3", "voltage_l3", None),
    kv("current_l1", "Current L1", "current_l1", None),
    kv("current_l2", "Current L2", "current_l2", None),
    kv("current_l3", "Current L3", "current_l3", None),
    kv("frequency", "Frequency", "frequency", None),
    kv(
        "energy_import",
        "Energy imported",
        "active_energy_import",
        None,
    ),
    kv(
        "energy_export",
        "Energy exported",
        "active_energy_export",
        None,
    ),
];

/// A decoded key value, or why there is none.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The physical value, or why it could not be decoded.
    pub value: Result<f64, String>,
    /// Its unit from the profile.
    pub unit: Option<String>,
    /// A region holding it is older than its `max_age`.
    pub stale: bool,
}

/// Decode one register of the profile from `snap`.
fn register(
    profile: &Profile,
    image: &Image,
    snap: &Snapshot,
    name: &str,
    now: Instant,
) -> Result<(f64, Option<String>, bool), String> {
    let reg = profile
        .get(name)
        .ok_or_else(|| format!("`{name}` is not in the profile"))?;
    let table = image.table_for(3);
    let touched = image
        .covering(table, reg.address, usize::from(reg.words))
        .ok_or_else(|| format!("no region serves {name} ({}..{})", reg.address, reg.end()))?;
    if touched
        .clone()
        .any(|i| snap.regions.get(i).is_none_or(|r| r.written.is_none()))
    {
        return Err("no data yet".into());
    }
    let stale = touched.clone().any(|i| image.is_stale(snap, i, now));
    let words = image
        .read_words(snap, table, reg.address, reg.words)
        .ok_or_else(|| format!("no region serves {name}"))?;
    match reg.decode(&words) {
        Value::Number(v) => Ok((v, reg.unit.clone(), stale)),
        other => Err(format!("{name} is not a number ({other})")),
    }
}

/// Decode `kv` through `profile` from one snapshot.
pub fn decode(
    kv: &KeyValue,
    profile: &Profile,
    image: &Image,
    snap: &Snapshot,
    now: Instant,
) -> Decoded {
    let plus = register(profile, image, snap, kv.register, now);
    let minus = kv.minus.map(|m| register(profile, image, snap, m, now));
    match (plus, minus) {
        (Ok((a, unit, s1)), None) => Decoded {
            value: Ok(profile::round(a)),
            unit,
            stale: s1,
        },
        (Ok((a, unit, s1)), Some(Ok((b, _, s2)))) => Decoded {
            value: Ok(profile::round(a - b)),
            unit,
            stale: s1 || s2,
        },
        (Err(e), _) | (_, Some(Err(e))) => Decoded {
            value: Err(e),
            unit: None,
            stale: false,
        },
    }
}

fn profile_of(ctx: &StatusContext) -> Option<&Profile> {
    ctx.profile.as_ref().ok().and_then(Option::as_ref)
}

/// Grid power now, if the profile has it and its data is fresh.
pub fn grid_power_now(ctx: &StatusContext) -> Option<f64> {
    let profile = profile_of(ctx)?;
    let kv = KEY_VALUES.first()?;
    let image = &ctx.handles.image;
    let snap = image.load_full();
    let d = decode(kv, profile, image, &snap, Instant::now());
    d.value.ok().filter(|_| !d.stale)
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e3).round() / 1e3
}

/// One look at the gateway that every section of `/status` reads.
struct Look<'a> {
    /// The endpoint's context.
    ctx: &'a StatusContext,
    /// The config in force.
    config: Arc<Config>,
    /// The image now.
    snap: Arc<Snapshot>,
    /// Now, for ages.
    now: Instant,
    /// Now, for wall-clock ages (errors, uptime).
    wall: SystemTime,
}

/// The `/status` document.
pub fn status_json(ctx: &StatusContext) -> Json {
    let h = &ctx.handles;
    let look = Look {
        ctx,
        snap: h.image.load_full(),
        now: Instant::now(),
        wall: SystemTime::now(),
        config: h.live.current(),
    };
    let lat = h.rtu.latency.snapshot();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "time_ms": unix_ms(look.wall),
        "uptime_s": secs(look.wall.duration_since(ctx.started).unwrap_or_default()),
        "ready": look.snap.warm,
        "state": super::state::assess(h, look.now).to_json(),
        "profile": profile_json(ctx),
        "values": values_json(&look),
        "regions": regions_json(&look),
        "upstream": upstream_json(&look),
        "counters": {
            "rtu": rtu_counters(&h.rtu),
            "push": push_counters(&h.push),
            "poll": poll_counters(&h.poll),
            "journal": {
                "recorded": h.journal.recorded(),
                "dropped": h.journal.dropped(),
                "capacity": h.journal.capacity(),
            },
        },
        "latency": {
            "buckets": lat.buckets,
            "count": lat.count,
            "sum_s": lat.sum_seconds,
        },
        "history": {"interval_s": 1, "grid_power": history_json(ctx)},
    })
}

/// `profile`: its name, or why there is none.
fn profile_json(ctx: &StatusContext) -> Json {
    match &ctx.profile {
        Ok(Some(p)) => json!({"name": p.name, "error": null}),
        Ok(None) => json!({"name": null, "error": "no profile configured"}),
        Err(e) => json!({"name": null, "error": e}),
    }
}

/// `values`: every key value, decoded, or why not.
fn values_json(look: &Look) -> Vec<Json> {
    let image = &look.ctx.handles.image;
    let not_decoded = |why: String| Decoded {
        value: Err(why),
        unit: None,
        stale: false,
    };
    KEY_VALUES
        .iter()
        .map(|kv| {
            let d = match &look.ctx.profile {
                Ok(Some(p)) => decode(kv, p, image, &look.snap, look.now),
                Ok(None) => not_decoded("no profile configured".into()),
                Err(e) => not_decoded(format!("profile failed to load: {e}")),
            };
            let (value, why) = match d.value {
                Ok(v) => (Some(v), None),
                Err(e) => (None, Some(e)),
            };
            json!({
                "id": kv.id,
                "label": kv.label,
                "value": value,
                "unit": d.unit,
                "stale": d.stale,
                "why": why,
            })
        })
        .collect()
}

/// `regions`: each region's layout, source, age, rule in force and last error.
fn regions_json(look: &Look) -> Vec<Json> {
    let h = &look.ctx.handles;
    let image = &h.image;
    let poll_regions = h
        .poll
        .by_region
        .lock()
        .map(|m| m.clone())
        .unwrap_or_default();
    let poller_down = super::state::poller_cause(h, &look.config);
    let (snap, now) = (&look.snap, look.now);
    image
        .specs()
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            // The rules in force (a hot reload may have changed them since start).
            let rule = image.freshness(i).unwrap_or(crate::image::Freshness {
                max_age: spec.max_age,
                on_stale: spec.on_stale,
            });
            let last_error = region_error(look, &spec.name, poller_down.as_deref(), &poll_regions);
            json!({
                "name": spec.name,
                "start": spec.start,
                "count": spec.count,
                "source": look.ctx.source_of(&spec.name),
                "fed_by": fed_by(look, spec, i),
                "age_s": image.age(snap, i, now).map(secs),
                "max_age_s": (rule.max_age != Duration::MAX).then(|| secs(rule.max_age)),
                "on_stale": rule.on_stale.as_str(),
                "stale": image.is_stale(snap, i, now),
                "last_error": last_error,
            })
        })
        .collect()
}

/// A region's `last_error`: while the poller cannot connect, its connect error is the
/// cause of a polled region, not the socket error of the region's last read.
fn region_error(
    look: &Look,
    name: &str,
    poller_down: Option<&str>,
    poll_regions: &BTreeMap<String, RegionPollCounts>,
) -> Option<Json> {
    let polled = look
        .ctx
        .regions
        .iter()
        .any(|r| r.name == name && (r.source.poll || r.fallback_poll.is_some()));
    match (poller_down, polled) {
        (Some(cause), true) => Some(json!({"message": cause, "ago_s": 0.0})),
        _ => {
            let (message, at) = poll_regions.get(name)?.last_error.as_ref()?;
            let ago = look.wall.duration_since(*at).unwrap_or_default();
            Some(json!({"message": message, "ago_s": secs(ago)}))
        }
    }
}

/// A region's `fed_by`: what wrote it last.
fn fed_by(look: &Look, spec: &RegionSpec, i: usize) -> &'static str {
    let region = look.snap.regions.get(i);
    if spec.accepts_push && super::state::fed_by_fallback(&look.config, &look.snap, &spec.name, i) {
        "fallback poll"
    } else if region.and_then(|r| r.written).is_none() {
        "nothing yet"
    } else if region.is_some_and(|r| r.pushed.is_some() && r.written == r.pushed) {
        "push"
    } else {
        "poll"
    }
}

/// `upstream`: the state of every link the data comes in on.
fn upstream_json(look: &Look) -> Json {
    let h = &look.ctx.handles;
    let config = &look.config;
    json!({
        "push_connections_open": h.push.front.open.load(Relaxed),
        "rtu_device": {
            "path": config.rtu_slave.then(|| config.rtu.device.clone()),
            "opens": h.rtu.device_opens.load(Relaxed),
            "failures": h.rtu.device_failures.load(Relaxed),
            "last_error": h.rtu.device_error.lock().ok().and_then(|g| g.clone()),
        },
        "poll_connected": h.poll.connected.load(Relaxed),
        "poll_last_error": h.poll.last_error.lock().ok().and_then(|g| g.clone()),
        "rtu_poll": rtu_poll_json(look.ctx, look.now),
    })
}

/// `counters.rtu`: the RTU slave's replies and what it did not answer.
fn rtu_counters(rtu: &RtuStats) -> Json {
    json!({
        "replies": rtu.replies.load(Relaxed),
        "exceptions": rtu.exceptions.load(Relaxed),
        "silent_stale": rtu.silent_stale.load(Relaxed),
        "silent_warmup": rtu.silent_warmup.load(Relaxed),
        "crc_errors": rtu.crc_errors.load(Relaxed),
        "foreign": rtu.foreign.load(Relaxed),
        "broadcast": rtu.broadcast.load(Relaxed),
        "partial_discarded": rtu.partial_discarded.load(Relaxed),
        "oversize": rtu.oversize.load(Relaxed),
        "garbage_bytes": rtu.garbage_bytes.load(Relaxed),
        "echoes": rtu.echoes.load(Relaxed),
    })
}

/// `counters.push`: the push server's writes, reads and connections.
fn push_counters(push: &PushStats) -> Json {
    json!({
        "writes_ok": push.writes_ok.load(Relaxed),
        "writes_refused": push.writes_refused.load(Relaxed),
        "reads": push.reads.load(Relaxed),
        "bad_requests": push.bad_requests.load(Relaxed),
        "connections_accepted": push.front.accepted.load(Relaxed),
        "refused_not_allowed": push.front.refused_not_allowed.load(Relaxed),
        "refused_limit": push.front.refused_limit.load(Relaxed),
    })
}

/// `counters.poll`: the KSEM poller's region reads and connects.
fn poll_counters(poll: &PollStats) -> Json {
    json!({
        "regions_ok": poll.regions_ok.load(Relaxed),
        "regions_failed": poll.regions_failed.load(Relaxed),
        "fallback_polls": poll.fallback_polls.load(Relaxed),
        "superseded": poll.superseded.load(Relaxed),
        "connect_failures": poll.connect_failures.load(Relaxed),
    })
}

/// `history.grid_power`: `[unix ms, W or null]`, oldest first.
fn history_json(ctx: &StatusContext) -> Vec<Json> {
    ctx.history
        .lock()
        .map(|hist| hist.iter().map(|(t, v)| json!([t, v])).collect())
        .unwrap_or_default()
}

/// The RTU poller's link (`null` without `rtu_poll:`): `state` is `polling`, `offline`
/// (the device does not answer; probing), `reopening` (the serial device is missing) or
/// `stalled` (the loop stopped beating since the last look, 10 s or more ago). With
/// `devices:`, `offline` means some device does not answer, and `devices` lists each with
/// its own state, region ages and counters.
fn rtu_poll_json(ctx: &StatusContext, now: Instant) -> Json {
    let h = &ctx.handles;
    if h.live.current().rtu_poll.is_none() {
        return Json::Null;
    }
    let s = &h.rtu_poll;
    let beating = ctx
        .rtu_poll_liveness
        .lock()
        .map(|mut l| l.observe(s.heartbeat.load(Relaxed), now))
        .unwrap_or(true);
    let online = s.online.load(Relaxed);
    let state = if !beating {
        "stalled"
    } else if !s.bus_open.load(Relaxed) {
        "reopening"
    } else if !online {
        "offline"
    } else {
        "polling"
    };
    let mut out = json!({
        "state": state,
        "online": online,
        "device_opens": s.device_opens.load(Relaxed),
        "device_failures": s.device_failures.load(Relaxed),
        "counters": rtu_poll_counters(s),
    });
    // With `devices:` each device on its own (the one-device form's output is as before).
    if !s.devices().is_empty() {
        let snap = h.image.load();
        let devices = s
            .devices()
            .iter()
            .enumerate()
            .map(|(d, dev)| rtu_poll_device_json(&h.image, &snap, d, dev, state, now));
        out["devices"] = Json::Array(devices.collect());
    }
    out
}

/// One device of the RTU poller (`devices:`): its state within the bus `state`, its
/// regions' ages and its counters.
fn rtu_poll_device_json(
    image: &Image,
    snap: &Snapshot,
    d: usize,
    dev: &DeviceStats,
    state: &str,
    now: Instant,
) -> Json {
    let online = dev.stats.online.load(Relaxed);
    let regions: Vec<Json> = image
        .specs()
        .iter()
        .enumerate()
        .filter(|(_, spec)| spec.device == d)
        .map(|(i, spec)| {
            json!({
                "name": spec.name,
                "age_s": image.age(snap, i, now).map(|a| a.as_secs_f64()),
                "stale": image.is_stale(snap, i, now),
            })
        })
        .collect();
    json!({
        "name": dev.name,
        "unit_id": dev.unit_id,
        "state": match (state, online) {
            ("polling" | "offline", true) => "polling",
            ("polling" | "offline", false) => "offline",
            (other, _) => other,
        },
        "online": online,
        "regions": regions,
        "counters": rtu_poll_counters(&dev.stats),
    })
}

/// The RTU poller's bus counters: polls, timeouts and what became of each write.
fn rtu_poll_counters(s: &RtuPollStats) -> Json {
    json!({
        "requests": s.requests.load(Relaxed),
        "timeouts": s.timeouts.load(Relaxed),
        "exceptions": s.exceptions.load(Relaxed),
        "bad_frames": s.bad_frames.load(Relaxed),
        "regions_ok": s.regions_ok.load(Relaxed),
        "regions_failed": s.regions_failed.load(Relaxed),
        "probes": s.probes.load(Relaxed),
        "writes_ok": s.writes_ok.load(Relaxed),
        "writes_failed": s.writes_failed.load(Relaxed),
        "writes_expired": s.writes_expired.load(Relaxed),
        "writes_abandoned": s.writes_abandoned.load(Relaxed),
    })
}

/// The `/journal` document: the newest `n` entries, oldest first.
pub fn journal_json(journal: &Journal, n: usize) -> Json {
    let entries: Vec<Json> = journal
        .last(n)
        .iter()
        .map(|e| {
            json!({
                "t_us": e.t_us,
                "time": e.time(),
                "link": e.link.as_str(),
                "dir": e.dir.as_str(),
                "unit": e.unit,
                "function": e.function,
                "address": e.address,
                "count": e.count,
                "frame": e.frame(),
                "action": e.action.kind(),
                "result": e.action.to_string(),
                "latency_us": e.latency_us,
            })
        })
        .collect();
    json!({
        "capacity": journal.capacity(),
        "recorded": journal.recorded(),
        "dropped": journal.dropped(),
        "entries": entries,
    })
}

/// The journal as text, one entry per line, oldest first.
pub fn journal_text(journal: &Journal, n: usize) -> String {
    let mut s = String::new();
    for e in journal.last(n) {
        s.push_str(&e.to_string());
        s.push('\n');
    }
    s
}

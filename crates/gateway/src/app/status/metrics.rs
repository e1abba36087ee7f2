//! `/metrics`: the Prometheus text exposition format (version 0.0.4), rendered by hand from
//! the atomic counters every role already keeps.
//!
//! Owns the metric names, their HELP texts and label escaping. Reads only.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, UNIX_EPOCH};

use tokio::time::Instant;

use super::StatusContext;
use crate::ops::stats::RESULTS;

/// Two results of one counter family, from a device's counters.
type Pair = fn(&crate::sources::rtu_poll::RtuPollStats) -> [(&'static str, u64); 2];

/// The poller's per-device families (`devices:` only; nothing in the one-device form).
fn rtu_poll_devices(o: &mut Out, devices: &[crate::sources::rtu_poll::DeviceStats]) {
    if devices.is_empty() {
        return;
    }
    o.family(
        "airbridge_rtu_poll_device_online",
        "gauge",
        "1 while the device on the RTU bus answers; 0 while it is offline (only probed).",
    );
    for d in devices {
        let online = b(d.stats.online.load(Relaxed));
        o.sample(
            "airbridge_rtu_poll_device_online",
            &[("device", &d.name)],
            online,
        );
    }
    let families: [(&str, &str, Pair); 4] = [
        ("airbridge_rtu_poll_regions_total", "Region polls of the device by result (ok = read completely and committed).", |s| [("ok", s.regions_ok.load(Relaxed)), ("failed", s.regions_failed.load(Relaxed))]),
        ("airbridge_rtu_poll_requests_total", "Requests to the device by result (timeout = no reply within rtu_poll.timeout).", |s| [("sent", s.requests.load(Relaxed)), ("timeout", s.timeouts.load(Relaxed))]),
        ("airbridge_rtu_poll_writes_total", "Writes to the device by result (failed: refused, unanswered or refused while offline).", |s| [("ok", s.writes_ok.load(Relaxed)), ("failed", s.writes_failed.load(Relaxed))]),
        ("airbridge_rtu_poll_offline_total", "Times the device went offline, and probes sent while it was.", |s| [("went_offline", s.went_offline.load(Relaxed)), ("probe", s.probes.load(Relaxed))]),
    ];
    for (name, help, values) in families {
        o.family(name, "counter", help);
        for d in devices {
            for (result, n) in values(&d.stats) {
                o.sample(name, &[("device", &d.name), ("result", result)], n as f64);
            }
        }
    }
}

/// Escape a label value: backslash, double quote and newline.
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// A metric family being written: `# HELP` and `# TYPE` once, then samples.
struct Out {
    /// The exposition text being written.
    s: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.s, "# HELP {name} {help}");
        let _ = writeln!(self.s, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.s.push_str(name);
        if !labels.is_empty() {
            self.s.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.s.push(',');
                }
                let _ = write!(self.s, "{k}=\"{}\"", escape_label(v));
            }
            self.s.push('}');
        }
        let _ = writeln!(self.s, " {}", number(value));
    }

    /// [`Out::sample`] with owned label values.
    fn sample_owned(&mut self, name: &str, labels: &[(&str, String)], value: f64) {
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.sample(name, &labels, value);
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// Several families of one unlabelled sample each: `(name, kind, help, value)`.
    fn ones(&mut self, rows: &[(&str, &str, &str, f64)]) {
        for (name, kind, help, value) in rows {
            self.one(name, kind, help, *value);
        }
    }

    /// A family whose samples differ in one label: `name{label="v"} n` for each `(v, n)`.
    fn by(&mut self, name: &str, kind: &str, help: &str, label: &str, samples: &[(&str, f64)]) {
        self.family(name, kind, help);
        for (v, n) in samples {
            self.sample(name, &[(label, v)], *n);
        }
    }
}

/// A counter's value as a sample value.
fn n(c: &AtomicU64) -> f64 {
    c.load(Relaxed) as f64
}

fn number(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else if v.is_nan() {
        "NaN".to_string()
    } else {
        format!("{v}")
    }
}

fn b(v: bool) -> f64 {
    if v {
        1.0
    } else {
        0.0
    }
}

/// Render every metric.
pub fn render(ctx: &StatusContext) -> String {
    let h = &ctx.handles;
    let mut o = Out {
        s: String::with_capacity(8 * 1024),
    };

    o.family(
        "airbridge_build_info",
        "gauge",
        "Version of the running gateway (value 1).",
    );
    o.sample(
        "airbridge_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    let start = ctx.started.duration_since(UNIX_EPOCH).unwrap_or_default();
    o.one(
        "airbridge_start_time_seconds",
        "gauge",
        "Unix time the gateway started.",
        start.as_secs_f64().floor(),
    );

    // Image.
    let image = &h.image;
    let snap = image.load_full();
    let now = Instant::now();
    o.one(
        "airbridge_ready",
        "gauge",
        "1 once every region has been filled once (the RTU slave answers only then).",
        b(snap.warm),
    );
    let state = super::state::assess(h, now);
    o.family(
        "airbridge_state",
        "gauge",
        "1 for the gateway's state now (the status page's badge), 0 for the others.",
    );
    for id in super::state::STATE_IDS {
        o.sample("airbridge_state", &[("state", id)], b(state.id() == id));
    }
    let cfg = h.live.current();
    if cfg.rtu_slave {
        let opens = h.rtu.device_opens.load(Relaxed);
        let failures = h.rtu.device_failures.load(Relaxed);
        o.family(
            "airbridge_rtu_device_open",
            "gauge",
            "1 while the RS485 device (rtu.device) is open, 0 while it cannot be opened.",
        );
        o.sample(
            "airbridge_rtu_device_open",
            &[("device", &cfg.rtu.device)],
            b(failures == 0 || opens > failures),
        );
        o.one(
            "airbridge_rtu_device_failures_total",
            "counter",
            "Times the RS485 device could not be opened, or failed or vanished while open.",
            failures as f64,
        );
    }
    let source = |name: &str| {
        ctx.regions
            .iter()
            .find(|r| r.name == name)
            .map_or_else(|| "?".to_string(), |r| r.source.to_string())
    };
    // With `devices:` a region is labelled by its device and its name there
    // (`region="live",device="battery1"`); in the one-device form as before.
    let devices = h.rtu_poll.devices();
    let region_labels = |spec: &crate::image::RegionSpec| -> Vec<(&'static str, String)> {
        match devices.get(spec.device).and_then(|d| {
            let short = spec.name.strip_prefix(d.name.as_str())?.strip_prefix('.')?;
            Some((short.to_string(), d.name.clone()))
        }) {
            Some((short, dev)) => vec![("region", short), ("device", dev)],
            None => vec![("region", spec.name.clone())],
        }
    };
    let with = |labels: &[(&'static str, String)], extra: &[(&'static str, String)]| {
        labels.iter().chain(extra).cloned().collect::<Vec<_>>()
    };
    o.family(
        "airbridge_region_age_seconds",
        "gauge",
        "Time since the region was last written completely; absent until it was filled once.",
    );
    for (i, spec) in image.specs().iter().enumerate() {
        if let Some(age) = image.age(&snap, i, now) {
            let labels = with(&region_labels(spec), &[("source", source(&spec.name))]);
            o.sample_owned("airbridge_region_age_seconds", &labels, age.as_secs_f64());
        }
    }
    o.family(
        "airbridge_region_max_age_seconds",
        "gauge",
        "The region's max_age: older data is stale (static regions never age and are left out).",
    );
    for (i, spec) in image.specs().iter().enumerate() {
        // The rule in force (hot reload), not the one at start.
        let max_age = image.freshness(i).map_or(spec.max_age, |f| f.max_age);
        if max_age != Duration::MAX {
            o.sample_owned(
                "airbridge_region_max_age_seconds",
                &region_labels(spec),
                max_age.as_secs_f64(),
            );
        }
    }
    o.family(
        "airbridge_region_stale",
        "gauge",
        "1 while the region is older than its max_age or was never filled.",
    );
    for (i, spec) in image.specs().iter().enumerate() {
        o.sample_owned(
            "airbridge_region_stale",
            &region_labels(spec),
            b(image.is_stale(&snap, i, now)),
        );
    }
    rtu_poll_devices(&mut o, devices);

    // Push.
    let p = &h.push;
    o.by(
        "airbridge_push_writes_total",
        "counter",
        "Push writes (FC06/FC16) by result: ok = applied, refused = exception 02 (outside the push regions).",
        "result",
        &[("ok", n(&p.writes_ok)), ("refused", n(&p.writes_refused))],
    );
    o.ones(&[
        (
            "airbridge_push_reads_total",
            "counter",
            "Diagnostic reads (FC03/FC04) answered by the push server.",
            n(&p.reads),
        ),
        (
            "airbridge_push_bad_requests_total",
            "counter",
            "Push requests with an unsupported function (exception 01) or count (exception 03).",
            n(&p.bad_requests),
        ),
    ]);
    o.by(
        "airbridge_push_connections_total",
        "counter",
        "Push connections by what happened at accept.",
        "result",
        &[
            ("accepted", n(&p.front.accepted)),
            ("not_allowed", n(&p.front.refused_not_allowed)),
            ("limit", n(&p.front.refused_limit)),
        ],
    );
    o.ones(&[
        (
            "airbridge_push_idle_timeouts_total",
            "counter",
            "Push connections closed for idleness.",
            n(&p.front.idle_timeouts),
        ),
        (
            "airbridge_push_connections",
            "gauge",
            "Push connections open now (upstream connection state of the push side).",
            p.front.open.load(Relaxed) as f64,
        ),
    ]);

    // Poll.
    let q = &h.poll;
    o.one(
        "airbridge_poll_connected",
        "gauge",
        "1 while the poller's connection to the KSEM's Modbus TCP slave is up.",
        b(q.connected.load(Relaxed)),
    );
    o.by(
        "airbridge_poll_connects_total",
        "counter",
        "Poller connection attempts by result.",
        "result",
        &[("ok", n(&q.connects)), ("failed", n(&q.connect_failures))],
    );
    o.family("airbridge_poll_requests_total", "counter", "Region reads by the poller, by region and result (superseded = discarded, a newer push landed).");
    if let Ok(m) = q.by_region.lock() {
        for (region, c) in m.iter() {
            for (result, count) in c.by_result() {
                o.sample(
                    "airbridge_poll_requests_total",
                    &[("region", region), ("result", result)],
                    count as f64,
                );
            }
        }
    }
    o.one(
        "airbridge_poll_fallback_total",
        "counter",
        "Region reads done as fallback for a push region whose pushes are missing.",
        n(&q.fallback_polls),
    );

    // RTU.
    let r = &h.rtu;
    o.family("airbridge_rtu_requests_total", "counter", "RTU requests for our unit by function code and result (exceptions by name; silent_* = no reply).");
    let mut fcs = r.requests_by_function.seen();
    for fc in [3u8, 4] {
        if !fcs.contains(&fc) {
            fcs.push(fc);
        }
    }
    fcs.sort_unstable();
    for fc in fcs {
        let counts = r.requests_by_function.of(fc);
        let f = fc.to_string();
        for (result, count) in RESULTS.iter().zip(counts) {
            o.sample(
                "airbridge_rtu_requests_total",
                &[("function", &f), ("result", result)],
                count as f64,
            );
        }
    }
    o.by(
        "airbridge_rtu_frames_dropped_total",
        "counter",
        "RTU frames not answered, by reason: crc, foreign_unit (other units' requests and all responses), broadcast, partial (incomplete at silence), oversize.",
        "reason",
        &[
            ("crc", n(&r.crc_errors)),
            ("foreign_unit", n(&r.foreign)),
            ("broadcast", n(&r.broadcast)),
            ("partial", n(&r.partial_discarded)),
            ("oversize", n(&r.oversize)),
        ],
    );
    o.ones(&[
        (
            "airbridge_rtu_garbage_bytes_total",
            "counter",
            "Bytes discarded while hunting for a frame (line noise, wrong baud rate).",
            n(&r.garbage_bytes),
        ),
        (
            "airbridge_rtu_echoes_total",
            "counter",
            "Own replies echoed back by the RS485 adapter (ignored).",
            n(&r.echoes),
        ),
        (
            "airbridge_rtu_reply_bytes_total",
            "counter",
            "Bytes sent as RTU replies.",
            n(&r.tx_bytes),
        ),
    ]);
    let lat = r.latency.snapshot();
    let name = "airbridge_rtu_reply_latency_seconds";
    o.family(name, "histogram", "Request's last byte received to reply written, per RTU reply (includes the configured turnaround).");
    for (le, count) in &lat.buckets {
        let le = number(*le);
        o.sample(&format!("{name}_bucket"), &[("le", &le)], *count as f64);
    }
    o.sample(
        &format!("{name}_bucket"),
        &[("le", "+Inf")],
        lat.count as f64,
    );
    o.sample(&format!("{name}_sum"), &[], lat.sum_seconds);
    o.sample(&format!("{name}_count"), &[], lat.count as f64);

    // Journal.
    let j = &h.journal;
    o.ones(&[
        (
            "airbridge_journal_entries_total",
            "counter",
            "Frames recorded in the frame journal.",
            j.recorded() as f64,
        ),
        (
            "airbridge_journal_dropped_total",
            "counter",
            "Journal entries dropped because their slot was being written concurrently.",
            j.dropped() as f64,
        ),
    ]);
    // MQTT (all 0 without an `mqtt:` section).
    let m = &h.mqtt;
    o.one(
        "airbridge_mqtt_connected",
        "gauge",
        "1 while connected to the MQTT broker.",
        n(&m.connected),
    );
    o.by(
        "airbridge_mqtt_connects_total",
        "counter",
        "MQTT connection attempts by result (failed includes dropped connections).",
        "result",
        &[("ok", n(&m.connects)), ("failed", n(&m.failures))],
    );
    o.ones(&[
        ("airbridge_mqtt_published_total", "counter", "MQTT messages handed to the client (state, availability, discovery, results).", n(&m.published)),
        ("airbridge_mqtt_dropped_total", "counter", "MQTT state messages dropped because the client's queue was full (slow broker; the next tick sends the newest).", n(&m.dropped)),
        ("airbridge_mqtt_commands_total", "counter", "MQTT commands received (any outcome).", n(&m.commands)),
    ]);
    o.s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(0.00005), "0.00005");
    }
}

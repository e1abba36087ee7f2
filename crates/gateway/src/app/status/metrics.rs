//! `/metrics`: the Prometheus text exposition format (version 0.0.4), rendered by hand from
//! the atomic counters every role already keeps.
//!
//! Owns the metric names, their HELP texts and label escaping: `FAMILIES` is the table of
//! every family, one row each (name, type, help, when it is shown, how its samples are read),
//! in the order they are written. Reads only.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use tokio::time::Instant;

use super::StatusContext;
use crate::app::handles::Handles;
use crate::config::Config;
use crate::image::{RegionSpec, Snapshot};
use crate::ops::stats::RESULTS;
use crate::sources::rtu_poll::{DeviceStats, RtuPollStats};

/// What every family reads from: the handles, and one snapshot, config and instant shared
/// by all of them.
struct View<'a> {
    /// The status endpoint's context (configured regions, start time).
    ctx: &'a StatusContext,
    /// The counters and the image.
    h: &'a Handles,
    /// The config in force.
    config: Arc<Config>,
    /// The image as of the start of the rendering.
    snap: Arc<Snapshot>,
    /// The instant ages are measured at.
    now: Instant,
    /// The RTU poller's devices (`devices:`; empty in the one-device form).
    devices: &'a [DeviceStats],
}

/// A metric type, as written in `# TYPE`.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A value that goes up and down.
    Gauge,
    /// A count that only goes up.
    Counter,
    /// Cumulative buckets, a sum and a count.
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
            Kind::Histogram => "histogram",
        }
    }
}

/// Labels of one sample, in the order they are written.
type Labels = Vec<(&'static str, String)>;

/// One sample of a family.
struct Sample {
    /// Appended to the family's name (`_bucket`, `_sum`, `_count` of a histogram; else empty).
    suffix: &'static str,
    /// Its labels.
    labels: Labels,
    /// Its value.
    value: f64,
}

impl Sample {
    fn new(labels: Labels, value: f64) -> Self {
        Sample {
            suffix: "",
            labels,
            value,
        }
    }
}

/// How a family's samples are read.
enum Read {
    /// One sample without labels.
    Value(fn(&View) -> f64),
    /// One sample per value of one label: the label's name, then `(label value, value)`s.
    ByLabel(&'static str, fn(&View) -> Vec<(&'static str, f64)>),
    /// Samples of any other shape (per region, per device, several labels, a histogram).
    Samples(fn(&View) -> Vec<Sample>),
}

/// One row of the table: a metric family.
struct Family {
    /// The metric name.
    name: &'static str,
    /// Its `# TYPE`.
    kind: Kind,
    /// Its `# HELP`.
    help: &'static str,
    /// Whether the family is written at all (`HELP`/`TYPE` included).
    shown: fn(&View) -> bool,
    /// Its samples.
    read: Read,
}

/// A gauge, always shown.
const fn gauge(name: &'static str, help: &'static str, read: Read) -> Family {
    Family {
        name,
        kind: Kind::Gauge,
        help,
        shown: always,
        read,
    }
}

/// A counter, always shown.
const fn counter(name: &'static str, help: &'static str, read: Read) -> Family {
    Family {
        kind: Kind::Counter,
        ..gauge(name, help, read)
    }
}

/// A histogram, always shown.
const fn histogram(name: &'static str, help: &'static str, read: Read) -> Family {
    Family {
        kind: Kind::Histogram,
        ..gauge(name, help, read)
    }
}

impl Family {
    /// The family, written only when `shown` says so.
    const fn only_if(self, shown: fn(&View) -> bool) -> Family {
        Family { shown, ..self }
    }
}

/// Shown in every config.
fn always(_: &View) -> bool {
    true
}

/// Shown when the gateway serves an inverter as RTU slave (an `rtu:` section).
fn with_rtu_slave(v: &View) -> bool {
    v.config.rtu_slave
}

/// Shown when the RTU poller has named devices (`devices:`).
fn with_devices(v: &View) -> bool {
    !v.devices.is_empty()
}

use Read::{ByLabel, Samples, Value};

/// Every metric family, in the order of the exposition.
const FAMILIES: &[Family] = &[
    gauge(
        "airbridge_build_info",
        "Version of the running gateway (value 1).",
        ByLabel("version", |_| vec![(env!("CARGO_PKG_VERSION"), 1.0)]),
    ),
    gauge(
        "airbridge_start_time_seconds",
        "Unix time the gateway started.",
        Value(start_time),
    ),
    gauge(
        "airbridge_ready",
        "1 once every region has been filled once (the RTU slave answers only then).",
        Value(|v| flag(v.snap.warm)),
    ),
    gauge(
        "airbridge_state",
        "1 for the gateway's state now (the status page's badge), 0 for the others.",
        ByLabel("state", state_flags),
    ),
    gauge(
        "airbridge_rtu_device_open",
        "1 while the RS485 device (rtu.device) is open, 0 while it cannot be opened.",
        Samples(rtu_device_open),
    )
    .only_if(with_rtu_slave),
    counter(
        "airbridge_rtu_device_failures_total",
        "Times the RS485 device could not be opened, or failed or vanished while open.",
        Value(|v| count(&v.h.rtu.device_failures)),
    )
    .only_if(with_rtu_slave),
    gauge(
        "airbridge_region_age_seconds",
        "Time since the region was last written completely; absent until it was filled once.",
        Samples(region_ages),
    ),
    gauge(
        "airbridge_region_max_age_seconds",
        "The region's max_age: older data is stale (static regions never age and are left out).",
        Samples(region_max_ages),
    ),
    gauge(
        "airbridge_region_stale",
        "1 while the region is older than its max_age or was never filled.",
        Samples(region_stale),
    ),
    // The RTU poller's per-device families (`devices:` only; none in the one-device form).
    gauge(
        "airbridge_rtu_poll_device_online",
        "1 while the device on the RTU bus answers; 0 while it is offline (only probed).",
        Samples(device_online),
    )
    .only_if(with_devices),
    counter(
        "airbridge_rtu_poll_regions_total",
        "Region polls of the device by result (ok = read completely and committed).",
        Samples(|v| {
            per_device(v, |s| {
                [("ok", &s.regions_ok), ("failed", &s.regions_failed)]
            })
        }),
    )
    .only_if(with_devices),
    counter(
        "airbridge_rtu_poll_requests_total",
        "Requests to the device by result (timeout = no reply within rtu_poll.timeout).",
        Samples(|v| per_device(v, |s| [("sent", &s.requests), ("timeout", &s.timeouts)])),
    )
    .only_if(with_devices),
    counter(
        "airbridge_rtu_poll_writes_total",
        "Writes to the device by result (failed: refused, unanswered or refused while offline).",
        Samples(|v| per_device(v, |s| [("ok", &s.writes_ok), ("failed", &s.writes_failed)])),
    )
    .only_if(with_devices),
    counter(
        "airbridge_rtu_poll_offline_total",
        "Times the device went offline, and probes sent while it was.",
        Samples(|v| {
            per_device(v, |s| {
                [("went_offline", &s.went_offline), ("probe", &s.probes)]
            })
        }),
    )
    .only_if(with_devices),
    // Push.
    counter(
        "airbridge_push_writes_total",
        concat!(
            "Push writes (FC06/FC16) by result: ok = applied, refused = exception 02 ",
            "(outside the push regions).",
        ),
        ByLabel("result", |v| {
            let p = &v.h.push;
            vec![
                ("ok", count(&p.writes_ok)),
                ("refused", count(&p.writes_refused)),
            ]
        }),
    ),
    counter(
        "airbridge_push_reads_total",
        "Diagnostic reads (FC03/FC04) answered by the push server.",
        Value(|v| count(&v.h.push.reads)),
    ),
    counter(
        "airbridge_push_bad_requests_total",
        "Push requests with an unsupported function (exception 01) or count (exception 03).",
        Value(|v| count(&v.h.push.bad_requests)),
    ),
    counter(
        "airbridge_push_connections_total",
        "Push connections by what happened at accept.",
        ByLabel("result", |v| {
            let f = &v.h.push.front;
            vec![
                ("accepted", count(&f.accepted)),
                ("not_allowed", count(&f.refused_not_allowed)),
                ("limit", count(&f.refused_limit)),
            ]
        }),
    ),
    counter(
        "airbridge_push_idle_timeouts_total",
        "Push connections closed for idleness.",
        Value(|v| count(&v.h.push.front.idle_timeouts)),
    ),
    gauge(
        "airbridge_push_connections",
        "Push connections open now (upstream connection state of the push side).",
        Value(|v| v.h.push.front.open.load(Relaxed) as f64),
    ),
    // KSEM poll.
    gauge(
        "airbridge_poll_connected",
        "1 while the poller's connection to the KSEM's Modbus TCP slave is up.",
        Value(|v| flag(v.h.poll.connected.load(Relaxed))),
    ),
    counter(
        "airbridge_poll_connects_total",
        "Poller connection attempts by result.",
        ByLabel("result", |v| {
            let q = &v.h.poll;
            vec![
                ("ok", count(&q.connects)),
                ("failed", count(&q.connect_failures)),
            ]
        }),
    ),
    counter(
        "airbridge_poll_requests_total",
        concat!(
            "Region reads by the poller, by region and result (superseded = discarded, a ",
            "newer push landed).",
        ),
        Samples(poll_requests),
    ),
    counter(
        "airbridge_poll_fallback_total",
        "Region reads done as fallback for a push region whose pushes are missing.",
        Value(|v| count(&v.h.poll.fallback_polls)),
    ),
    // RTU slave.
    counter(
        "airbridge_rtu_requests_total",
        concat!(
            "RTU requests for our unit by function code and result (exceptions by name; ",
            "silent_* = no reply).",
        ),
        Samples(rtu_requests),
    ),
    counter(
        "airbridge_rtu_frames_dropped_total",
        concat!(
            "RTU frames not answered, by reason: crc, foreign_unit (other units' requests ",
            "and all responses), broadcast, partial (incomplete at silence), oversize.",
        ),
        ByLabel("reason", rtu_frames_dropped),
    ),
    counter(
        "airbridge_rtu_garbage_bytes_total",
        "Bytes discarded while hunting for a frame (line noise, wrong baud rate).",
        Value(|v| count(&v.h.rtu.garbage_bytes)),
    ),
    counter(
        "airbridge_rtu_echoes_total",
        "Own replies echoed back by the RS485 adapter (ignored).",
        Value(|v| count(&v.h.rtu.echoes)),
    ),
    counter(
        "airbridge_rtu_reply_bytes_total",
        "Bytes sent as RTU replies.",
        Value(|v| count(&v.h.rtu.tx_bytes)),
    ),
    histogram(
        "airbridge_rtu_reply_latency_seconds",
        concat!(
            "Request's last byte received to reply written, per RTU reply (includes the ",
            "configured turnaround).",
        ),
        Samples(reply_latency),
    ),
    // Journal.
    counter(
        "airbridge_journal_entries_total",
        "Frames recorded in the frame journal.",
        Value(|v| v.h.journal.recorded() as f64),
    ),
    counter(
        "airbridge_journal_dropped_total",
        "Journal entries dropped because their slot was being written concurrently.",
        Value(|v| v.h.journal.dropped() as f64),
    ),
    // MQTT (all 0 without an `mqtt:` section).
    gauge(
        "airbridge_mqtt_connected",
        "1 while connected to the MQTT broker.",
        Value(|v| count(&v.h.mqtt.connected)),
    ),
    counter(
        "airbridge_mqtt_connects_total",
        "MQTT connection attempts by result (failed includes dropped connections).",
        ByLabel("result", |v| {
            let m = &v.h.mqtt;
            vec![("ok", count(&m.connects)), ("failed", count(&m.failures))]
        }),
    ),
    counter(
        "airbridge_mqtt_published_total",
        "MQTT messages handed to the client (state, availability, discovery, results).",
        Value(|v| count(&v.h.mqtt.published)),
    ),
    counter(
        "airbridge_mqtt_dropped_total",
        concat!(
            "MQTT state messages dropped because the client's queue was full (slow broker; ",
            "the next tick sends the newest).",
        ),
        Value(|v| count(&v.h.mqtt.dropped)),
    ),
    counter(
        "airbridge_mqtt_commands_total",
        "MQTT commands received (any outcome).",
        Value(|v| count(&v.h.mqtt.commands)),
    ),
];

/// `airbridge_start_time_seconds`: whole seconds.
fn start_time(v: &View) -> f64 {
    let start = v.ctx.started.duration_since(UNIX_EPOCH).unwrap_or_default();
    start.as_secs_f64().floor()
}

/// `airbridge_state`: 1 for the state [`super::state::assess`] decides, 0 for the others.
fn state_flags(v: &View) -> Vec<(&'static str, f64)> {
    let state = super::state::assess(v.h, v.now);
    let ids = super::state::STATE_IDS.iter();
    ids.map(|&id| (id, flag(state.id() == id))).collect()
}

/// `airbridge_rtu_device_open`: open unless every open so far failed.
fn rtu_device_open(v: &View) -> Vec<Sample> {
    let opens = v.h.rtu.device_opens.load(Relaxed);
    let failures = v.h.rtu.device_failures.load(Relaxed);
    let labels = vec![("device", v.config.rtu.device.clone())];
    vec![Sample::new(labels, flag(failures == 0 || opens > failures))]
}

/// `airbridge_rtu_frames_dropped_total`: by reason.
fn rtu_frames_dropped(v: &View) -> Vec<(&'static str, f64)> {
    let r = &v.h.rtu;
    vec![
        ("crc", count(&r.crc_errors)),
        ("foreign_unit", count(&r.foreign)),
        ("broadcast", count(&r.broadcast)),
        ("partial", count(&r.partial_discarded)),
        ("oversize", count(&r.oversize)),
    ]
}

/// A region's labels: with `devices:` by its device and its name there
/// (`region="live",device="battery1"`); in the one-device form by its name.
fn region_labels(devices: &[DeviceStats], spec: &RegionSpec) -> Labels {
    match devices.get(spec.device).and_then(|d| {
        let short = spec.name.strip_prefix(d.name.as_str())?.strip_prefix('.')?;
        Some((short.to_string(), d.name.clone()))
    }) {
        Some((short, dev)) => vec![("region", short), ("device", dev)],
        None => vec![("region", spec.name.clone())],
    }
}

/// `airbridge_region_age_seconds`: regions filled at least once, with their source.
fn region_ages(v: &View) -> Vec<Sample> {
    let image = &v.h.image;
    let mut out = Vec::new();
    for (i, spec) in image.specs().iter().enumerate() {
        if let Some(age) = image.age(&v.snap, i, v.now) {
            let mut labels = region_labels(v.devices, spec);
            labels.push(("source", v.ctx.source_of(&spec.name)));
            out.push(Sample::new(labels, age.as_secs_f64()));
        }
    }
    out
}

/// `airbridge_region_max_age_seconds`: the rule in force (hot reload), not the one at start.
fn region_max_ages(v: &View) -> Vec<Sample> {
    let image = &v.h.image;
    let mut out = Vec::new();
    for (i, spec) in image.specs().iter().enumerate() {
        let max_age = image.freshness(i).map_or(spec.max_age, |f| f.max_age);
        if max_age != Duration::MAX {
            out.push(Sample::new(
                region_labels(v.devices, spec),
                max_age.as_secs_f64(),
            ));
        }
    }
    out
}

/// `airbridge_region_stale`: every region.
fn region_stale(v: &View) -> Vec<Sample> {
    let image = &v.h.image;
    image
        .specs()
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let stale = image.is_stale(&v.snap, i, v.now);
            Sample::new(region_labels(v.devices, spec), flag(stale))
        })
        .collect()
}

/// `airbridge_rtu_poll_device_online`: each device of the RTU poller.
fn device_online(v: &View) -> Vec<Sample> {
    v.devices
        .iter()
        .map(|d| {
            let online = d.stats.online.load(Relaxed);
            Sample::new(vec![("device", d.name.clone())], flag(online))
        })
        .collect()
}

/// One counter family of the RTU poller's devices: two results of each device.
fn per_device(
    v: &View,
    results: fn(&RtuPollStats) -> [(&'static str, &AtomicU64); 2],
) -> Vec<Sample> {
    let mut out = Vec::new();
    for d in v.devices {
        for (result, n) in results(&d.stats) {
            let labels = vec![("device", d.name.clone()), ("result", result.to_string())];
            out.push(Sample::new(labels, count(n)));
        }
    }
    out
}

/// `airbridge_poll_requests_total`: the poller's reads by region and result.
fn poll_requests(v: &View) -> Vec<Sample> {
    let mut out = Vec::new();
    if let Ok(m) = v.h.poll.by_region.lock() {
        for (region, c) in m.iter() {
            for (result, n) in c.by_result() {
                let labels = vec![("region", region.clone()), ("result", result.to_string())];
                out.push(Sample::new(labels, n as f64));
            }
        }
    }
    out
}

/// `airbridge_rtu_requests_total`: every function seen, and always 3 and 4, in order.
fn rtu_requests(v: &View) -> Vec<Sample> {
    let by_function = &v.h.rtu.requests_by_function;
    let mut fcs = by_function.seen();
    for fc in [3u8, 4] {
        if !fcs.contains(&fc) {
            fcs.push(fc);
        }
    }
    fcs.sort_unstable();
    let mut out = Vec::new();
    for fc in fcs {
        for (result, n) in RESULTS.iter().zip(by_function.of(fc)) {
            let labels = vec![("function", fc.to_string()), ("result", result.to_string())];
            out.push(Sample::new(labels, n as f64));
        }
    }
    out
}

/// `airbridge_rtu_reply_latency_seconds`: the buckets, `+Inf`, the sum and the count.
fn reply_latency(v: &View) -> Vec<Sample> {
    let lat = v.h.rtu.latency.snapshot();
    let bucket = |le: String, n: u64| Sample {
        suffix: "_bucket",
        labels: vec![("le", le)],
        value: n as f64,
    };
    let mut out: Vec<Sample> = lat
        .buckets
        .iter()
        .map(|&(le, n)| bucket(number(le), n))
        .collect();
    out.push(bucket("+Inf".into(), lat.count));
    out.push(Sample {
        suffix: "_sum",
        labels: Vec::new(),
        value: lat.sum_seconds,
    });
    out.push(Sample {
        suffix: "_count",
        labels: Vec::new(),
        value: lat.count as f64,
    });
    out
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

/// The exposition text being written.
struct Exposition {
    /// The text so far.
    s: String,
}

impl Exposition {
    /// A family's `# HELP` and `# TYPE` lines, then its samples.
    fn family(&mut self, f: &Family, v: &View) {
        let name = f.name;
        let _ = writeln!(self.s, "# HELP {name} {}", f.help);
        let _ = writeln!(self.s, "# TYPE {name} {}", f.kind.as_str());
        match &f.read {
            Read::Value(read) => self.sample(name, "", &[], read(v)),
            Read::ByLabel(label, read) => {
                for (value, n) in read(v) {
                    self.sample(name, "", &[(label, value.to_string())], n);
                }
            }
            Read::Samples(read) => {
                for s in read(v) {
                    self.sample(name, s.suffix, &s.labels, s.value);
                }
            }
        }
    }

    /// `name{labels} value`.
    fn sample(&mut self, name: &str, suffix: &str, labels: &[(&str, String)], value: f64) {
        self.s.push_str(name);
        self.s.push_str(suffix);
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
}

/// A counter's value as a sample value.
fn count(c: &AtomicU64) -> f64 {
    c.load(Relaxed) as f64
}

/// A sample value as written: `+Inf`, `-Inf`, `NaN` or the shortest decimal.
fn number(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else if v.is_nan() {
        "NaN".to_string()
    } else {
        format!("{v}")
    }
}

/// A yes/no as a gauge value: 1 or 0.
fn flag(v: bool) -> f64 {
    if v {
        1.0
    } else {
        0.0
    }
}

/// Render every metric.
pub fn render(ctx: &StatusContext) -> String {
    let h = &ctx.handles;
    let view = View {
        ctx,
        h,
        config: h.live.current(),
        snap: h.image.load_full(),
        now: Instant::now(),
        devices: h.rtu_poll.devices(),
    };
    let mut out = Exposition {
        s: String::with_capacity(8 * 1024),
    };
    for f in FAMILIES.iter().filter(|f| (f.shown)(&view)) {
        out.family(f, &view);
    }
    out.s
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

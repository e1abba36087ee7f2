//! Configuration: the YAML schema, its defaults and its validation.
//!
//! Owns the translation from a file to a [`Config`] the rest of the gateway can trust:
//! every rule that can be checked before start-up is checked here (unknown keys, overlapping
//! regions, sources without their section, impossible serial settings), with the file, line
//! and key in the message. It touches nothing but the text it is given.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use serde_saphyr::Spanned;

/// Largest register count of one Modbus read request.
pub const MAX_READ: u16 = 125;

/// A configuration that is known to be usable.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub rtu: RtuConfig,
    pub push: Option<PushConfig>,
    pub poll: Option<PollConfig>,
    pub regions: Vec<Region>,
    /// The register profile that gives the words meaning (status page, checks, writes).
    pub profile: Option<ProfileRef>,
    /// The status HTTP endpoint (`/`, `/status`, `/metrics`, `/journal`); off when absent.
    pub status: Option<StatusConfig>,
}

/// The status HTTP endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusConfig {
    pub listen: SocketAddr,
}

/// Where the config names its register profile.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileRef {
    /// As written by [`parse`]; resolved against the config file's directory by [`load`].
    pub path: PathBuf,
    /// The line of the `profile:` key, for messages.
    pub line: u64,
}

/// Serial line parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    None,
    Even,
    Odd,
}

/// The RTU slave the inverter polls.
#[derive(Debug, Clone, PartialEq)]
pub struct RtuConfig {
    pub device: String,
    pub baud: u32,
    pub data_bits: u8,
    pub parity: Parity,
    pub stop_bits: u8,
    pub unit_id: u8,
    /// Minimum silence between the request's last byte and the reply's first.
    pub turnaround: Duration,
    /// Silence after which a partial frame is discarded.
    pub frame_timeout: Duration,
    /// Also answer FC04 from the same image.
    pub input_registers: bool,
}

impl RtuConfig {
    /// Bits on the wire per character: start + data + parity + stop.
    pub fn bits_per_char(&self) -> u32 {
        1 + u32::from(self.data_bits)
            + u32::from(self.parity != Parity::None)
            + u32::from(self.stop_bits)
    }
}

/// t3.5 for a baud rate, as the Modbus spec fixes it: 1750 µs above 19200 baud.
pub fn t35(baud: u32, bits_per_char: u32) -> Duration {
    if baud > 19_200 || baud == 0 {
        Duration::from_micros(1750)
    } else {
        Duration::from_nanos(3_500_000_000u64 * u64::from(bits_per_char) / u64::from(baud))
    }
}

/// The Modbus TCP server the KSEM pushes to.
#[derive(Debug, Clone, PartialEq)]
pub struct PushConfig {
    pub listen: SocketAddr,
    /// Peers allowed to connect; empty = anyone.
    pub allow_from: Vec<IpNet>,
    pub max_connections: usize,
    /// A connection with no request for this long is closed.
    pub idle_timeout: Duration,
}

impl PushConfig {
    /// True when `ip` may connect.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.allow_from.is_empty() || self.allow_from.iter().any(|n| n.contains(&ip))
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, seen on dual-stack listeners) as IPv4.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The KSEM's Modbus TCP slave, polled for slow data.
#[derive(Debug, Clone, PartialEq)]
pub struct PollConfig {
    /// `host:port`; a name is resolved at every connect.
    pub host: String,
    pub unit_id: u8,
    /// Per-request and connect timeout.
    pub timeout: Duration,
}

/// What a read of a stale region gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStale {
    /// Answer with the stale data.
    Serve,
    /// Exception 04 (server device failure).
    Exception,
    /// No reply at all, as a disconnected meter.
    Silence,
}

impl OnStale {
    pub fn as_str(self) -> &'static str {
        match self {
            OnStale::Serve => "serve",
            OnStale::Exception => "exception",
            OnStale::Silence => "silence",
        }
    }
}

/// Where a region's data comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sources {
    pub push: bool,
    pub poll: bool,
    pub fixed: bool,
}

impl fmt::Display for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.push, self.poll, self.fixed) {
            (true, true, _) => f.write_str("[push, poll]"),
            (true, false, _) => f.write_str("push"),
            (false, true, _) => f.write_str("poll"),
            _ => f.write_str("static"),
        }
    }
}

/// One block of consecutive registers served from the image.
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    pub name: String,
    pub start: u16,
    pub count: u16,
    pub source: Sources,
    /// Poll interval (poll sources).
    pub every: Option<Duration>,
    pub max_age: Duration,
    pub on_stale: OnStale,
    /// Poll a push region at this interval while pushes have stopped.
    pub fallback_poll: Option<Duration>,
    /// Fixed words of a static region (address → value); other words read 0.
    pub values: BTreeMap<u16, u16>,
}

impl Region {
    /// One past the last address.
    pub fn end(&self) -> u32 {
        u32::from(self.start) + u32::from(self.count)
    }
    pub fn contains(&self, address: u16) -> bool {
        address >= self.start && u32::from(address) < self.end()
    }
}

/// A config error, with where it is and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}:{line}: {key}: {message}")]
    Invalid {
        path: String,
        line: u64,
        key: String,
        message: String,
    },
}

/// A usable config and what the user should know about it.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

/// Read and validate a config file.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let origin = path.display().to_string();
    let mut loaded = parse(&text, &origin)?;
    if let Some(p) = &mut loaded.config.profile {
        if p.path.is_relative() {
            if let Some(dir) = path.parent() {
                p.path = dir.join(&p.path);
            }
        }
        // A profile that does not load makes the config unusable: say so now, not later.
        crate::profile::load(&p.path).map_err(|e| ConfigError::Invalid {
            path: origin.clone(),
            line: p.line,
            key: "profile".into(),
            message: e.to_string(),
        })?;
    }
    Ok(loaded)
}

/// Validate a config given as text; `origin` names it in messages.
pub fn parse(text: &str, origin: &str) -> Result<Loaded, ConfigError> {
    // Name the file in the snippet header (`--> gateway.yaml:8:5`), not `<input>`.
    let raw: RawConfig = serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse {
        path: origin.to_string(),
        message: e.render_with_options(serde_saphyr::render_options! {
            source_name: Some(origin),
        }),
    })?;
    let mut v = Validator {
        origin,
        warnings: Vec::new(),
    };
    let config = v.config(raw)?;
    Ok(Loaded {
        config,
        warnings: v.warnings,
    })
}

// ---------------------------------------------------------------------------------------
// The file as written.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    rtu: Spanned<RawRtu>,
    #[serde(default)]
    push: Option<Spanned<RawPush>>,
    #[serde(default)]
    poll: Option<Spanned<RawPoll>>,
    regions: Spanned<Vec<Spanned<RawRegion>>>,
    #[serde(default)]
    profile: Option<Spanned<String>>,
    #[serde(default)]
    status: Option<Spanned<RawStatus>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatus {
    listen: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRtu {
    device: Spanned<String>,
    #[serde(default = "default_baud")]
    baud: Spanned<u32>,
    #[serde(default = "default_data_bits")]
    data_bits: Spanned<u8>,
    #[serde(default = "default_parity")]
    parity: Parity,
    #[serde(default)]
    stop_bits: Option<Spanned<u8>>,
    #[serde(default = "default_unit")]
    unit_id: Spanned<u8>,
    #[serde(default)]
    turnaround: Option<Spanned<DurationText>>,
    #[serde(default)]
    frame_timeout: Option<Spanned<DurationText>>,
    #[serde(default = "default_true")]
    input_registers: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPush {
    listen: Spanned<String>,
    #[serde(default)]
    allow_from: Vec<Spanned<String>>,
    #[serde(default = "default_max_connections")]
    max_connections: Spanned<usize>,
    #[serde(default)]
    idle_timeout: Option<Spanned<DurationText>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPoll {
    host: Spanned<String>,
    #[serde(default = "default_unit")]
    unit_id: Spanned<u8>,
    #[serde(default)]
    timeout: Option<Spanned<DurationText>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegion {
    name: String,
    start: u16,
    count: Spanned<u16>,
    source: Spanned<SourceText>,
    #[serde(default)]
    every: Option<Spanned<DurationText>>,
    #[serde(default)]
    max_age: Option<Spanned<DurationText>>,
    #[serde(default)]
    on_stale: Option<OnStale>,
    #[serde(default)]
    fallback_poll: Option<Spanned<DurationText>>,
    #[serde(default)]
    values: Option<Spanned<BTreeMap<u16, u16>>>,
}

/// `push`, `poll`, `static`, or a list of them.
#[derive(Deserialize)]
#[serde(untagged)]
enum SourceText {
    One(String),
    Many(Vec<String>),
}

/// A duration as written: `1750us`, `200ms`, `2s`, `5m`, `1h`, or `0`.
#[derive(Deserialize)]
#[serde(untagged)]
enum DurationText {
    Number(i64),
    Float(f64),
    Text(String),
}

fn default_baud() -> Spanned<u32> {
    unspanned(38_400)
}
fn default_data_bits() -> Spanned<u8> {
    unspanned(8)
}
fn default_parity() -> Parity {
    Parity::None
}
fn default_unit() -> Spanned<u8> {
    unspanned(1)
}
fn default_true() -> bool {
    true
}
fn default_max_connections() -> Spanned<usize> {
    unspanned(4)
}
fn unspanned<T>(value: T) -> Spanned<T> {
    Spanned::new(
        value,
        serde_saphyr::Location::UNKNOWN,
        serde_saphyr::Location::UNKNOWN,
    )
}

/// Parse a duration as written in the config.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("`{t}` is not a duration ({e}); write e.g. 1750us, 200ms, 2s, 5m, 1h"))
}

// ---------------------------------------------------------------------------------------
// Validation.

struct Validator<'a> {
    origin: &'a str,
    warnings: Vec<String>,
}

impl Validator<'_> {
    fn err(&self, line: u64, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.origin.to_string(),
            line,
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn warn(&mut self, line: u64, key: &str, message: impl fmt::Display) {
        self.warnings
            .push(format!("{}:{line}: {key}: {message}", self.origin));
    }

    fn duration(&self, d: &Spanned<DurationText>, key: &str) -> Result<Duration, ConfigError> {
        match &d.value {
            DurationText::Number(0) => Ok(Duration::ZERO),
            DurationText::Number(n) if *n < 0 => {
                Err(self.err(line(d), key, format!("`{n}` is negative")))
            }
            DurationText::Number(n) => Err(self.err(
                line(d),
                key,
                format!("`{n}` has no unit; write e.g. {n}ms or {n}s"),
            )),
            DurationText::Float(f) => Err(self.err(
                line(d),
                key,
                format!("`{f}` is not a duration; write whole numbers with a unit, e.g. 1500ms"),
            )),
            DurationText::Text(t) => parse_duration(t).map_err(|m| self.err(line(d), key, m)),
        }
    }

    fn positive(&self, d: &Spanned<DurationText>, key: &str) -> Result<Duration, ConfigError> {
        let v = self.duration(d, key)?;
        if v.is_zero() {
            return Err(self.err(line(d), key, "must be greater than 0"));
        }
        Ok(v)
    }

    fn config(&mut self, raw: RawConfig) -> Result<Config, ConfigError> {
        let rtu = self.rtu(&raw.rtu)?;
        let push = raw.push.as_ref().map(|p| self.push(p)).transpose()?;
        let poll = raw.poll.as_ref().map(|p| self.poll(p)).transpose()?;
        let regions = self.regions(&raw.regions, push.is_some(), poll.is_some())?;
        if let Some(p) = &raw.push {
            if !regions.iter().any(|r| r.source.push) {
                self.warn(
                    line(p),
                    "push",
                    "no region takes pushes; every push write will get exception 02",
                );
            }
        }
        if let Some(p) = &raw.poll {
            if !regions
                .iter()
                .any(|r| r.source.poll || r.fallback_poll.is_some())
            {
                self.warn(
                    line(p),
                    "poll",
                    "no region is polled; the poller stays idle",
                );
            }
        }
        let profile = match &raw.profile {
            Some(p) if p.value.trim().is_empty() => {
                return Err(self.err(
                    line(p),
                    "profile",
                    "must name a profile file, e.g. profiles/ksem-g2.yaml",
                ))
            }
            Some(p) => Some(ProfileRef {
                path: PathBuf::from(&p.value),
                line: line(p),
            }),
            None => None,
        };
        let status = raw
            .status
            .as_ref()
            .map(|s| self.status(s, push.as_ref()))
            .transpose()?;
        Ok(Config {
            rtu,
            push,
            poll,
            regions,
            profile,
            status,
        })
    }

    fn status(
        &mut self,
        raw: &Spanned<RawStatus>,
        push: Option<&PushConfig>,
    ) -> Result<StatusConfig, ConfigError> {
        let l = &raw.value.listen;
        let listen: SocketAddr = l.value.trim().parse().map_err(|_| {
            self.err(
                line(l),
                "status.listen",
                format!("`{}` is not ADDRESS:PORT, e.g. 127.0.0.1:8080", l.value),
            )
        })?;
        if let Some(p) = push {
            if p.listen.port() == listen.port()
                && listen.port() != 0
                && (p.listen.ip() == listen.ip()
                    || p.listen.ip().is_unspecified()
                    || listen.ip().is_unspecified())
            {
                return Err(self.err(
                    line(l),
                    "status.listen",
                    format!("{listen} collides with push.listen {}", p.listen),
                ));
            }
        }
        if !listen.ip().is_loopback() {
            self.warn(
                line(l),
                "status.listen",
                format_args!("{listen} is reachable from the network; the status page and /metrics have no authentication (read-only)"),
            );
        }
        Ok(StatusConfig { listen })
    }

    fn rtu(&mut self, raw: &Spanned<RawRtu>) -> Result<RtuConfig, ConfigError> {
        let r = &raw.value;
        if r.device.value.trim().is_empty() {
            return Err(self.err(
                line(&r.device),
                "rtu.device",
                "must name a serial device, e.g. /dev/ttyUSB0",
            ));
        }
        if !(300..=4_000_000).contains(&r.baud.value) {
            return Err(self.err(
                line(&r.baud),
                "rtu.baud",
                format!("{} is not a usable baud rate (300..4000000)", r.baud.value),
            ));
        }
        if r.data_bits.value != 8 {
            return Err(self.err(
                line(&r.data_bits),
                "rtu.data_bits",
                "Modbus RTU uses 8 data bits",
            ));
        }
        // Modbus RTU: 2 stop bits without parity, 1 with; the KSEM uses 8N2.
        let stop_bits = match &r.stop_bits {
            Some(s) if s.value == 1 || s.value == 2 => s.value,
            Some(s) => return Err(self.err(line(s), "rtu.stop_bits", "must be 1 or 2")),
            None if r.parity == Parity::None => 2,
            None => 1,
        };
        let unit_id = r.unit_id.value;
        if !(1..=247).contains(&unit_id) {
            return Err(self.err(
                line(&r.unit_id),
                "rtu.unit_id",
                "must be 1..247 (0 is broadcast, 248..255 are reserved)",
            ));
        }
        let mut cfg = RtuConfig {
            device: r.device.value.clone(),
            baud: r.baud.value,
            data_bits: r.data_bits.value,
            parity: r.parity,
            stop_bits,
            unit_id,
            turnaround: Duration::ZERO,
            frame_timeout: Duration::ZERO,
            input_registers: r.input_registers,
        };
        let t35 = t35(cfg.baud, cfg.bits_per_char());
        cfg.turnaround = match &r.turnaround {
            Some(t) => {
                let v = self.duration(t, "rtu.turnaround")?;
                if v > Duration::from_secs(1) {
                    return Err(self.err(
                        line(t),
                        "rtu.turnaround",
                        "more than 1s; the inverter would time out",
                    ));
                }
                if v < t35 {
                    self.warn(line(t), "rtu.turnaround", format_args!("{v:?} is shorter than t3.5 ({t35:?}) for {} baud; a strict master may not see the reply", cfg.baud));
                }
                v
            }
            None => t35,
        };
        // 20 ms, but never shorter than t3.5 (32 ms at 1200 baud).
        cfg.frame_timeout = Duration::from_millis(20).max(t35);
        if let Some(t) = &r.frame_timeout {
            let v = self.positive(t, "rtu.frame_timeout")?;
            if v > Duration::from_secs(1) {
                return Err(self.err(
                    line(t),
                    "rtu.frame_timeout",
                    "more than 1s; a partial frame would block requests that long",
                ));
            }
            if v < t35 {
                self.warn(line(t), "rtu.frame_timeout", format_args!("{v:?} is shorter than t3.5 ({t35:?}); USB adapters deliver bytes in bursts and requests may be dropped"));
            }
            cfg.frame_timeout = v;
        }
        Ok(cfg)
    }

    fn push(&mut self, raw: &Spanned<RawPush>) -> Result<PushConfig, ConfigError> {
        let p = &raw.value;
        let listen: SocketAddr = p.listen.value.parse().map_err(|_| {
            self.err(
                line(&p.listen),
                "push.listen",
                format!(
                    "`{}` is not ADDRESS:PORT, e.g. 0.0.0.0:5020",
                    p.listen.value
                ),
            )
        })?;
        let mut allow_from = Vec::new();
        for a in &p.allow_from {
            let s = a.value.trim();
            let net = s
                .parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    self.err(
                        line(a),
                        "push.allow_from",
                        format!("`{s}` is neither an IP address nor a CIDR like 192.168.178.0/24"),
                    )
                })?;
            // `::ffff:a.b.c.d` means the IPv4 host; peers are compared in that form too.
            let net = match net {
                IpNet::V6(v6) if v6.prefix_len() == 128 => {
                    IpNet::from(canonical_ip(IpAddr::V6(v6.addr())))
                }
                other => other,
            };
            allow_from.push(net);
        }
        if allow_from.is_empty() {
            self.warn(line(raw), "push.allow_from", "empty: any host on the network may write the registers the inverter is served; list the KSEM's address");
        }
        if p.max_connections.value == 0 || p.max_connections.value > 1024 {
            return Err(self.err(
                line(&p.max_connections),
                "push.max_connections",
                "must be 1..1024",
            ));
        }
        let idle_timeout = match &p.idle_timeout {
            Some(t) => self.positive(t, "push.idle_timeout")?,
            None => Duration::from_secs(60),
        };
        Ok(PushConfig {
            listen,
            allow_from,
            max_connections: p.max_connections.value,
            idle_timeout,
        })
    }

    fn poll(&mut self, raw: &Spanned<RawPoll>) -> Result<PollConfig, ConfigError> {
        let p = &raw.value;
        let host = p.host.value.trim();
        // An IPv6 host must be bracketed (`[fe80::1]:502`); otherwise a bare `fe80::1` would
        // split into host `fe80:` and port 1.
        let port_ok = host.rsplit_once(':').is_some_and(|(h, port)| {
            let h_ok = if h.contains(':') {
                h.len() > 2 && h.starts_with('[') && h.ends_with(']')
            } else {
                !h.is_empty()
            };
            h_ok && port.parse::<u16>().is_ok_and(|n| n > 0)
        });
        if !port_ok {
            return Err(self.err(
                line(&p.host),
                "poll.host",
                format!("`{host}` is not HOST:PORT, e.g. 192.168.178.100:502 or [fd00::1]:502"),
            ));
        }
        let timeout = match &p.timeout {
            Some(t) => self.positive(t, "poll.timeout")?,
            None => Duration::from_secs(2),
        };
        Ok(PollConfig {
            host: host.to_string(),
            unit_id: p.unit_id.value,
            timeout,
        })
    }

    fn sources(&self, s: &Spanned<SourceText>, key: &str) -> Result<Sources, ConfigError> {
        let names: Vec<&str> = match &s.value {
            SourceText::One(one) => vec![one.as_str()],
            SourceText::Many(many) => many.iter().map(String::as_str).collect(),
        };
        let mut out = Sources::default();
        for (i, n) in names.iter().enumerate() {
            if names[..i].contains(n) {
                return Err(self.err(line(s), key, format!("`{n}` is listed twice")));
            }
            match n.trim() {
                "push" => out.push = true,
                "poll" => out.poll = true,
                "static" => out.fixed = true,
                other => {
                    return Err(self.err(
                        line(s),
                        key,
                        format!("unknown source `{other}`; use push, poll, static or [push, poll]"),
                    ))
                }
            }
        }
        if names.is_empty() {
            return Err(self.err(
                line(s),
                key,
                "empty; use push, poll, static or [push, poll]",
            ));
        }
        if out.fixed && (out.push || out.poll) {
            return Err(self.err(line(s), key, "static cannot be combined with push or poll"));
        }
        Ok(out)
    }

    fn regions(
        &mut self,
        raw: &Spanned<Vec<Spanned<RawRegion>>>,
        have_push: bool,
        have_poll: bool,
    ) -> Result<Vec<Region>, ConfigError> {
        if raw.value.is_empty() {
            return Err(self.err(line(raw), "regions", "at least one region is needed"));
        }
        let mut out: Vec<(Region, u64)> = Vec::new();
        for (i, sr) in raw.value.iter().enumerate() {
            let r = &sr.value;
            let l = line(sr);
            let key = |k: &str| format!("regions[{i}] ({}).{k}", r.name);
            if r.name.trim().is_empty() {
                return Err(self.err(l, &format!("regions[{i}].name"), "must not be empty"));
            }
            if let Some((other, _)) = out.iter().find(|(o, _)| o.name == r.name) {
                return Err(self.err(l, &key("name"), format!("`{}` is used twice", other.name)));
            }
            let count = r.count.value;
            if count == 0 {
                return Err(self.err(line(&r.count), &key("count"), "must be at least 1"));
            }
            if u32::from(r.start) + u32::from(count) > 65_536 {
                return Err(self.err(
                    line(&r.count),
                    &key("count"),
                    "region runs past register 65535",
                ));
            }
            let source = self.sources(&r.source, &key("source"))?;
            if source.push && !have_push {
                return Err(self.err(
                    line(&r.source),
                    &key("source"),
                    "takes pushes but there is no `push:` section",
                ));
            }
            if source.poll && !have_poll {
                return Err(self.err(
                    line(&r.source),
                    &key("source"),
                    "is polled but there is no `poll:` section",
                ));
            }
            let every = r
                .every
                .as_ref()
                .map(|e| self.positive(e, &key("every")))
                .transpose()?;
            if source.poll && every.is_none() {
                return Err(self.err(
                    l,
                    &key("every"),
                    "a polled region needs `every`, e.g. every: 10s",
                ));
            }
            if !source.poll {
                if let Some(e) = &r.every {
                    return Err(self.err(
                        line(e),
                        &key("every"),
                        "only polled regions have `every`; for a push region use fallback_poll",
                    ));
                }
            }
            let fallback_poll = r
                .fallback_poll
                .as_ref()
                .map(|e| self.positive(e, &key("fallback_poll")))
                .transpose()?;
            if let Some(f) = &r.fallback_poll {
                if !source.push || source.poll {
                    return Err(self.err(
                        line(f),
                        &key("fallback_poll"),
                        "only for regions whose source is push alone",
                    ));
                }
                if !have_poll {
                    return Err(self.err(
                        line(f),
                        &key("fallback_poll"),
                        "needs a `poll:` section to poll from",
                    ));
                }
            }
            let values = match (&r.values, source.fixed) {
                (Some(v), true) => {
                    for &a in v.value.keys() {
                        if a < r.start || u32::from(a) >= u32::from(r.start) + u32::from(count) {
                            return Err(self.err(
                                line(v),
                                &key("values"),
                                format!(
                                    "address {a} lies outside the region {}..{}",
                                    r.start,
                                    u32::from(r.start) + u32::from(count) - 1
                                ),
                            ));
                        }
                    }
                    v.value.clone()
                }
                (Some(v), false) => {
                    return Err(self.err(
                        line(v),
                        &key("values"),
                        "only static regions have `values`",
                    ))
                }
                (None, true) => {
                    return Err(self.err(
                        l,
                        &key("values"),
                        "a static region needs `values`, e.g. values: {8244: 200}",
                    ))
                }
                (None, false) => BTreeMap::new(),
            };
            // Defaults: push 2 s / silence; polled 3 × every / serve; static never ages.
            let (default_age, default_stale) = if source.poll {
                (
                    every.unwrap_or(Duration::from_secs(1)).saturating_mul(3),
                    OnStale::Serve,
                )
            } else if source.push {
                (Duration::from_secs(2), OnStale::Silence)
            } else {
                (Duration::MAX, OnStale::Serve)
            };
            let max_age = match &r.max_age {
                Some(m) => {
                    let v = self.positive(m, &key("max_age"))?;
                    if let Some(e) = every {
                        if v < e {
                            self.warn(line(m), &key("max_age"), format_args!("{v:?} is shorter than the poll interval {e:?}; the region will be stale between polls"));
                        }
                    }
                    if source.fixed {
                        self.warn(
                            line(m),
                            &key("max_age"),
                            "a static region never ages; max_age is ignored",
                        );
                        Duration::MAX
                    } else {
                        v
                    }
                }
                None => default_age,
            };
            if let Some(f) = fallback_poll {
                if f > max_age {
                    self.warn(l, &key("fallback_poll"), format_args!("{f:?} is longer than max_age {max_age:?}; the fallback cannot keep the region fresh"));
                }
            }
            let on_stale = r.on_stale.unwrap_or(default_stale);
            if source.push && !source.poll && on_stale == OnStale::Serve {
                self.warn(
                    l,
                    &key("on_stale"),
                    "serve: a control loop may be fed old numbers when the KSEM stops pushing",
                );
            }
            let region = Region {
                name: r.name.clone(),
                start: r.start,
                count,
                source,
                every,
                max_age,
                on_stale,
                fallback_poll,
                values,
            };
            if let Some((o, ol)) = out.iter().find(|(o, _)| {
                u32::from(o.start) < region.end() && u32::from(region.start) < o.end()
            }) {
                return Err(self.err(
                    l,
                    &key("start"),
                    format!(
                        "{}..{} overlaps region `{}` ({}..{}, line {ol})",
                        region.start,
                        region.end() - 1,
                        o.name,
                        o.start,
                        o.end() - 1
                    ),
                ));
            }
            out.push((region, l));
        }
        let mut regions: Vec<Region> = out.into_iter().map(|(r, _)| r).collect();
        regions.sort_by_key(|r| r.start);
        Ok(regions)
    }
}

fn line<T>(s: &Spanned<T>) -> u64 {
    s.referenced.line()
}

impl Config {
    /// A human summary of the effective settings, as `airbridge check` prints it.
    pub fn describe(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let r = &self.rtu;
        let parity = match r.parity {
            Parity::None => 'N',
            Parity::Even => 'E',
            Parity::Odd => 'O',
        };
        let _ = writeln!(
            s,
            "rtu: {} {} {}{}{} unit {} turnaround {:?} frame_timeout {:?} fc04 {}",
            r.device,
            r.baud,
            r.data_bits,
            parity,
            r.stop_bits,
            r.unit_id,
            r.turnaround,
            r.frame_timeout,
            if r.input_registers { "on" } else { "off" }
        );
        if let Some(p) = &self.push {
            let allow: Vec<String> = p.allow_from.iter().map(ToString::to_string).collect();
            let _ = writeln!(
                s,
                "push: listen {} allow_from [{}] max_connections {} idle_timeout {:?}",
                p.listen,
                allow.join(", "),
                p.max_connections,
                p.idle_timeout
            );
        }
        if let Some(p) = &self.poll {
            let _ = writeln!(
                s,
                "poll: {} unit {} timeout {:?}",
                p.host, p.unit_id, p.timeout
            );
        }
        if let Some(st) = &self.status {
            let _ = writeln!(s, "status: http://{}/", st.listen);
        }
        let _ = writeln!(s, "regions:");
        let _ = writeln!(
            s,
            "  {:<12} {:>11} {:>5}  {:<12} {:>8} {:>8}  {:<9} {:>8}",
            "name", "registers", "count", "source", "every", "max_age", "on_stale", "fallback"
        );
        for g in &self.regions {
            let dur = |d: Option<Duration>| {
                d.map_or("-".to_string(), |d| {
                    humantime::format_duration(d).to_string()
                })
            };
            let age = if g.max_age == Duration::MAX {
                "never".to_string()
            } else {
                dur(Some(g.max_age))
            };
            let _ = writeln!(
                s,
                "  {:<12} {:>5}..{:<5} {:>5}  {:<12} {:>8} {:>8}  {:<9} {:>8}",
                g.name,
                g.start,
                g.end() - 1,
                g.count,
                g.source.to_string(),
                dur(g.every),
                age,
                g.on_stale.as_str(),
                dur(g.fallback_poll)
            );
        }
        s
    }
}

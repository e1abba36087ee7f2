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

pub mod mqtt;
pub use mqtt::MqttConfig;

/// A configuration that is known to be usable.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub rtu: RtuConfig,
    pub push: Option<PushConfig>,
    pub poll: Option<PollConfig>,
    pub regions: Vec<Region>,
    /// The register profile that gives the words meaning (status page, checks, writes).
    pub profile: Option<ProfileRef>,
    /// The `rtu:` section is present: serve an inverter as RTU slave. Without it `rtu`
    /// holds placeholder defaults and no RTU slave runs (a KSTAR config: `rtu_poll` +
    /// `tcp_server` only).
    pub rtu_slave: bool,
    /// RTU master polling a device on its serial bus (KSTAR).
    pub rtu_poll: Option<RtuPollConfig>,
    /// Modbus TCP server for LAN clients.
    pub tcp_server: Option<TcpServerConfig>,
    /// Registers LAN clients may write (resolved against the profile by [`load`]).
    pub writable: Vec<WritableEntry>,
    /// Line of each region (by name), for messages of checks against the profile.
    pub region_lines: BTreeMap<String, u64>,
    /// Logging (`log:`).
    pub log: LogConfig,
    /// The status HTTP endpoint (`/`, `/status`, `/metrics`, `/journal`); off when absent.
    pub status: Option<StatusConfig>,
    /// Publishing to an MQTT broker (Home Assistant); off when absent.
    pub mqtt: Option<MqttConfig>,
}

/// The status HTTP endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusConfig {
    pub listen: SocketAddr,
}

/// `log:`: the level of the gateway's log; changes on SIGHUP. `RUST_LOG` wins if set.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug`, `trace`, or tracing directives
    /// (`info,airbridge::sources::ksem_poll=debug`).
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

/// `rtu.rs485:`: the kernel's RS485 mode (`TIOCSRS485`), for adapters whose driver switches
/// the transceiver's direction with RTS. Off unless configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rs485Config {
    pub enabled: bool,
    /// RTS level while sending (`true` = logical 1).
    pub rts_on_send: bool,
    /// RTS level after sending.
    pub rts_after_send: bool,
    /// RTS asserted this long before the first bit (whole milliseconds, ≤ 100 ms).
    pub delay_before_send: Duration,
    /// RTS held this long after the last bit.
    pub delay_after_send: Duration,
}

impl Default for Rs485Config {
    fn default() -> Self {
        Rs485Config {
            enabled: false,
            rts_on_send: true,
            rts_after_send: false,
            delay_before_send: Duration::ZERO,
            delay_after_send: Duration::ZERO,
        }
    }
}

pub use crate::control::writes::{WritableEntry, WritableTarget};
pub use crate::model::{Function, OnStale, Region, Sources, MAX_READ};

/// The RTU master on a device's bus (`rtu_poll:`).
#[derive(Debug, Clone, PartialEq)]
pub struct RtuPollConfig {
    pub device: String,
    pub baud: u32,
    pub data_bits: u8,
    pub parity: Parity,
    pub stop_bits: u8,
    /// The device's slave address.
    pub unit_id: u8,
    /// Per request: request written → complete reply.
    pub timeout: Duration,
    /// Silence on the bus between a reply (or timeout) and the next request.
    pub gap: Duration,
    /// Extra attempts of a read that got no valid reply (exceptions are not retried).
    pub retries: u32,
    /// Consecutive failed reads after which the device counts as offline.
    pub offline_after: u32,
    /// Longest wait between two probes of an offline device (backoff from 1s).
    pub probe_max: Duration,
}

impl RtuPollConfig {
    /// The same line settings as an [`RtuConfig`], for [`crate::link::serial::open`].
    pub fn line(&self) -> RtuConfig {
        RtuConfig {
            device: self.device.clone(),
            baud: self.baud,
            data_bits: self.data_bits,
            parity: self.parity,
            stop_bits: self.stop_bits,
            unit_id: self.unit_id,
            turnaround: Duration::ZERO,
            frame_timeout: Duration::from_millis(20),
            input_registers: true,
            rs485: Rs485Config::default(),
        }
    }
}

/// The Modbus TCP server for LAN clients (`tcp_server:`).
#[derive(Debug, Clone, PartialEq)]
pub struct TcpServerConfig {
    pub listen: SocketAddr,
    /// Peers allowed to connect; empty = anyone.
    pub allow_from: Vec<IpNet>,
    pub max_connections: usize,
    /// The unit id LAN clients address (255, the Modbus TCP "no unit" id, is accepted too);
    /// other unit ids get exception 0A.
    pub unit_id: u8,
    /// A connection with no request for this long is closed.
    pub idle_timeout: Duration,
}

impl TcpServerConfig {
    /// True when `ip` may connect.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.allow_from.is_empty() || self.allow_from.iter().any(|n| n.contains(&ip))
    }
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
    /// Kernel RS485 mode of the port.
    pub rs485: Rs485Config,
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
        let profile = crate::control::profile::load(&p.path).map_err(|e| ConfigError::Invalid {
            path: origin.clone(),
            line: p.line,
            key: "profile".into(),
            message: e.to_string(),
        })?;
        let warnings = check_against_profile(&loaded.config, &profile, &origin)?;
        loaded.warnings.extend(warnings);
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
        have_rtu_poll: false,
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
    #[serde(default)]
    rtu: Option<Spanned<RawRtu>>,
    #[serde(default)]
    push: Option<Spanned<RawPush>>,
    #[serde(default)]
    poll: Option<Spanned<RawPoll>>,
    regions: Spanned<Vec<Spanned<RawRegion>>>,
    #[serde(default)]
    profile: Option<Spanned<String>>,
    #[serde(default)]
    rtu_poll: Option<Spanned<RawRtuPoll>>,
    #[serde(default)]
    tcp_server: Option<Spanned<RawTcpServer>>,
    #[serde(default)]
    writable: Option<Spanned<Vec<Spanned<WritableText>>>>,
    #[serde(default)]
    log: Option<Spanned<RawLog>>,
    #[serde(default)]
    status: Option<Spanned<RawStatus>>,
    #[serde(default)]
    mqtt: Option<Spanned<mqtt::RawMqtt>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatus {
    listen: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    #[serde(default)]
    level: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRs485 {
    /// Writing the section means wanting the mode: on unless said otherwise.
    #[serde(default = "default_true")]
    enabled: bool,
    #[serde(default = "default_true")]
    rts_on_send: bool,
    #[serde(default)]
    rts_after_send: bool,
    #[serde(default)]
    delay_before_send: Option<Spanned<DurationText>>,
    #[serde(default)]
    delay_after_send: Option<Spanned<DurationText>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRtuPoll {
    device: Spanned<String>,
    #[serde(default = "default_poll_baud")]
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
    timeout: Option<Spanned<DurationText>>,
    #[serde(default)]
    gap: Option<Spanned<DurationText>>,
    #[serde(default = "default_retries")]
    retries: Spanned<u32>,
    #[serde(default = "default_offline_after")]
    offline_after: Spanned<u32>,
    #[serde(default)]
    probe_max: Option<Spanned<DurationText>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTcpServer {
    listen: Spanned<String>,
    #[serde(default)]
    allow_from: Vec<Spanned<String>>,
    #[serde(default = "default_tcp_connections")]
    max_connections: Spanned<usize>,
    #[serde(default = "default_unit")]
    unit_id: Spanned<u8>,
    #[serde(default)]
    idle_timeout: Option<Spanned<DurationText>>,
}

/// A `writable:` entry as written: an address or a register name.
#[derive(Deserialize)]
#[serde(untagged)]
enum WritableText {
    Address(u16),
    Name(String),
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
    #[serde(default)]
    rs485: Option<Spanned<RawRs485>>,
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
    #[serde(default)]
    function: Option<Spanned<Function>>,
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
fn default_poll_baud() -> Spanned<u32> {
    unspanned(9600)
}
fn default_retries() -> Spanned<u32> {
    unspanned(1)
}
fn default_offline_after() -> Spanned<u32> {
    unspanned(3)
}
fn default_tcp_connections() -> Spanned<usize> {
    unspanned(8)
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
    /// The config has an `rtu_poll:` section (set before regions are validated).
    have_rtu_poll: bool,
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
        let rtu = match &raw.rtu {
            Some(r) => self.rtu(r)?,
            None => placeholder_rtu(),
        };
        let push = raw.push.as_ref().map(|p| self.push(p)).transpose()?;
        let poll = raw.poll.as_ref().map(|p| self.poll(p)).transpose()?;
        let rtu_poll = raw
            .rtu_poll
            .as_ref()
            .map(|p| self.rtu_poll(p))
            .transpose()?;
        let tcp_server = raw
            .tcp_server
            .as_ref()
            .map(|t| self.tcp_server(t))
            .transpose()?;
        if raw.rtu.is_none() && tcp_server.is_none() {
            return Err(self.err(
                line(&raw.regions),
                "rtu",
                "no server: add `rtu:` (serve an inverter on RS485) or `tcp_server:` (serve LAN clients)",
            ));
        }
        self.have_rtu_poll = rtu_poll.is_some();
        let regions = self.regions(&raw.regions, push.is_some(), poll.is_some())?;
        let region_lines: BTreeMap<String, u64> = raw
            .regions
            .value
            .iter()
            .map(|r| (r.value.name.clone(), line(r)))
            .collect();
        if let Some(p) = &raw.rtu_poll {
            if !regions.iter().any(|r| r.source.rtu_poll) {
                self.warn(
                    line(p),
                    "rtu_poll",
                    "no region has source rtu_poll; the bus stays idle",
                );
            }
        }
        let writable = self.writable(&raw)?;
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
        let log = self.log(raw.log.as_ref())?;
        let status = raw
            .status
            .as_ref()
            .map(|s| self.status(s, push.as_ref()))
            .transpose()?;
        let writes = rtu_poll.is_some() && !writable.is_empty();
        let mqtt = raw
            .mqtt
            .as_ref()
            .map(|m| mqtt::validate(m, self.origin, raw.profile.is_some(), writes))
            .transpose()?;
        Ok(Config {
            mqtt,
            rtu,
            push,
            poll,
            regions,
            profile,
            rtu_slave: raw.rtu.is_some(),
            rtu_poll,
            tcp_server,
            writable,
            region_lines,
            log,
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

    /// An `allow_from` list: IP addresses or CIDRs.
    fn allow_list(&self, items: &[Spanned<String>], key: &str) -> Result<Vec<IpNet>, ConfigError> {
        let mut allow_from = Vec::with_capacity(items.len());
        for a in items {
            let s = a.value.trim();
            let net = s
                .parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    self.err(
                        line(a),
                        key,
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
        Ok(allow_from)
    }

    fn log(&mut self, raw: Option<&Spanned<RawLog>>) -> Result<LogConfig, ConfigError> {
        let Some(level) = raw.and_then(|r| r.value.level.as_ref()) else {
            return Ok(LogConfig::default());
        };
        crate::ops::logging::parse_level(&level.value)
            .map_err(|m| self.err(line(level), "log.level", m))?;
        Ok(LogConfig {
            level: level.value.trim().to_string(),
        })
    }

    fn rs485(&mut self, raw: Option<&Spanned<RawRs485>>) -> Result<Rs485Config, ConfigError> {
        let Some(raw) = raw else {
            return Ok(Rs485Config::default());
        };
        let r = &raw.value;
        if r.rts_on_send == r.rts_after_send {
            return Err(self.err(
                line(raw),
                "rtu.rs485",
                "rts_on_send and rts_after_send must differ: one is the RTS level while sending, the other after (usually rts_on_send: true, rts_after_send: false)",
            ));
        }
        let delay =
            |d: &Option<Spanned<DurationText>>, key: &str| -> Result<Duration, ConfigError> {
                let Some(d) = d else {
                    return Ok(Duration::ZERO);
                };
                let v = self.duration(d, key)?;
                if v.subsec_nanos() % 1_000_000 != 0 {
                    return Err(self.err(
                        line(d),
                        key,
                        format!("{v:?}: the kernel takes whole milliseconds"),
                    ));
                }
                if v > Duration::from_millis(100) {
                    return Err(self.err(
                        line(d),
                        key,
                        format!("{v:?}: the kernel allows at most 100ms"),
                    ));
                }
                Ok(v)
            };
        Ok(Rs485Config {
            enabled: r.enabled,
            rts_on_send: r.rts_on_send,
            rts_after_send: r.rts_after_send,
            delay_before_send: delay(&r.delay_before_send, "rtu.rs485.delay_before_send")?,
            delay_after_send: delay(&r.delay_after_send, "rtu.rs485.delay_after_send")?,
        })
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
            rs485: self.rs485(r.rs485.as_ref())?,
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
        let allow_from = self.allow_list(&p.allow_from, "push.allow_from")?;
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
                "rtu_poll" => out.rtu_poll = true,
                other => {
                    return Err(self.err(
                        line(s),
                        key,
                        format!("unknown source `{other}`; use push, poll, static, [push, poll] or rtu_poll"),
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
        if out.rtu_poll && names.len() > 1 {
            return Err(self.err(
                line(s),
                key,
                "rtu_poll cannot be combined with other sources",
            ));
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
            if source.rtu_poll && !self.have_rtu_poll {
                return Err(self.err(
                    line(&r.source),
                    &key("source"),
                    "is polled over RTU but there is no `rtu_poll:` section",
                ));
            }
            let function = r.function.as_ref().map(|f| f.value);
            if source.rtu_poll && function.is_none() {
                return Err(self.err(
                    l,
                    &key("function"),
                    "a region polled over RTU needs `function: input` (read with FC04) or `function: holding` (FC03)",
                ));
            }
            if let Some((o, ol)) = out
                .iter()
                .find(|(o, _)| o.function.is_some() != function.is_some())
            {
                return Err(self.err(
                    r.function.as_ref().map_or(l, line),
                    &key("function"),
                    format!(
                        "either every region names its function or none does; region `{}` (line {ol}) {}",
                        o.name,
                        if o.function.is_some() { "does" } else { "does not" }
                    ),
                ));
            }
            let every = r
                .every
                .as_ref()
                .map(|e| self.positive(e, &key("every")))
                .transpose()?;
            if source.rtu_poll && every.is_none() {
                return Err(self.err(
                    l,
                    &key("every"),
                    "a polled region needs `every`, e.g. every: 10s",
                ));
            }
            if source.poll && every.is_none() {
                return Err(self.err(
                    l,
                    &key("every"),
                    "a polled region needs `every`, e.g. every: 10s",
                ));
            }
            if !source.poll && !source.rtu_poll {
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
            // RTU-polled regions: 3 × every / exception (0B over TCP: the device is silent).
            let (default_age, default_stale) = if source.rtu_poll {
                (
                    every.unwrap_or(Duration::from_secs(1)).saturating_mul(3),
                    OnStale::Exception,
                )
            } else if source.poll {
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
                function,
            };
            // Regions of different tables (input, holding) may share numbers.
            if let Some((o, ol)) = out.iter().find(|(o, _)| {
                o.function == region.function
                    && u32::from(o.start) < region.end()
                    && u32::from(region.start) < o.end()
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

    fn rtu_poll(&mut self, raw: &Spanned<RawRtuPoll>) -> Result<RtuPollConfig, ConfigError> {
        let r = &raw.value;
        if r.device.value.trim().is_empty() {
            return Err(self.err(
                line(&r.device),
                "rtu_poll.device",
                "must name a serial device, e.g. /dev/ttyUSB0",
            ));
        }
        if !(300..=4_000_000).contains(&r.baud.value) {
            return Err(self.err(
                line(&r.baud),
                "rtu_poll.baud",
                format!(
                    "{} is not a usable baud rate (300..4000000; KSTAR: 9600)",
                    r.baud.value
                ),
            ));
        }
        if r.data_bits.value != 8 {
            return Err(self.err(
                line(&r.data_bits),
                "rtu_poll.data_bits",
                "Modbus RTU uses 8 data bits",
            ));
        }
        // KSTAR devices use 8N1 (not the Modbus-spec 8N2), so 1 is the default here.
        let stop_bits = match &r.stop_bits {
            Some(s) if s.value == 1 || s.value == 2 => s.value,
            Some(s) => return Err(self.err(line(s), "rtu_poll.stop_bits", "must be 1 or 2")),
            None => 1,
        };
        if !(1..=247).contains(&r.unit_id.value) {
            return Err(self.err(
                line(&r.unit_id),
                "rtu_poll.unit_id",
                "must be 1..247 (0 is broadcast, which never answers)",
            ));
        }
        let timeout = match &r.timeout {
            Some(t) => self.positive(t, "rtu_poll.timeout")?,
            None => Duration::from_millis(500),
        };
        if timeout > Duration::from_secs(10) {
            return Err(self.err(
                r.timeout.as_ref().map_or(line(&r.device), line),
                "rtu_poll.timeout",
                "more than 10s; one silent request would hold the bus that long",
            ));
        }
        let bits = 1 + 8 + u32::from(r.parity != Parity::None) + u32::from(stop_bits);
        let t35 = t35(r.baud.value, bits);
        let gap = match &r.gap {
            Some(g) => {
                let v = self.duration(g, "rtu_poll.gap")?;
                if v < t35 {
                    self.warn(line(g), "rtu_poll.gap", format_args!("{v:?} is shorter than t3.5 ({t35:?}) at {} baud; the device may not see two requests apart", r.baud.value));
                }
                v
            }
            None => Duration::from_millis(20).max(t35),
        };
        if r.retries.value > 5 {
            return Err(self.err(line(&r.retries), "rtu_poll.retries", "must be 0..5"));
        }
        if !(1..=100).contains(&r.offline_after.value) {
            return Err(self.err(
                line(&r.offline_after),
                "rtu_poll.offline_after",
                "must be 1..100 failed reads",
            ));
        }
        let probe_max = match &r.probe_max {
            Some(t) => self.positive(t, "rtu_poll.probe_max")?,
            None => Duration::from_secs(30),
        };
        Ok(RtuPollConfig {
            device: r.device.value.clone(),
            baud: r.baud.value,
            data_bits: 8,
            parity: r.parity,
            stop_bits,
            unit_id: r.unit_id.value,
            timeout,
            gap,
            retries: r.retries.value,
            offline_after: r.offline_after.value,
            probe_max,
        })
    }

    fn tcp_server(&mut self, raw: &Spanned<RawTcpServer>) -> Result<TcpServerConfig, ConfigError> {
        let t = &raw.value;
        let listen: SocketAddr = t.listen.value.parse().map_err(|_| {
            self.err(
                line(&t.listen),
                "tcp_server.listen",
                format!("`{}` is not ADDRESS:PORT, e.g. 0.0.0.0:502", t.listen.value),
            )
        })?;
        let allow_from = self.allow_list(&t.allow_from, "tcp_server.allow_from")?;
        if allow_from.is_empty() {
            self.warn(
                line(raw),
                "tcp_server.allow_from",
                "empty: any host on the network may read (and write what `writable` allows)",
            );
        }
        if t.max_connections.value == 0 || t.max_connections.value > 1024 {
            return Err(self.err(
                line(&t.max_connections),
                "tcp_server.max_connections",
                "must be 1..1024",
            ));
        }
        let idle_timeout = match &t.idle_timeout {
            Some(d) => self.positive(d, "tcp_server.idle_timeout")?,
            None => Duration::from_secs(300),
        };
        Ok(TcpServerConfig {
            listen,
            allow_from,
            max_connections: t.max_connections.value,
            unit_id: t.unit_id.value,
            idle_timeout,
        })
    }

    fn writable(&mut self, raw: &RawConfig) -> Result<Vec<WritableEntry>, ConfigError> {
        let Some(list) = &raw.writable else {
            return Ok(Vec::new());
        };
        if list.value.is_empty() {
            return Ok(Vec::new());
        }
        let l = line(list);
        if raw.tcp_server.is_none() {
            return Err(self.err(
                l,
                "writable",
                "writes come from LAN clients: needs a `tcp_server:` section",
            ));
        }
        if raw.rtu_poll.is_none() {
            return Err(self.err(
                l,
                "writable",
                "writes go to the device's bus: needs an `rtu_poll:` section",
            ));
        }
        if raw.profile.is_none() {
            return Err(self.err(
                l,
                "writable",
                "needs a `profile:` that says which registers are writable and their ranges",
            ));
        }
        let mut out: Vec<WritableEntry> = Vec::new();
        for e in &list.value {
            let target = match &e.value {
                WritableText::Address(a) => WritableTarget::Address(*a),
                WritableText::Name(n) if n.trim().is_empty() => {
                    return Err(self.err(line(e), "writable", "empty register name"))
                }
                WritableText::Name(n) => WritableTarget::Name(n.trim().to_string()),
            };
            if out.iter().any(|o| o.target == target) {
                return Err(self.err(line(e), "writable", format!("{target} is listed twice")));
            }
            out.push(WritableEntry {
                target,
                line: line(e),
            });
        }
        Ok(out)
    }
}

/// The `rtu` of a config without an `rtu:` section (no RTU slave runs).
fn placeholder_rtu() -> RtuConfig {
    RtuConfig {
        device: String::new(),
        baud: 38_400,
        data_bits: 8,
        parity: Parity::None,
        stop_bits: 2,
        unit_id: 1,
        turnaround: t35(38_400, 11),
        frame_timeout: Duration::from_millis(20),
        input_registers: true,
        rs485: Rs485Config::default(),
    }
}

/// Check a config against its loaded profile: every region that names a function covers
/// registers of that table, and every `writable:` entry is writable in the profile.
/// Returns warnings; errors carry the line of the offending entry.
pub fn check_against_profile(
    config: &Config,
    profile: &crate::control::profile::Profile,
    origin: &str,
) -> Result<Vec<String>, ConfigError> {
    let mut warnings = Vec::new();
    let err = |line: u64, key: String, message: String| ConfigError::Invalid {
        path: origin.to_string(),
        line,
        key,
        message,
    };
    for r in &config.regions {
        let l = config.region_lines.get(&r.name).copied().unwrap_or(0);
        let Some(f) = r.function else { continue };
        if r.source.fixed {
            continue;
        }
        if profile.overlapping(f, r.start, r.count).next().is_none() {
            let other = match f {
                Function::Input => Function::Holding,
                Function::Holding => Function::Input,
            };
            let hint = if profile
                .overlapping(other, r.start, r.count)
                .next()
                .is_some()
            {
                format!("; the profile has {} registers there", other.as_str())
            } else {
                String::new()
            };
            return Err(err(
                l,
                format!("regions ({}).function", r.name),
                format!(
                    "the profile `{}` has no {} registers in {}..{}{hint}",
                    profile.name,
                    f.as_str(),
                    r.start,
                    r.end() - 1
                ),
            ));
        }
        // A multi-word value cut by the region's edge would be served torn.
        for reg in profile.overlapping(f, r.start, r.count) {
            if reg.address < r.start || reg.end() > r.end() {
                warnings.push(format!(
                    "{origin}:{l}: regions ({}): {} ({}..{}) is cut by the region's edge",
                    r.name,
                    reg.name,
                    reg.address,
                    reg.end() - 1
                ));
            }
        }
    }
    crate::control::writes::WritePolicy::resolve(profile, &config.writable)
        .map_err(|(line, message)| err(line, "writable".into(), message))?;
    Ok(warnings)
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
        if !self.rtu_slave {
            let _ = writeln!(s, "rtu: none (no RTU slave)");
        } else {
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
        }
        if self.rtu_slave && r.rs485.enabled {
            let x = &r.rs485;
            let _ = writeln!(
                s,
                "rtu.rs485: kernel RS485 on, RTS {} while sending, {} after, delays {:?} before / {:?} after",
                u8::from(x.rts_on_send),
                u8::from(x.rts_after_send),
                x.delay_before_send,
                x.delay_after_send
            );
        }
        if self.log != LogConfig::default() {
            let _ = writeln!(s, "log: level {}", self.log.level);
        }
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
        if let Some(p) = &self.rtu_poll {
            let parity = match p.parity {
                Parity::None => 'N',
                Parity::Even => 'E',
                Parity::Odd => 'O',
            };
            let _ = writeln!(
                s,
                "rtu_poll: {} {} 8{}{} unit {} timeout {:?} gap {:?} retries {} offline_after {} probe_max {:?}",
                p.device, p.baud, parity, p.stop_bits, p.unit_id, p.timeout, p.gap, p.retries, p.offline_after, p.probe_max
            );
        }
        if let Some(t) = &self.tcp_server {
            let allow: Vec<String> = t.allow_from.iter().map(ToString::to_string).collect();
            let _ = writeln!(
                s,
                "tcp_server: listen {} allow_from [{}] max_connections {} unit {} idle_timeout {:?}",
                t.listen,
                allow.join(", "),
                t.max_connections,
                t.unit_id,
                t.idle_timeout
            );
        }
        if !self.writable.is_empty() {
            let w: Vec<String> = self.writable.iter().map(|e| e.target.to_string()).collect();
            let _ = writeln!(s, "writable: [{}]", w.join(", "));
        }
        if let Some(st) = &self.status {
            let _ = writeln!(s, "status: http://{}/", st.listen);
        }
        if let Some(m) = &self.mqtt {
            let _ = writeln!(s, "{}", m.describe());
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
                match g.function {
                    Some(f) => format!("{} {}", g.source, f.as_str()),
                    None => g.source.to_string(),
                },
                dur(g.every),
                age,
                g.on_stale.as_str(),
                dur(g.fallback_poll)
            );
        }
        s
    }
}

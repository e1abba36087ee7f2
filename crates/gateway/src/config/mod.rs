//! Configuration: the YAML schema, its defaults and its validation.
//!
//! Owns the translation from a file to a [`Config`] the rest of the gateway can trust:
//! every rule that can be checked before start-up is checked here (unknown keys, overlapping
//! regions, sources without their section, impossible serial settings), with the file, line
//! and key in the message. It touches nothing but the text it is given (and, in [`load`],
//! the file and its profile).
//!
//! The files: this one holds the validated types ([`Config`], one field per section) and
//! the entry points ([`load`], [`parse`], [`parse_duration`]); `schema` the file as
//! written (serde `Raw*` types, one field per section, and their defaults); `validate` the
//! rules (`Raw*` → [`Config`]); `describe` the summary `airbridge check` prints;
//! `yaml_errors` the parser's errors rewritten (right line, what to do); `host` the
//! warnings `check` gives about this machine (missing device, privileged port). A new
//! section adds a field to [`Config`] and to `schema::RawConfig`, and its own file.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

mod describe;
mod host;
mod schema;
mod validate;
mod yaml_errors;

pub use host::host_warnings;
pub use validate::{check_against_profile, check_device_against_profile};

use schema::RawConfig;

pub(crate) mod mqtt;
pub use mqtt::MqttConfig;

/// A configuration that is known to be usable.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The serial line to the inverter (placeholder defaults when `rtu_slave` is false).
    pub rtu: RtuConfig,
    /// The listener the KSEM pushes to (`push:`); none: no region takes pushes.
    pub push: Option<PushConfig>,
    /// The KSEM's slave polled for slow data (`poll:`).
    pub poll: Option<PollConfig>,
    /// The register map served: where each region's words come from and when they go stale.
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
    /// The devices on the `rtu_poll:` bus: `devices:`, or the one-device form as one unnamed
    /// device; empty without `rtu_poll:`. A region's `device` indexes this list.
    pub devices: Vec<DeviceConfig>,
}

/// One device on the `rtu_poll:` bus.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceConfig {
    /// `devices[].name`: labels it in logs, metrics and `/status`; empty in the one-device
    /// form, whose output stays as it was.
    pub name: String,
    /// Its RS485 address (`unit_id`, or `rtu_poll.unit_id`).
    pub unit_id: u8,
    /// The unit ids LAN clients select it with (`tcp_unit_id`, or `tcp_server.unit_id`).
    pub tcp_unit_id: UnitIds,
    /// Its register profile (write policy, checks); the top-level one in the one-device form.
    pub profile: Option<ProfileRef>,
    /// Its registers LAN clients may write.
    pub writable: Vec<WritableEntry>,
}

impl Config {
    /// `devices:` was written (names label the output); false for the one-device form.
    pub fn named_devices(&self) -> bool {
        self.devices.first().is_some_and(|d| !d.name.is_empty())
    }
}

/// The status HTTP endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusConfig {
    /// Address and port of the HTTP endpoint.
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
    /// The mode is switched on (`TIOCSRS485`).
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
pub use airbridge_modbus::model::{OnStale, Region, Sources, Table, MAX_READ};

/// The RTU master on a device's bus (`rtu_poll:`).
#[derive(Debug, Clone, PartialEq)]
pub struct RtuPollConfig {
    /// Serial device of the device's bus.
    pub device: String,
    /// Line speed.
    pub baud: u32,
    /// Data bits per character.
    pub data_bits: u8,
    /// Parity.
    pub parity: Parity,
    /// Stop bits.
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
    /// After a timeout, the bus must be quiet this long before the next request, so a late
    /// reply is thrown away instead of taken as the next request's answer.
    pub late_reply_window: Duration,
    /// A queued write older than this when the bus is free is dropped (never sent) and its
    /// client gets exception 0B: a command is sent at most once, and never long after its
    /// client gave up (and perhaps retried).
    pub write_timeout: Duration,
}

impl RtuPollConfig {
    /// The same line settings as an [`RtuConfig`], for [`crate::link::serial::open`].
    pub fn line(&self) -> RtuConfig {
        RtuConfig::master_line(
            self.device.clone(),
            self.baud,
            self.data_bits,
            self.parity,
            self.stop_bits,
            self.unit_id,
        )
    }
}

/// The Modbus TCP server for LAN clients (`tcp_server:`).
#[derive(Debug, Clone, PartialEq)]
pub struct TcpServerConfig {
    /// Address and port LAN clients connect to.
    pub listen: SocketAddr,
    /// Peers allowed to connect; empty = anyone.
    pub allow_from: Vec<IpNet>,
    /// Connections served at once; more are refused.
    pub max_connections: usize,
    /// The unit ids answered (`tcp_server.unit_id`): in a KSEM config any (as the KSEM
    /// itself), in a KSTAR config 1; the KSTAR server also takes 255. Others get 0A.
    pub unit_id: UnitIds,
    /// A connection with no request for this long is closed.
    pub idle_timeout: Duration,
}

/// Which unit ids a TCP server answers (`tcp_server.unit_id`: `any`, one id or a list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitIds {
    /// Every unit id, as a KSEM answers: clients set up for the meter work unchanged
    /// (Home Assistant with 1, evcc's `kostal-ksem` template with 71).
    Any,
    /// Only these (sorted, without duplicates, never empty).
    Only(Vec<u8>),
}

impl UnitIds {
    /// True when a request for `unit` is answered.
    pub fn accepts(&self, unit: u8) -> bool {
        match self {
            UnitIds::Any => true,
            UnitIds::Only(ids) => ids.binary_search(&unit).is_ok(),
        }
    }
}

impl std::fmt::Display for UnitIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnitIds::Any => f.write_str("any"),
            UnitIds::Only(ids) => {
                let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
                f.write_str(&ids.join(","))
            }
        }
    }
}

impl TcpServerConfig {
    /// True for a KSEM config's server (no `rtu_poll:`): read-only, any unit id by default.
    pub fn is_meter(config: &Config) -> bool {
        config.tcp_server.is_some() && config.rtu_poll.is_none()
    }

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
    /// No parity bit.
    None,
    /// Even parity.
    Even,
    /// Odd parity.
    Odd,
}

/// The RTU slave the inverter polls.
#[derive(Debug, Clone, PartialEq)]
pub struct RtuConfig {
    /// Serial device to the inverter.
    pub device: String,
    /// Line speed.
    pub baud: u32,
    /// Data bits per character.
    pub data_bits: u8,
    /// Parity.
    pub parity: Parity,
    /// Stop bits.
    pub stop_bits: u8,
    /// The unit id the inverter asks for; other ids are not answered.
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
    /// A line as a master or a tool opens it (for [`crate::link::serial::open`]): no
    /// turnaround, a 20 ms frame timeout, no RS485 mode.
    pub fn master_line(
        device: String,
        baud: u32,
        data_bits: u8,
        parity: Parity,
        stop_bits: u8,
        unit_id: u8,
    ) -> RtuConfig {
        RtuConfig {
            device,
            baud,
            data_bits,
            parity,
            stop_bits,
            unit_id,
            turnaround: Duration::ZERO,
            frame_timeout: Duration::from_millis(20),
            input_registers: true,
            rs485: Rs485Config::default(),
        }
    }

    /// Bits on the wire per character: start + data + parity + stop.
    pub fn bits_per_char(&self) -> u32 {
        1 + u32::from(self.data_bits)
            + u32::from(self.parity != Parity::None)
            + u32::from(self.stop_bits)
    }
}

/// The Modbus TCP server the KSEM pushes to.
#[derive(Debug, Clone, PartialEq)]
pub struct PushConfig {
    /// Address and port the KSEM connects to.
    pub listen: SocketAddr,
    /// Peers allowed to connect; empty = anyone.
    pub allow_from: Vec<IpNet>,
    /// Connections served at once; more are refused.
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

/// The one default config path of every command (`run`, `check`): where `install.sh`, the
/// .deb and the systemd unit put it.
pub const DEFAULT_PATH: &str = "/etc/airbridge/gateway.yaml";

/// The KSEM's Modbus TCP slave, polled for slow data.
#[derive(Debug, Clone, PartialEq)]
pub struct PollConfig {
    /// `host:port`; a name is resolved at every connect.
    pub host: String,
    /// Unit id of the KSEM's slave.
    pub unit_id: u8,
    /// Per-request and connect timeout.
    pub timeout: Duration,
}

/// A config error, with where it is and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{path}: cannot read: {cause}{}", read_hint(cause))]
    Read {
        /// The file.
        path: String,
        /// Why it cannot be read (not a `source`: the message already says it once).
        cause: std::io::Error,
    },
    /// The text is not YAML of the schema (syntax, unknown key, wrong type); see
    /// `yaml_errors` for how the parser's message is rewritten.
    #[error("{path}:{line}:{column}: {message}{}{snippet}", if snippet.is_empty() { "" } else { "\n" })]
    Parse {
        /// The file (or origin) of the text.
        path: String,
        /// 1-based line of the mistake (not always where the parser noticed it).
        line: u64,
        /// 1-based column of the mistake.
        column: u64,
        /// What is wrong and what to do.
        message: String,
        /// The parser's snippet of the surroundings (empty when it points elsewhere).
        snippet: String,
    },
    /// A rule of the validator is broken at `line`, `key`.
    #[error("{path}:{line}: {key}: {message}")]
    Invalid {
        /// The file (or origin) of the text.
        path: String,
        /// 1-based line of the offending value.
        line: u64,
        /// The key path, e.g. `regions[1] (b).start`.
        key: String,
        /// What is wrong and, where possible, what to write instead.
        message: String,
    },
}

/// What to do about a config file that cannot be read.
fn read_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::NotFound => "; copy the example first (`sudo install -D -m 644 gateway.yaml /etc/airbridge/gateway.yaml`) or name another file with --config PATH",
        std::io::ErrorKind::PermissionDenied => "; run as a user who may read it (e.g. with sudo)",
        _ => "",
    }
}

/// A usable config and what the user should know about it.
#[derive(Debug)]
pub struct Loaded {
    /// The validated config.
    pub config: Config,
    /// What is usable but worth knowing, one `file:line: key: message` each.
    pub warnings: Vec<String>,
}

/// Read and validate a config file.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
        path: path.display().to_string(),
        cause,
    })?;
    let origin = path.display().to_string();
    let mut loaded = parse(&text, &origin)?;
    if let Some(mut p) = loaded.config.profile.take() {
        let profile = load_profile(&mut p, path, &origin, "profile")?;
        loaded.config.profile = Some(p);
        let warnings = check_against_profile(&loaded.config, &profile, &origin)?;
        loaded.warnings.extend(warnings);
    }
    if loaded.config.named_devices() {
        for i in 0..loaded.config.devices.len() {
            let key = format!("devices ({}).profile", loaded.config.devices[i].name);
            let Some(mut p) = loaded.config.devices[i].profile.take() else {
                continue;
            };
            let profile = load_profile(&mut p, path, &origin, &key)?;
            loaded.config.devices[i].profile = Some(p);
            let w =
                validate::check_device_against_profile(&loaded.config, Some(i), &profile, &origin)?;
            loaded.warnings.extend(w);
        }
    } else if let (Some(d), Some(p)) = (loaded.config.devices.first_mut(), &loaded.config.profile) {
        // The one device's profile is the resolved top-level one.
        d.profile = Some(p.clone());
    }
    Ok(loaded)
}

/// Resolve `p` against the config file's directory and load it; `key` names it in errors.
fn load_profile(
    p: &mut ProfileRef,
    path: &Path,
    origin: &str,
    key: &str,
) -> Result<crate::control::profile::Profile, ConfigError> {
    if p.path.is_relative() {
        if let Some(dir) = path.parent() {
            p.path = dir.join(&p.path);
        }
    }
    // A profile that does not load makes the config unusable: say so now, not later.
    if !p.path.exists() {
        let shown = std::path::absolute(&p.path).unwrap_or_else(|_| p.path.clone());
        return Err(ConfigError::Invalid {
            path: origin.to_string(),
            line: p.line,
            key: key.into(),
            message: format!(
                "{} does not exist (a relative path is taken from the config's directory); \
                 copy the profiles/ directory next to the config (install.sh puts it in \
                 /etc/airbridge/profiles/) or write an absolute path",
                shown.display()
            ),
        });
    }
    crate::control::profile::load(&p.path).map_err(|e| ConfigError::Invalid {
        path: origin.to_string(),
        line: p.line,
        key: key.into(),
        message: e.to_string(),
    })
}

/// Validate a config given as text; `origin` names it in messages.
pub fn parse(text: &str, origin: &str) -> Result<Loaded, ConfigError> {
    // Every section may be absent now (`regions:` or `devices:`), so the parser no longer
    // notices an empty file.
    if text.trim().is_empty() {
        return Err(ConfigError::Parse {
            path: origin.to_string(),
            line: 1,
            column: 1,
            message: "the file is empty; start from the shipped gateway.yaml".into(),
            snippet: String::new(),
        });
    }
    let raw: RawConfig = serde_saphyr::from_str(text).map_err(|e| {
        let x = yaml_errors::explain(text, origin, &e);
        ConfigError::Parse {
            path: origin.to_string(),
            line: x.line,
            column: x.column,
            message: x.message,
            snippet: x.snippet,
        }
    })?;
    validate::validate(raw, origin)
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

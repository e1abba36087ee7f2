//! The config file as written: the serde `Raw*` types (spans kept for messages) and their
//! defaults. No rules here beyond the shape; [`super::validate`] turns these into a
//! [`super::Config`]. Touches nothing.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::config::{OnStale, Parity, Table};

/// The whole file; one field per top-level section.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    /// `rtu:` (serve an inverter on RS485).
    #[serde(default)]
    pub(super) rtu: Option<Spanned<RawRtu>>,
    /// `push:` (the KSEM pushes to us).
    #[serde(default)]
    pub(super) push: Option<Spanned<RawPush>>,
    /// `poll:` (we read the KSEM).
    #[serde(default)]
    pub(super) poll: Option<Spanned<RawPoll>>,
    /// `regions:`, the register map (absent with `devices:`, whose entries hold theirs).
    #[serde(default)]
    pub(super) regions: Option<Spanned<Vec<Spanned<RawRegion>>>>,
    /// `devices:`, several devices on the `rtu_poll:` bus (instead of the one-device form).
    #[serde(default)]
    pub(super) devices: Option<Spanned<Vec<Spanned<RawDevice>>>>,
    /// `profile:`, a path relative to the config file.
    #[serde(default)]
    pub(super) profile: Option<Spanned<String>>,
    /// `rtu_poll:` (we read a KSTAR bus).
    #[serde(default)]
    pub(super) rtu_poll: Option<Spanned<RawRtuPoll>>,
    /// `tcp_server:` (serve LAN clients).
    #[serde(default)]
    pub(super) tcp_server: Option<Spanned<RawTcpServer>>,
    /// `writable:`, registers LAN clients may write.
    #[serde(default)]
    pub(super) writable: Option<Spanned<Vec<Spanned<WritableText>>>>,
    /// `log:`.
    #[serde(default)]
    pub(super) log: Option<Spanned<RawLog>>,
    /// `status:`, the HTTP endpoint.
    #[serde(default)]
    pub(super) status: Option<Spanned<RawStatus>>,
    /// `mqtt:`, publishing to a broker (Home Assistant).
    #[serde(default)]
    pub(super) mqtt: Option<Spanned<super::mqtt::RawMqtt>>,
}

/// `status:` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStatus {
    /// `host:port` to listen on.
    pub(super) listen: Spanned<String>,
}

/// `log:` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    /// Level or tracing directives; default `info`.
    #[serde(default)]
    pub(super) level: Option<Spanned<String>>,
}

/// `rtu.rs485:` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRs485 {
    /// Writing the section means wanting the mode: on unless said otherwise.
    #[serde(default = "default_true")]
    pub(super) enabled: bool,
    /// RTS level while sending.
    #[serde(default = "default_true")]
    pub(super) rts_on_send: bool,
    /// RTS level after sending.
    #[serde(default)]
    pub(super) rts_after_send: bool,
    /// RTS lead before the first bit.
    #[serde(default)]
    pub(super) delay_before_send: Option<Spanned<DurationText>>,
    /// RTS hold after the last bit.
    #[serde(default)]
    pub(super) delay_after_send: Option<Spanned<DurationText>>,
}

/// `rtu_poll:` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRtuPoll {
    /// Serial device of the bus.
    pub(super) device: Spanned<String>,
    /// Line speed (default 9600).
    #[serde(default = "default_poll_baud")]
    pub(super) baud: Spanned<u32>,
    /// Data bits (default 8).
    #[serde(default = "default_data_bits")]
    pub(super) data_bits: Spanned<u8>,
    /// Parity (default none).
    #[serde(default = "default_parity")]
    pub(super) parity: Parity,
    /// Stop bits (default 1: KSTAR devices use 8N1).
    #[serde(default)]
    pub(super) stop_bits: Option<Spanned<u8>>,
    /// The device's unit id (default 1).
    #[serde(default = "default_unit")]
    pub(super) unit_id: Spanned<u8>,
    /// Reply timeout.
    #[serde(default)]
    pub(super) timeout: Option<Spanned<DurationText>>,
    /// Bus silence between transactions.
    #[serde(default)]
    pub(super) gap: Option<Spanned<DurationText>>,
    /// Extra attempts of a failed read.
    #[serde(default = "default_retries")]
    pub(super) retries: Spanned<u32>,
    /// Failed reads before the device counts as offline.
    #[serde(default = "default_offline_after")]
    pub(super) offline_after: Spanned<u32>,
    /// Longest wait between probes of an offline device.
    #[serde(default)]
    pub(super) probe_max: Option<Spanned<DurationText>>,
    /// Quiet time after a timeout before the next request (default: the timeout).
    #[serde(default)]
    pub(super) late_reply_window: Option<Spanned<DurationText>>,
    /// Oldest a queued write may be when the bus is free (default 2s).
    #[serde(default)]
    pub(super) write_timeout: Option<Spanned<DurationText>>,
}

/// `tcp_server:` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTcpServer {
    /// `host:port` to listen on.
    pub(super) listen: Spanned<String>,
    /// Peers allowed (addresses or networks); empty: anyone.
    #[serde(default)]
    pub(super) allow_from: Vec<Spanned<String>>,
    /// Connections at once (default: 16 in a KSEM config, 8 in a KSTAR config).
    #[serde(default)]
    pub(super) max_connections: Option<Spanned<usize>>,
    /// Unit ids answered: `any`, one id or a list (default: any in a KSEM config, 1 in a
    /// KSTAR config).
    #[serde(default)]
    pub(super) unit_id: Option<Spanned<UnitIdText>>,
    /// Close a connection idle this long.
    #[serde(default)]
    pub(super) idle_timeout: Option<Spanned<DurationText>>,
}

/// `tcp_server.unit_id` as written: `any`, one id or a list (range checked by the validator).
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum UnitIdText {
    /// One unit id.
    One(i64),
    /// Several unit ids.
    Many(Vec<i64>),
    /// `any`.
    Word(String),
}

/// A `writable:` entry as written: an address or a register name.
/// A `writable:` entry as written.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum WritableText {
    /// A register address.
    Address(u16),
    /// A profile register name.
    Name(String),
}

/// `rtu:` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRtu {
    /// Serial device to the inverter.
    pub(super) device: Spanned<String>,
    /// Line speed (default 38400).
    #[serde(default = "default_baud")]
    pub(super) baud: Spanned<u32>,
    /// Data bits (default 8).
    #[serde(default = "default_data_bits")]
    pub(super) data_bits: Spanned<u8>,
    /// Parity (default none).
    #[serde(default = "default_parity")]
    pub(super) parity: Parity,
    /// Stop bits; default from the parity (2 without, 1 with).
    #[serde(default)]
    pub(super) stop_bits: Option<Spanned<u8>>,
    /// Unit id answered (default 1).
    #[serde(default = "default_unit")]
    pub(super) unit_id: Spanned<u8>,
    /// Delay before a reply; default 3.5 characters.
    #[serde(default)]
    pub(super) turnaround: Option<Spanned<DurationText>>,
    /// Silence that ends a partial frame (default 20 ms, at least t3.5).
    #[serde(default)]
    pub(super) frame_timeout: Option<Spanned<DurationText>>,
    /// Serve FC04 as well as FC03.
    #[serde(default = "default_true")]
    pub(super) input_registers: bool,
    /// `rs485:` kernel RS485 mode.
    #[serde(default)]
    pub(super) rs485: Option<Spanned<RawRs485>>,
}

/// `push:` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPush {
    /// `host:port` to listen on.
    pub(super) listen: Spanned<String>,
    /// Peers allowed (addresses or networks); empty: anyone.
    #[serde(default)]
    pub(super) allow_from: Vec<Spanned<String>>,
    /// Connections at once.
    #[serde(default = "default_max_connections")]
    pub(super) max_connections: Spanned<usize>,
    /// Close a connection idle this long.
    #[serde(default)]
    pub(super) idle_timeout: Option<Spanned<DurationText>>,
}

/// `poll:` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPoll {
    /// `host:port` of the KSEM's slave.
    pub(super) host: Spanned<String>,
    /// Its unit id (default 1).
    #[serde(default = "default_unit")]
    pub(super) unit_id: Spanned<u8>,
    /// Per-request and connect timeout.
    #[serde(default)]
    pub(super) timeout: Option<Spanned<DurationText>>,
}

/// One `regions:` entry as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegion {
    /// Unique name, used in messages and metrics.
    pub(super) name: String,
    /// First register.
    pub(super) start: u16,
    /// Registers in the region.
    pub(super) count: Spanned<u16>,
    /// Where its words come from (required at the top level; `rtu_poll` in a device).
    #[serde(default)]
    pub(super) source: Option<Spanned<SourceText>>,
    /// Poll period (polled regions).
    #[serde(default)]
    pub(super) every: Option<Spanned<DurationText>>,
    /// Older than this counts as stale.
    #[serde(default)]
    pub(super) max_age: Option<Spanned<DurationText>>,
    /// What the servers do with stale data.
    #[serde(default)]
    pub(super) on_stale: Option<OnStale>,
    /// Poll period of a push region while pushes are missing.
    #[serde(default)]
    pub(super) fallback_poll: Option<Spanned<DurationText>>,
    /// Fixed values of a `static` region, by address.
    #[serde(default)]
    pub(super) values: Option<Spanned<BTreeMap<u16, u16>>>,
    /// The register table (input or holding) it belongs to.
    #[serde(default)]
    pub(super) function: Option<Spanned<Table>>,
}

/// One `devices:` entry as written: a device on the `rtu_poll:` bus.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDevice {
    /// Its name (logs, metrics labels, `/status`).
    pub(super) name: Spanned<String>,
    /// Its RS485 address.
    pub(super) unit_id: Spanned<i64>,
    /// The unit id LAN clients address it with (default: `unit_id`).
    #[serde(default)]
    pub(super) tcp_unit_id: Option<Spanned<i64>>,
    /// Its register profile, relative to the config file.
    #[serde(default)]
    pub(super) profile: Option<Spanned<String>>,
    /// Its registers LAN clients may write.
    #[serde(default)]
    pub(super) writable: Option<Spanned<Vec<Spanned<WritableText>>>>,
    /// Its regions (source `rtu_poll` unless written).
    pub(super) regions: Spanned<Vec<Spanned<RawRegion>>>,
}

/// `push`, `poll`, `static`, or a list of them.
/// `source:` as written.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum SourceText {
    /// One source.
    One(String),
    /// Several sources.
    Many(Vec<String>),
}

/// A duration as written: `1750us`, `200ms`, `2s`, `5m`, `1h`, or `0`.
/// A duration as written.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum DurationText {
    /// A bare number (only 0 is accepted).
    Number(i64),
    /// A float (refused with a hint).
    Float(f64),
    /// Text with a unit.
    Text(String),
}

pub(super) fn default_baud() -> Spanned<u32> {
    unspanned(38_400)
}
pub(super) fn default_data_bits() -> Spanned<u8> {
    unspanned(8)
}
pub(super) fn default_parity() -> Parity {
    Parity::None
}
pub(super) fn default_unit() -> Spanned<u8> {
    unspanned(1)
}
pub(super) fn default_true() -> bool {
    true
}
pub(super) fn default_max_connections() -> Spanned<usize> {
    unspanned(4)
}
pub(super) fn default_poll_baud() -> Spanned<u32> {
    unspanned(9600)
}
pub(super) fn default_retries() -> Spanned<u32> {
    unspanned(1)
}
pub(super) fn default_offline_after() -> Spanned<u32> {
    unspanned(3)
}
pub(super) fn unspanned<T>(value: T) -> Spanned<T> {
    Spanned::new(
        value,
        serde_saphyr::Location::UNKNOWN,
        serde_saphyr::Location::UNKNOWN,
    )
}

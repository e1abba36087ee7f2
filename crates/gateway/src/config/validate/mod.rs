//! The validator: every rule that can be checked before start-up, from the `Raw*` types
//! of [`super::schema`] to a [`super::Config`], with the file, line and key in every
//! message. This file: the entry point, the helpers every rule uses (errors, warnings,
//! durations), the whole-config rules (a server, the register map, unused sections, the
//! `mqtt:` needs, the one-device form as a list of one) and the small sections (`push:`,
//! `poll:`, `status:`, `log:`). The serial line (`rtu:`, `rs485:`) is in `serial`, the
//! region rules in `regions`, the KSTAR sections (`rtu_poll:`, `tcp_server:`) in `kstar`
//! (the keys of `tcp_server:` whose defaults depend on the mode, `unit_id` and
//! `max_connections`, in `lan`), `devices:` in `devices`, `writable:` and the checks
//! against the loaded profile in `profile`. Touches nothing but what it is given.

mod devices;
mod kstar;
mod lan;
mod profile;
mod regions;
mod serial;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde_saphyr::Spanned;

use crate::config::schema::{DurationText, RawConfig, RawLog, RawPoll, RawPush, RawStatus};
use crate::config::{
    canonical_ip, mqtt, parse_duration, Config, ConfigError, DeviceConfig, Loaded, LogConfig,
    MqttConfig, PollConfig, ProfileRef, PushConfig, Region, RtuPollConfig, StatusConfig,
    TcpServerConfig, UnitIds, WritableEntry,
};

use devices::DeviceScope;
pub use profile::{check_against_profile, check_device_against_profile};
use serial::placeholder_rtu;

/// Validate a parsed file; `origin` names it in messages.
pub(super) fn validate(raw: RawConfig, origin: &str) -> Result<Loaded, ConfigError> {
    let mut v = Validator {
        origin,
        warnings: Vec::new(),
        have_rtu_poll: false,
        have_mqtt: raw.mqtt.is_some(),
    };
    let config = v.config(raw)?;
    Ok(Loaded {
        config,
        warnings: v.warnings,
    })
}

/// The state of one validation: where the text came from and what to tell the user.
struct Validator<'a> {
    /// Names the file in every message.
    origin: &'a str,
    /// Warnings so far (usable, but the user should know).
    warnings: Vec<String>,
    /// The config has an `rtu_poll:` section (set before `tcp_server:` and the regions are
    /// validated: without it a config is a KSEM config).
    have_rtu_poll: bool,
    /// The config has an `mqtt:` section: region names become topic levels, and `set` is
    /// where the command topics are.
    have_mqtt: bool,
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

    /// An optional positive duration: `default` when not written.
    fn positive_or(
        &self,
        d: Option<&Spanned<DurationText>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        d.map_or(Ok(default), |d| self.positive(d, key))
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
        self.have_rtu_poll = rtu_poll.is_some();
        let tcp_server = raw
            .tcp_server
            .as_ref()
            .map(|t| self.tcp_server(t))
            .transpose()?;
        let map_line = self.map_line(&raw)?;
        if raw.rtu.is_none() && tcp_server.is_none() {
            return Err(self.err(
                map_line,
                "rtu",
                "no server: add `rtu:` (serve an inverter on RS485) or `tcp_server:` (serve LAN clients)",
            ));
        }
        let mut region_lines: BTreeMap<String, u64> = BTreeMap::new();
        let (named_devices, regions) =
            self.register_map(&raw, push.is_some(), poll.is_some(), &mut region_lines)?;
        if let (Some(raw_p), Some(p)) = (&raw.rtu_poll, &rtu_poll) {
            self.reply_fits_timeout(raw_p, p, &regions);
        }
        let writable = self.writable(&raw)?;
        self.idle_sections(&raw, &regions);
        let profile = self.profile_ref(&raw)?;
        let log = self.log(raw.log.as_ref())?;
        let status = raw
            .status
            .as_ref()
            .map(|s| self.status(s, push.as_ref()))
            .transpose()?;
        let mqtt = self.mqtt(
            &raw,
            named_devices.as_deref(),
            rtu_poll.is_some(),
            &writable,
        )?;
        // One code path: the one-device form is a list of one unnamed device.
        let devices = match (named_devices, &rtu_poll) {
            (Some(d), _) => d,
            (None, Some(p)) => vec![one_device(p, tcp_server.as_ref(), &profile, &writable)],
            (None, None) => Vec::new(),
        };
        Ok(Config {
            devices,
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

    /// Where the register map (`regions:` or `devices:`) is written, for messages that have
    /// no key of their own; a config with neither is refused.
    fn map_line(&self, raw: &RawConfig) -> Result<u64, ConfigError> {
        match (&raw.regions, &raw.devices) {
            (Some(r), _) => Ok(line(r)),
            (None, Some(d)) => Ok(line(d)),
            // What the parser said when `regions:` was required: a shape error.
            (None, None) => Err(ConfigError::Parse {
                path: self.origin.to_string(),
                line: 1,
                column: 1,
                message: "missing `regions:`, the register map to serve (or `devices:`, several devices on the `rtu_poll:` bus)".into(),
                snippet: String::new(),
            }),
        }
    }

    /// The devices of `devices:` (if written) and every region, noting each region's line
    /// in `region_lines`.
    fn register_map(
        &mut self,
        raw: &RawConfig,
        have_push: bool,
        have_poll: bool,
        region_lines: &mut BTreeMap<String, u64>,
    ) -> Result<(Option<Vec<DeviceConfig>>, Vec<Region>), ConfigError> {
        match (&raw.devices, &raw.regions) {
            (Some(list), _) => {
                self.devices_exclusive(raw, list)?;
                let (d, r) = self.devices(raw, list, region_lines)?;
                Ok((Some(d), r))
            }
            (None, Some(list)) => {
                region_lines.extend(list.value.iter().map(|r| (r.value.name.clone(), line(r))));
                Ok((None, self.regions(list, have_push, have_poll, None)?))
            }
            // Refused by `map_line`.
            (None, None) => Ok((None, Vec::new())),
        }
    }

    /// Warn about a source section no region uses: its bus, server or poller stays idle.
    fn idle_sections(&mut self, raw: &RawConfig, regions: &[Region]) {
        let used = |uses: fn(&Region) -> bool| regions.iter().any(uses);
        // (where the section is written, its key, whether a region uses it, what follows)
        let sections = [
            (
                raw.rtu_poll.as_ref().map(line),
                "rtu_poll",
                used(|r| r.source.rtu_poll),
                "no region has source rtu_poll; the bus stays idle",
            ),
            (
                raw.push.as_ref().map(line),
                "push",
                used(|r| r.source.push),
                "no region takes pushes; every push write will get exception 02",
            ),
            (
                raw.poll.as_ref().map(line),
                "poll",
                used(|r| r.source.poll || r.fallback_poll.is_some()),
                "no region is polled; the poller stays idle",
            ),
        ];
        for (at, key, used, message) in sections {
            if let (Some(at), false) = (at, used) {
                self.warn(at, key, message);
            }
        }
    }

    /// The top-level `profile:` (one-device form).
    fn profile_ref(&self, raw: &RawConfig) -> Result<Option<ProfileRef>, ConfigError> {
        match &raw.profile {
            Some(p) if p.value.trim().is_empty() => Err(self.err(
                line(p),
                "profile",
                "must name a profile file, e.g. profiles/ksem-g2.yaml",
            )),
            Some(p) => Ok(Some(ProfileRef {
                path: PathBuf::from(&p.value),
                line: line(p),
            })),
            None => Ok(None),
        }
    }

    /// `mqtt:`. With `devices:`, MQTT publishes each device from its own profile (one HA
    /// device each), and commands need some device with a `writable:` list.
    fn mqtt(
        &mut self,
        raw: &RawConfig,
        named_devices: Option<&[DeviceConfig]>,
        have_rtu_poll: bool,
        writable: &[WritableEntry],
    ) -> Result<Option<MqttConfig>, ConfigError> {
        let Some(m) = &raw.mqtt else {
            return Ok(None);
        };
        let (has_profile, writes) = match named_devices {
            Some(d) => {
                if let Some(bare) = d.iter().find(|d| d.profile.is_none()) {
                    return Err(self.err(
                        line(m),
                        "mqtt",
                        format!("device `{}` has no `profile:`; MQTT publishes the values each device's profile names (one Home Assistant device per device)", bare.name),
                    ));
                }
                (
                    true,
                    have_rtu_poll && d.iter().any(|d| !d.writable.is_empty()),
                )
            }
            None => (raw.profile.is_some(), have_rtu_poll && !writable.is_empty()),
        };
        let (config, warnings) =
            mqtt::validate(m, self.origin, has_profile, writes, named_devices.is_some())?;
        self.warnings.extend(warnings);
        Ok(Some(config))
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
}

fn line<T>(s: &Spanned<T>) -> u64 {
    s.referenced.line()
}

/// The one-device form as a device list of one: an unnamed device with the bus's unit id,
/// `tcp_server.unit_id` (default 1), and the top-level `profile:` and `writable:`.
fn one_device(
    rtu_poll: &RtuPollConfig,
    tcp_server: Option<&TcpServerConfig>,
    profile: &Option<ProfileRef>,
    writable: &[WritableEntry],
) -> DeviceConfig {
    DeviceConfig {
        name: String::new(),
        unit_id: rtu_poll.unit_id,
        tcp_unit_id: tcp_server.map_or_else(|| UnitIds::Only(vec![1]), |t| t.unit_id.clone()),
        profile: profile.clone(),
        writable: writable.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    //! The validator's main rules on small configs; the end-to-end cases (messages, lines,
    //! the shipped files) are in `tests/config.rs`.

    use crate::config::{parse, ConfigError, Loaded};

    const RTU: &str = "rtu: {device: /dev/ttyUSB0}\n";
    const PUSH: &str = "push: {listen: '0.0.0.0:5020', allow_from: [192.168.178.100]}\n";
    const POLL: &str = "poll: {host: '192.168.178.100:502'}\n";

    fn check(text: &str) -> Result<Loaded, ConfigError> {
        parse(text, "v.yaml")
    }

    /// The (line, key, message) of an invalid config; panics on any other outcome.
    pub(super) fn invalid(text: &str) -> (u64, String, String) {
        match check(text) {
            Err(ConfigError::Invalid {
                line, key, message, ..
            }) => (line, key, message),
            other => panic!("expected an invalid config, got {other:?}\n---\n{text}"),
        }
    }

    #[test]
    fn a_minimal_config_is_usable_and_keeps_its_regions() {
        let text =
            format!("{RTU}{PUSH}regions:\n  - {{name: a, start: 0, count: 10, source: push}}\n");
        let loaded = check(&text).unwrap_or_else(|e| panic!("{e}"));
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let c = loaded.config;
        assert!(c.rtu_slave);
        assert_eq!(c.regions.len(), 1);
        assert_eq!((c.regions[0].start, c.regions[0].count), (0, 10));
        assert!(c.regions[0].source.push);
        assert_eq!(c.region_lines.get("a"), Some(&4));
    }

    #[test]
    fn a_region_named_set_is_refused_only_with_mqtt() {
        let region = "regions:\n  - {name: set, start: 0, count: 10, source: push}\n";
        let mqtt = "mqtt: {broker: 'mqtt://127.0.0.1:1883'}\n";
        let (line, key, message) = invalid(&format!("{RTU}{PUSH}{mqtt}{region}"));
        assert_eq!((line, key.as_str()), (5, "regions[0] (set).name"));
        assert!(message.contains("MQTT command level"), "{message}");
        assert!(
            check(&format!("{RTU}{PUSH}{region}")).is_ok(),
            "no mqtt: no topics"
        );
    }

    #[test]
    fn a_config_without_a_server_is_refused() {
        let (line, key, message) = invalid(&format!(
            "{PUSH}regions:\n  - {{name: a, start: 0, count: 10, source: push}}\n"
        ));
        // The line of the regions list: there is no `rtu:` line to point at.
        assert_eq!((line, key.as_str()), (3, "rtu"));
        assert!(message.contains("no server"), "{message}");
    }

    #[test]
    fn a_source_needs_its_section() {
        let (line, _, message) = invalid(&format!(
            "{RTU}regions:\n  - {{name: a, start: 0, count: 10, source: push}}\n"
        ));
        assert_eq!(line, 3);
        assert!(message.contains("push"), "{message}");
    }

    #[test]
    fn overlapping_regions_are_refused_at_the_second() {
        let text = format!(
            "{RTU}{PUSH}regions:\n  - {{name: a, start: 0, count: 10, source: push}}\n  - {{name: b, start: 5, count: 10, source: push}}\n"
        );
        let (line, key, message) = invalid(&text);
        assert_eq!((line, key.as_str()), (5, "regions[1] (b).start"));
        assert!(message.contains("overlaps region `a`"), "{message}");
    }

    #[test]
    fn durations_need_a_unit_and_polls_a_positive_every() {
        let region = |every: &str| {
            format!("{RTU}{POLL}regions:\n  - {{name: a, start: 0, count: 10, source: poll, every: {every}}}\n")
        };
        let (_, key, message) = invalid(&region("10"));
        assert_eq!(key, "regions[0] (a).every");
        assert!(message.contains("has no unit"), "{message}");
        let (_, _, message) = invalid(&region("0s"));
        assert!(message.contains("greater than 0"), "{message}");
        let (_, _, message) = invalid(&format!(
            "{RTU}{POLL}regions:\n  - {{name: a, start: 0, count: 10, source: poll}}\n"
        ));
        assert!(message.contains("needs `every`"), "{message}");
        assert!(check(&region("10s")).is_ok());
    }

    #[test]
    fn an_unused_section_is_a_warning_not_an_error() {
        let text = format!(
            "{RTU}{PUSH}{POLL}regions:\n  - {{name: a, start: 0, count: 10, source: push}}\n"
        );
        let loaded = check(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
        assert!(
            loaded.warnings[0].starts_with("v.yaml:3: poll:"),
            "{:?}",
            loaded.warnings
        );
    }

    #[test]
    fn writable_entries_need_a_tcp_server() {
        let text = format!(
            "{RTU}{PUSH}regions:\n  - {{name: a, start: 0, count: 10, source: push}}\nwritable: [4004]\n"
        );
        let (_, key, message) = invalid(&text);
        assert!(key.starts_with("writable"), "{key}");
        assert!(message.contains("tcp_server"), "{message}");
    }
}

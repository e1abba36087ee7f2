//! The `mqtt:` section: its schema as written, its validated form and its checks.
//!
//! Owns everything about the MQTT settings that can be known before start-up: the broker
//! URL (`mqtt://` or `mqtts://`), topic rules (no `+`/`#`), the publish interval, the
//! discovery prefix and whether commands are accepted, with the warnings about commands on
//! a connection that is anonymous or unencrypted (SECURITY.md "MQTT"). It reads no files (the password
//! file is read by the MQTT server at connect time, so the secret never sits in a
//! [`crate::config::Config`], a log line or `/status`); the one thing it asks the system is
//! this machine's host name (`gethostname`), for the default client id.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::ConfigError;

/// A validated `mqtt:` section.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttConfig {
    /// Broker host name or IP address (without brackets for IPv6).
    pub host: String,
    /// Broker port (1883 for `mqtt://`, 8883 for `mqtts://` unless given).
    pub port: u16,
    /// `mqtts://`: connect with TLS.
    pub tls: bool,
    /// MQTT client id; the broker allows one session per id.
    pub client_id: String,
    /// User name for the broker, if it wants one.
    pub username: Option<String>,
    /// File holding the password (read at each connect; never logged).
    pub password_file: Option<PathBuf>,
    /// PEM file of the CA that signed the broker's certificate (private CA); without it the
    /// system's roots are used.
    pub ca_file: Option<PathBuf>,
    /// Base topic; every topic of the gateway starts with it.
    pub topic: String,
    /// At most one state message per region per interval.
    pub interval: Duration,
    /// Home Assistant discovery prefix; `None` turns discovery off.
    pub discovery: Option<String>,
    /// Accept writes on command topics (KSTAR; goes through the `writable:` policy).
    pub commands: bool,
}

impl MqttConfig {
    /// The gateway's availability topic (`online`/`offline`, retained; the will).
    pub fn status_topic(&self) -> String {
        format!("{}/status", self.topic)
    }

    /// Defaults for `broker` (`mqtt://HOST:PORT`), as if the section named only it; for the
    /// demo and tests.
    pub fn for_broker(broker: &str, topic: &str) -> Result<MqttConfig, String> {
        let (host, port, tls) = parse_broker(broker)?;
        check_topic(topic)?;
        Ok(MqttConfig {
            host,
            port,
            tls,
            client_id: format!("{}-{}", sanitize_id(topic), hostname()),
            username: None,
            password_file: None,
            ca_file: None,
            topic: topic.to_string(),
            interval: Duration::from_secs(1),
            discovery: Some("homeassistant".into()),
            commands: false,
        })
    }

    /// One line for `airbridge check` (never the password).
    pub fn describe(&self) -> String {
        format!(
            "mqtt: {}://{}:{} client_id {} user {} tls_ca {} topic {} interval {} discovery {} commands {}",
            if self.tls { "mqtts" } else { "mqtt" },
            self.host,
            self.port,
            self.client_id,
            self.username.as_deref().unwrap_or("-"),
            self.ca_file
                .as_ref()
                .map_or_else(|| "system".to_string(), |p| p.display().to_string()),
            self.topic,
            humantime::format_duration(self.interval),
            self.discovery.as_deref().unwrap_or("off"),
            if self.commands { "on" } else { "off" },
        )
    }
}

/// The section as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMqtt {
    broker: Spanned<String>,
    #[serde(default)]
    client_id: Option<Spanned<String>>,
    #[serde(default)]
    username: Option<Spanned<String>>,
    #[serde(default)]
    password_file: Option<Spanned<String>>,
    #[serde(default)]
    ca_file: Option<Spanned<String>>,
    #[serde(default)]
    topic: Option<Spanned<String>>,
    #[serde(default)]
    interval: Option<Spanned<IntervalText>>,
    #[serde(default)]
    discovery: Option<Spanned<DiscoveryText>>,
    #[serde(default)]
    commands: Option<Spanned<bool>>,
}

/// `interval:` as written (`1s`, `500ms`; a bare number is an error with a hint).
#[derive(Deserialize)]
#[serde(untagged)]
enum IntervalText {
    /// A bare integer: refused with a hint to add a unit.
    Number(i64),
    /// A bare decimal: refused like a bare integer.
    Float(f64),
    /// A duration with its unit (`1s`, `500ms`).
    Text(String),
}

/// `discovery:` as written: a prefix, or `false` (`true` means the default prefix).
#[derive(Deserialize)]
#[serde(untagged)]
enum DiscoveryText {
    /// `true`: the default prefix; `false`: no discovery.
    On(bool),
    /// The discovery prefix to publish under.
    Prefix(String),
}

fn line<T>(s: &Spanned<T>) -> u64 {
    s.referenced.line()
}

/// Validate the section; the config and its warnings. `profile`: the config names a profile
/// (the values' names come from it). `writes`: the config has `rtu_poll:` and a `writable:`
/// list, the only setting where commands have somewhere to go. `per_device`: `devices:`
/// names the devices, so each has its command topics under `<topic>/<device>/`.
pub(super) fn validate(
    raw: &Spanned<RawMqtt>,
    origin: &str,
    profile: bool,
    writes: bool,
    per_device: bool,
) -> Result<(MqttConfig, Vec<String>), ConfigError> {
    let at = Origin(origin);
    let r = &raw.value;
    if !profile {
        return Err(at.err(
            line(raw),
            "profile",
            "MQTT publishes the values a register profile names: add `profile:` (e.g. profiles/ksem-g2.yaml)".into(),
        ));
    }
    let (host, port, tls) =
        parse_broker(&r.broker.value).map_err(|m| at.err(line(&r.broker), "broker", m))?;
    let client_id = at.client_id(r.client_id.as_ref())?;
    let username = at.text(r.username.as_ref(), "username")?;
    let password_file = at
        .text(r.password_file.as_ref(), "password_file")?
        .map(PathBuf::from);
    if let (Some(p), None) = (&r.password_file, &username) {
        return Err(at.err(
            line(p),
            "password_file",
            "a password needs a `username`".into(),
        ));
    }
    let ca_file = at.text(r.ca_file.as_ref(), "ca_file")?.map(PathBuf::from);
    if let (Some(c), false) = (&r.ca_file, tls) {
        return Err(at.err(
            line(c),
            "ca_file",
            "only for a TLS broker: write the broker as mqtts://HOST:PORT".into(),
        ));
    }
    let topic = match &r.topic {
        Some(t) => {
            check_topic(&t.value).map_err(|m| at.err(line(t), "topic", m))?;
            t.value.trim().to_string()
        }
        None => "airbridge".to_string(),
    };
    let interval = match &r.interval {
        None => Duration::from_secs(1),
        Some(i) => at.interval(i)?,
    };
    let discovery = at.discovery(r.discovery.as_ref())?;
    let commands = r.commands.as_ref().is_some_and(|c| c.value);
    if let (Some(c), true, false) = (&r.commands, commands, writes) {
        return Err(at.err(
            line(c),
            "commands",
            "commands need an `rtu_poll:` device and a `writable:` list (they go through the same policy as Modbus TCP writes)".into(),
        ));
    }
    let config = MqttConfig {
        host,
        port,
        tls,
        client_id,
        username,
        password_file,
        ca_file,
        topic,
        interval,
        discovery,
        commands,
    };
    let warnings = match &r.commands {
        Some(c) if commands => at.command_warnings(line(c), &config, per_device),
        _ => Vec::new(),
    };
    Ok((config, warnings))
}

/// The file being validated: names it in messages.
struct Origin<'a>(&'a str);

impl Origin<'_> {
    /// The error at `l` about `mqtt.<key>`.
    fn err(&self, l: u64, key: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.0.to_string(),
            line: l,
            key: format!("mqtt.{key}"),
            message,
        }
    }

    /// The warning at `l` about `mqtt.<key>`, phrased as the validator's.
    fn warning(&self, l: u64, key: &str, message: &str) -> String {
        format!("{}:{l}: mqtt.{key}: {message}", self.0)
    }

    /// With `commands: true` (written at `l`): whoever may publish on the command topics can
    /// write the `writable:` registers, so say when the broker cannot know who publishes
    /// (anonymous) or when the commands cross the network in clear text (`mqtt://` to a host
    /// that is not this machine).
    fn command_warnings(&self, l: u64, c: &MqttConfig, per_device: bool) -> Vec<String> {
        let mut warnings = Vec::new();
        let set = if per_device {
            format!("{}/+/set/#", c.topic)
        } else {
            format!("{}/set/#", c.topic)
        };
        if c.username.is_none() {
            warnings.push(self.warning(
                l,
                "commands",
                &format!("on over an anonymous broker connection (no `username`): if the broker lets anyone publish, anyone on the network can write the `writable:` registers; give the gateway a `username` and `password_file`, turn off allow_anonymous and let only trusted clients publish on {set} (the broker's ACL)"),
            ));
        }
        if !c.tls && !is_loopback(&c.host) {
            let login = if c.username.is_some() {
                " and the broker password"
            } else {
                ""
            };
            warnings.push(self.warning(
                l,
                "commands",
                &format!("on over an unencrypted connection (mqtt://): commands{login} cross the network in clear text, anyone on the path can read or change them; write the broker as mqtts://HOST:8883 (`ca_file` for a private CA)"),
            ));
        }
        warnings
    }

    /// `client_id`, default `airbridge-<hostname>`.
    fn client_id(&self, c: Option<&Spanned<String>>) -> Result<String, ConfigError> {
        let Some(c) = c else {
            return Ok(format!("airbridge-{}", hostname()));
        };
        let id = c.value.trim();
        if id.is_empty() || id.len() > 256 || id.chars().any(|ch| ch.is_control()) {
            return Err(self.err(
                line(c),
                "client_id",
                "must be 1..256 printable characters".into(),
            ));
        }
        Ok(id.to_string())
    }

    /// An optional text setting that, when written, is not blank.
    fn text(&self, s: Option<&Spanned<String>>, key: &str) -> Result<Option<String>, ConfigError> {
        match s {
            Some(v) if v.value.trim().is_empty() => {
                Err(self.err(line(v), key, "must not be empty".into()))
            }
            Some(v) => Ok(Some(v.value.trim().to_string())),
            None => Ok(None),
        }
    }

    /// A written `interval`: a duration with its unit, 100ms..1h.
    fn interval(&self, i: &Spanned<IntervalText>) -> Result<Duration, ConfigError> {
        let v = match &i.value {
            IntervalText::Text(t) => {
                super::parse_duration(t).map_err(|m| self.err(line(i), "interval", m))?
            }
            IntervalText::Number(n) => {
                return Err(self.err(
                    line(i),
                    "interval",
                    format!("`{n}` has no unit; write e.g. {n}s"),
                ))
            }
            IntervalText::Float(f) => {
                return Err(self.err(
                    line(i),
                    "interval",
                    format!("`{f}` is not a duration; write e.g. 1500ms"),
                ))
            }
        };
        if v < Duration::from_millis(100) || v > Duration::from_secs(3600) {
            return Err(self.err(line(i), "interval", format!("{v:?}: must be 100ms..1h")));
        }
        Ok(v)
    }

    /// `discovery`: the prefix, `homeassistant` when absent or `true`, `None` when `false`.
    fn discovery(&self, d: Option<&Spanned<DiscoveryText>>) -> Result<Option<String>, ConfigError> {
        match d.map(|d| (d, &d.value)) {
            None | Some((_, DiscoveryText::On(true))) => Ok(Some("homeassistant".to_string())),
            Some((_, DiscoveryText::On(false))) => Ok(None),
            Some((d, DiscoveryText::Prefix(p))) => {
                check_topic(p).map_err(|m| self.err(line(d), "discovery", m))?;
                Ok(Some(p.trim().to_string()))
            }
        }
    }
}

/// `mqtt://HOST[:PORT]` or `mqtts://HOST[:PORT]` → host, port, TLS.
fn parse_broker(text: &str) -> Result<(String, u16, bool), String> {
    let t = text.trim();
    let hint = "write mqtt://HOST:PORT or mqtts://HOST:PORT, e.g. mqtt://192.168.178.10:1883";
    let (rest, tls) = if let Some(r) = t.strip_prefix("mqtts://") {
        (r, true)
    } else if let Some(r) = t.strip_prefix("mqtt://") {
        (r, false)
    } else {
        return Err(format!("`{t}`: unknown scheme; {hint}"));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') || rest.contains('@') || rest.contains('?') {
        return Err(format!(
            "`{t}`: only a host and a port (credentials go in username/password_file); {hint}"
        ));
    }
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("`{t}`: unclosed `[`; {hint}"))?;
        match after {
            "" => (h, None),
            p => (
                h,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("`{t}`: {hint}"))?,
                ),
            ),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => {
                return Err(format!(
                    "`{t}`: write an IPv6 address in brackets, e.g. mqtt://[fd00::1]:1883"
                ))
            }
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err(format!("`{t}`: no host; {hint}"));
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("`{t}`: `{p}` is not a port (1..65535)")),
        },
    };
    Ok((host.to_string(), port, tls))
}

/// The broker is this machine (`localhost` or a loopback address): nothing crosses a network.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A topic the gateway publishes under: no wildcards, no empty levels at the ends.
fn check_topic(text: &str) -> Result<(), String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("must not be empty".into());
    }
    if t.contains(['+', '#']) {
        return Err(format!(
            "`{t}` contains a wildcard (+ or #); a topic to publish under cannot"
        ));
    }
    if t.starts_with('/') || t.ends_with('/') || t.contains("//") {
        return Err(format!(
            "`{t}` has an empty level (leading, trailing or double /)"
        ));
    }
    if t.chars().any(|c| c.is_control()) || t.contains(char::is_whitespace) {
        return Err(format!("`{t}` contains spaces or control characters"));
    }
    if t.len() > 128 {
        return Err("longer than 128 characters".into());
    }
    Ok(())
}

fn sanitize_id(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// This machine's host name, for the default client id (`airbridge-<hostname>`).
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is valid for `buf.len()` bytes; gethostname writes at most that many.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    let clean: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    if clean.is_empty() {
        "gateway".into()
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        assert_eq!(
            parse_broker("mqtt://192.168.178.10:1883").unwrap(),
            ("192.168.178.10".into(), 1883, false)
        );
        assert_eq!(
            parse_broker("mqtts://broker.lan").unwrap(),
            ("broker.lan".into(), 8883, true)
        );
        assert_eq!(
            parse_broker("mqtt://[fd00::1]:1884").unwrap(),
            ("fd00::1".into(), 1884, false)
        );
        assert_eq!(
            parse_broker("mqtt://h/").unwrap(),
            ("h".into(), 1883, false)
        );
        for bad in [
            "tcp://h:1883",
            "192.168.1.1:1883",
            "mqtt://",
            "mqtt://h:0",
            "mqtt://h:99999",
            "mqtt://u:p@h:1883",
            "mqtt://h:1883/x",
            "mqtt://fd00::1",
            "mqtt://[fd00::1",
        ] {
            assert!(parse_broker(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn topics() {
        assert!(check_topic("airbridge").is_ok());
        assert!(check_topic("home/meter").is_ok());
        for bad in ["", "a/+/b", "a/#", "/a", "a/", "a//b", "a b"] {
            assert!(check_topic(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn hostname_is_usable_in_a_client_id() {
        let h = hostname();
        assert!(!h.is_empty());
        assert!(h
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }
}

#[cfg(test)]
mod config_tests {
    use crate::config::{parse, ConfigError};

    const BASE: &str = "profile: p.yaml
rtu: {device: /dev/null}
regions:
  - {name: a, start: 0, count: 2, source: static, values: {0: 1}}
";

    fn with(mqtt: &str) -> Result<crate::config::Config, ConfigError> {
        parse(&format!("{BASE}mqtt:\n{mqtt}"), "gw.yaml").map(|l| l.config)
    }

    fn error(mqtt: &str) -> String {
        match with(mqtt) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted:\n{mqtt}"),
        }
    }

    #[test]
    fn a_full_section_is_read_and_described_without_the_password() {
        let c = with(
            "  broker: mqtts://broker.lan:8884
  client_id: gw1
  username: airbridge
  password_file: /etc/airbridge/mqtt.secret
  ca_file: /etc/airbridge/ca.pem
  topic: home/gw
  interval: 500ms
  discovery: ha
",
        )
        .unwrap();
        let m = c.mqtt.clone().unwrap();
        assert_eq!((m.host.as_str(), m.port, m.tls), ("broker.lan", 8884, true));
        assert_eq!(m.interval, std::time::Duration::from_millis(500));
        assert_eq!(m.discovery.as_deref(), Some("ha"));
        let d = c.describe();
        assert!(d.contains("mqtt: mqtts://broker.lan:8884"), "{d}");
        assert!(!d.contains("secret"), "{d}");
    }

    #[test]
    fn defaults_and_discovery_off() {
        let m = with("  broker: mqtt://10.0.0.1\n  discovery: false\n")
            .unwrap()
            .mqtt
            .unwrap();
        assert_eq!(m.port, 1883);
        assert_eq!(m.topic, "airbridge");
        assert!(m.client_id.starts_with("airbridge-"));
        assert_eq!(m.discovery, None);
        assert!(!m.commands);
    }

    #[test]
    fn errors_carry_file_line_and_key() {
        let e = error("  broker: mqtt://h\n  topic: a/#\n");
        assert!(e.starts_with("gw.yaml:7: mqtt.topic:"), "{e}");
        let e = error("  broker: http://h\n");
        assert!(e.starts_with("gw.yaml:6: mqtt.broker:"), "{e}");
        let e = error("  broker: mqtt://h\n  interval: 5\n");
        assert!(e.contains("mqtt.interval") && e.contains("no unit"), "{e}");
        let e = error("  broker: mqtt://h\n  password_file: /x\n");
        assert!(e.contains("needs a `username`"), "{e}");
        let e = error("  broker: mqtt://h\n  ca_file: /x\n");
        assert!(e.contains("mqtts://"), "{e}");
        let e = error("  broker: mqtt://h\n  commands: true\n");
        assert!(e.contains("writable"), "{e}");
        let e = error("  broker: mqtt://h\n  colour: blue\n");
        assert!(e.contains("colour"), "{e}");
        let no_profile = BASE.replace("profile: p.yaml\n", "");
        let e = parse(
            &format!("{no_profile}mqtt: {{broker: 'mqtt://h'}}\n"),
            "gw.yaml",
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("mqtt.profile"), "{e}");
    }

    /// A KSTAR config whose `mqtt:` section is `mqtt` (written from line 7 on); its
    /// warnings about `mqtt.commands`.
    fn command_warnings(mqtt: &str) -> Vec<String> {
        let text = format!(
            "profile: p.yaml
rtu_poll: {{device: /dev/ttyUSB0}}
tcp_server: {{listen: '127.0.0.1:1502', allow_from: [127.0.0.1]}}
regions:
  - {{name: live, start: 3000, count: 10, function: input, source: rtu_poll, every: 1s, max_age: 5s}}
writable: [3200]
mqtt:
{mqtt}"
        );
        parse(&text, "ks.yaml")
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
            .warnings
            .into_iter()
            .filter(|w| w.contains("mqtt."))
            .collect()
    }

    #[test]
    fn commands_over_an_anonymous_or_plain_connection_are_warned_about() {
        // Both: anonymous and in clear text; at the line of `commands:`, with what to do.
        let w = command_warnings(
            "  broker: mqtt://192.168.178.10
  topic: ks
  commands: true
",
        );
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].starts_with("ks.yaml:10: mqtt.commands: on over an anonymous broker connection"),
            "{w:?}"
        );
        assert!(
            w[0].contains("ks/set/#") && w[0].contains("password_file"),
            "{w:?}"
        );
        assert!(
            w[1].starts_with("ks.yaml:10: mqtt.commands: on over an unencrypted connection"),
            "{w:?}"
        );
        assert!(
            w[1].contains("mqtts://") && !w[1].contains("password"),
            "{w:?}"
        );
        // A user, still in clear text: the password crosses the network too.
        let w = command_warnings(
            "  broker: mqtt://broker.lan:1883
  username: gw
  password_file: /x
  commands: true
",
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("unencrypted") && w[0].contains("broker password"),
            "{w:?}"
        );
        // TLS, anonymous: only the anonymity.
        let w = command_warnings(
            "  broker: mqtts://broker.lan
  commands: true
",
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("anonymous") && w[0].contains("airbridge/set/#"),
            "{w:?}"
        );
        // A broker on this machine: nothing crosses a network, only the anonymity is said.
        for host in ["127.0.0.1", "localhost", "[::1]"] {
            let w = command_warnings(&format!(
                "  broker: mqtt://{host}
  commands: true
"
            ));
            assert_eq!(w.len(), 1, "{host}: {w:?}");
            assert!(w[0].contains("anonymous"), "{w:?}");
        }
    }

    #[test]
    fn no_command_warning_with_tls_and_a_user_or_without_commands() {
        let locked = "  broker: mqtts://broker.lan
  username: gw
  password_file: /x
  commands: true
";
        assert_eq!(command_warnings(locked), Vec::<String>::new());
        for off in [
            "  broker: mqtt://192.168.178.10
",
            "  broker: mqtt://192.168.178.10
  commands: false
",
        ] {
            assert_eq!(command_warnings(off), Vec::<String>::new(), "{off}");
        }
    }
}

//! [`Config::describe`]: the human summary of the effective settings that
//! `airbridge check` prints. Pure formatting.

use std::time::Duration;

use crate::config::{Config, LogConfig, Parity};

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
            // With `devices:` the units are the devices' (listed below), not the bus's.
            let unit = if self.named_devices() {
                String::new()
            } else {
                format!(" unit {}", p.unit_id)
            };
            let _ = writeln!(
                s,
                "rtu_poll: {} {} 8{}{}{unit} timeout {:?} gap {:?} retries {} offline_after {} probe_max {:?}",
                p.device, p.baud, parity, p.stop_bits, p.timeout, p.gap, p.retries, p.offline_after, p.probe_max
            );
        }
        if let Some(t) = &self.tcp_server {
            let allow: Vec<String> = t.allow_from.iter().map(ToString::to_string).collect();
            let unit = if self.named_devices() {
                String::new()
            } else {
                format!(" unit {}", t.unit_id)
            };
            let _ = writeln!(
                s,
                "tcp_server: listen {} allow_from [{}] max_connections {}{unit} idle_timeout {:?}",
                t.listen,
                allow.join(", "),
                t.max_connections,
                t.idle_timeout
            );
        }
        if self.named_devices() {
            let _ = writeln!(s, "devices:");
            for d in &self.devices {
                let w: Vec<String> = d.writable.iter().map(|e| e.target.to_string()).collect();
                let _ = writeln!(
                    s,
                    "  {}: unit {} tcp unit {} profile {} writable [{}]",
                    d.name,
                    d.unit_id,
                    d.tcp_unit_id,
                    d.profile
                        .as_ref()
                        .map_or_else(|| "none".to_string(), |p| p.path.display().to_string()),
                    w.join(", ")
                );
            }
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
        // Wide enough for the longest name (`battery1.settings` with `devices:`).
        let w = self
            .regions
            .iter()
            .map(|g| g.name.chars().count())
            .max()
            .unwrap_or(0)
            .max(12);
        let _ = writeln!(
            s,
            "  {:<w$} {:>11} {:>5}  {:<12} {:>8} {:>8}  {:<9} {:>8}",
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
                "  {:<w$} {:>5}..{:<5} {:>5}  {:<12} {:>8} {:>8}  {:<9} {:>8}",
                g.name,
                g.start,
                g.end() - 1,
                g.count,
                match g.table {
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

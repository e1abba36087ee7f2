//! [`Config::describe`]: the human summary of the effective settings that
//! `airbridge check` prints. Pure formatting: one line per section, in the order
//! `rtu`, `rtu.rs485`, `log`, `push`, `poll`, `rtu_poll`, `tcp_server`, `devices`,
//! `writable`, `status`, `mqtt`, then the table of regions.

use std::fmt::Write as _;
use std::time::Duration;

use crate::config::{Config, LogConfig, Parity, Region};

impl Config {
    /// A human summary of the effective settings, as `airbridge check` prints it.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        self.describe_rtu(&mut s);
        if self.log != LogConfig::default() {
            let _ = writeln!(s, "log: level {}", self.log.level);
        }
        self.describe_ksem(&mut s);
        self.describe_kstar(&mut s);
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
        self.describe_regions(&mut s);
        s
    }

    /// `rtu:` (or that there is no RTU slave) and its kernel RS485 settings.
    fn describe_rtu(&self, s: &mut String) {
        let r = &self.rtu;
        if !self.rtu_slave {
            let _ = writeln!(s, "rtu: none (no RTU slave)");
            return;
        }
        let _ = writeln!(
            s,
            "rtu: {} {} {}{}{} unit {} turnaround {:?} frame_timeout {:?} fc04 {}",
            r.device,
            r.baud,
            r.data_bits,
            parity_letter(r.parity),
            r.stop_bits,
            r.unit_id,
            r.turnaround,
            r.frame_timeout,
            if r.input_registers { "on" } else { "off" }
        );
        if r.rs485.enabled {
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
    }

    /// The KSEM's sources: `push:` and `poll:`.
    fn describe_ksem(&self, s: &mut String) {
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
    }

    /// The KSTAR sections: `rtu_poll:`, `tcp_server:` and `devices:`. With `devices:` the
    /// units are the devices' (listed last), not the bus's or the server's.
    fn describe_kstar(&self, s: &mut String) {
        if let Some(p) = &self.rtu_poll {
            let unit = if self.named_devices() {
                String::new()
            } else {
                format!(" unit {}", p.unit_id)
            };
            let _ = writeln!(
                s,
                "rtu_poll: {} {} 8{}{}{unit} timeout {:?} gap {:?} retries {} offline_after {} probe_max {:?}",
                p.device, p.baud, parity_letter(p.parity), p.stop_bits, p.timeout, p.gap, p.retries, p.offline_after, p.probe_max
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
    }

    /// The table of regions: a header and one row each.
    fn describe_regions(&self, s: &mut String) {
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
            region_row(s, g, w);
        }
    }
}

/// One row of the regions table, the name column `w` wide.
fn region_row(s: &mut String, g: &Region, w: usize) {
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

/// The parity's letter in `8N1`-style line settings.
fn parity_letter(parity: Parity) -> char {
    match parity {
        Parity::None => 'N',
        Parity::Even => 'E',
        Parity::Odd => 'O',
    }
}

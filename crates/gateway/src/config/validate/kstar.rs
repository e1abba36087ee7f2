//! The KSTAR sections: `rtu_poll:` (the RTU master on the device's bus) and
//! `tcp_server:` (LAN clients). Touches nothing.

use std::net::SocketAddr;
use std::time::Duration;

use serde_saphyr::Spanned;

use crate::config::schema::{RawRtuPoll, RawTcpServer};
use crate::config::{ConfigError, Parity, RtuPollConfig, TcpServerConfig};
use airbridge_modbus::model::tcp_target;
use airbridge_modbus::timing::t35;

use super::{line, Validator};

impl Validator<'_> {
    pub(super) fn rtu_poll(
        &mut self,
        raw: &Spanned<RawRtuPoll>,
    ) -> Result<RtuPollConfig, ConfigError> {
        let r = &raw.value;
        self.serial_line(
            "rtu_poll",
            &r.device,
            &r.baud,
            &r.data_bits,
            "; KSTAR: 9600",
        )?;
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
        let timeout = self.poll_timeout(r)?;
        let gap = self.gap(r, stop_bits)?;
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
        let probe_max = self.positive_or(
            r.probe_max.as_ref(),
            "rtu_poll.probe_max",
            Duration::from_secs(30),
        )?;
        let late_reply_window = self.late_reply_window(r, timeout)?;
        let write_timeout = self.positive_or(
            r.write_timeout.as_ref(),
            "rtu_poll.write_timeout",
            Duration::from_secs(2),
        )?;
        Ok(RtuPollConfig {
            late_reply_window,
            write_timeout,
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

    /// `rtu_poll.timeout` (default 500ms): at most 10s, which one silent request holds
    /// the bus.
    fn poll_timeout(&self, r: &RawRtuPoll) -> Result<Duration, ConfigError> {
        let timeout = self.positive_or(
            r.timeout.as_ref(),
            "rtu_poll.timeout",
            Duration::from_millis(500),
        )?;
        if timeout > Duration::from_secs(10) {
            return Err(self.err(
                r.timeout.as_ref().map_or(line(&r.device), line),
                "rtu_poll.timeout",
                "more than 10s; one silent request would hold the bus that long",
            ));
        }
        Ok(timeout)
    }

    /// `rtu_poll.gap` between requests (default 20ms, never below t3.5); warned about
    /// when shorter than t3.5.
    fn gap(&mut self, r: &RawRtuPoll, stop_bits: u8) -> Result<Duration, ConfigError> {
        let bits = 1 + 8 + u32::from(r.parity != Parity::None) + u32::from(stop_bits);
        let t35 = t35(r.baud.value, bits);
        let Some(g) = &r.gap else {
            return Ok(Duration::from_millis(20).max(t35));
        };
        let v = self.duration(g, "rtu_poll.gap")?;
        if v < t35 {
            self.warn(line(g), "rtu_poll.gap", format_args!("{v:?} is shorter than t3.5 ({t35:?}) at {} baud; the device may not see two requests apart", r.baud.value));
        }
        Ok(v)
    }

    /// `rtu_poll.late_reply_window` (default: the timeout); warned about when shorter than
    /// the timeout.
    fn late_reply_window(
        &mut self,
        r: &RawRtuPoll,
        timeout: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(w) = &r.late_reply_window else {
            return Ok(timeout);
        };
        let v = self.duration(w, "rtu_poll.late_reply_window")?;
        if v < timeout {
            self.warn(line(w), "rtu_poll.late_reply_window", format_args!("{v:?} is shorter than the timeout ({timeout:?}); a late reply may be taken as the next request's answer"));
        }
        Ok(v)
    }

    /// Warn when `rtu_poll.timeout` is shorter than the wire time of the largest reply a
    /// poll asks for (up to 125 registers per request) at the configured baud: such a read
    /// can only time out.
    pub(super) fn reply_fits_timeout(
        &mut self,
        raw: &Spanned<RawRtuPoll>,
        p: &RtuPollConfig,
        regions: &[crate::config::Region],
    ) {
        let Some(registers) = regions
            .iter()
            .filter(|r| r.source.rtu_poll)
            .map(|r| r.count.min(crate::config::MAX_READ))
            .max()
        else {
            return;
        };
        let wire = reply_wire_time(p, registers);
        if p.timeout < wire {
            let at = raw.value.timeout.as_ref().map_or(line(raw), line);
            self.warn(at, "rtu_poll.timeout", format_args!(
                "{:?} is shorter than the wire time of the largest reply ({registers} registers, {} bytes: {wire:?} at {} baud); that read can only time out",
                p.timeout, 5 + 2 * u32::from(registers), p.baud
            ));
        }
    }

    /// A `device:` naming a `tcp://HOST:PORT` converter: the target must be `HOST:PORT`, and
    /// `check` says that the line settings belong to the converter (here `baud` only times
    /// the bus behind it). Serial devices pass unchanged.
    pub(super) fn bus_device(&mut self, d: &Spanned<String>, key: &str) -> Result<(), ConfigError> {
        let Some(target) = tcp_target(d.value.trim()) else {
            return Ok(());
        };
        let ok = target.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            return Err(self.err(
                line(d),
                key,
                format!(
                    "`{}` is not tcp://HOST:PORT, e.g. tcp://192.168.178.50:8899",
                    d.value
                ),
            ));
        }
        self.warn(line(d), key, format_args!("a TCP converter: baud, parity and stop bits are set in the converter (transparent mode); `baud` here only times the bus behind it"));
        Ok(())
    }

    pub(super) fn tcp_server(
        &mut self,
        raw: &Spanned<RawTcpServer>,
    ) -> Result<TcpServerConfig, ConfigError> {
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
        let max_connections = self.tcp_max_connections(t.max_connections.as_ref())?;
        let idle_timeout = match &t.idle_timeout {
            Some(d) => self.positive(d, "tcp_server.idle_timeout")?,
            None => Duration::from_secs(300),
        };
        Ok(TcpServerConfig {
            listen,
            allow_from,
            max_connections,
            unit_id: self.tcp_unit_ids(t.unit_id.as_ref())?,
            idle_timeout,
        })
    }
}

/// How long the reply to a read of `registers` registers takes on the wire of `p`'s bus.
pub(crate) fn reply_wire_time(p: &RtuPollConfig, registers: u16) -> Duration {
    let bits =
        1 + u32::from(p.data_bits) + u32::from(p.parity != Parity::None) + u32::from(p.stop_bits);
    airbridge_modbus::timing::wire_time(5 + 2 * usize::from(registers), p.baud, bits)
}

//! The serial sections: `rtu:` (the line to the inverter) and its `rs485:` settings,
//! the device, baud and data bits rules it shares with `rtu_poll:`, and the placeholder
//! line of a config without `rtu:`. Touches nothing.

use std::time::Duration;

use serde_saphyr::Spanned;

use crate::config::schema::{DurationText, RawRs485, RawRtu};
use crate::config::{ConfigError, Parity, Rs485Config, RtuConfig};
use airbridge_modbus::model::tcp_target;
use airbridge_modbus::timing::t35;

use super::{line, Validator};

impl Validator<'_> {
    pub(super) fn rs485(
        &mut self,
        raw: Option<&Spanned<RawRs485>>,
    ) -> Result<Rs485Config, ConfigError> {
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

    /// The `device`, `baud` and `data_bits` of the serial section `section` (`rtu`,
    /// `rtu_poll`); `baud_hint` ends the baud message's range, e.g. `; KSTAR: 9600`.
    pub(super) fn serial_line(
        &mut self,
        section: &str,
        device: &Spanned<String>,
        baud: &Spanned<u32>,
        data_bits: &Spanned<u8>,
        baud_hint: &str,
    ) -> Result<(), ConfigError> {
        if device.value.trim().is_empty() {
            return Err(self.err(
                line(device),
                &format!("{section}.device"),
                "must name a serial device, e.g. /dev/ttyUSB0, or tcp://HOST:PORT",
            ));
        }
        self.bus_device(device, &format!("{section}.device"))?;
        if !(300..=4_000_000).contains(&baud.value) {
            return Err(self.err(
                line(baud),
                &format!("{section}.baud"),
                format!(
                    "{} is not a usable baud rate (300..4000000{baud_hint})",
                    baud.value
                ),
            ));
        }
        if data_bits.value != 8 {
            return Err(self.err(
                line(data_bits),
                &format!("{section}.data_bits"),
                "Modbus RTU uses 8 data bits",
            ));
        }
        Ok(())
    }

    pub(super) fn rtu(&mut self, raw: &Spanned<RawRtu>) -> Result<RtuConfig, ConfigError> {
        let r = &raw.value;
        self.serial_line("rtu", &r.device, &r.baud, &r.data_bits, "")?;
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
        if cfg.rs485.enabled && tcp_target(&cfg.device).is_some() {
            return Err(self.err(
                r.rs485.as_ref().map_or(line(&r.device), line),
                "rtu.rs485",
                "needs a tty; a TCP converter drives its RS485 transceiver itself",
            ));
        }
        let t35 = t35(cfg.baud, cfg.bits_per_char());
        cfg.turnaround = self.turnaround(r.turnaround.as_ref(), t35, cfg.baud)?;
        cfg.frame_timeout = self.frame_timeout(r.frame_timeout.as_ref(), t35)?;
        Ok(cfg)
    }

    /// `rtu.turnaround` (default t3.5): at most 1s; warned about when shorter than t3.5
    /// at `baud`.
    fn turnaround(
        &mut self,
        t: Option<&Spanned<DurationText>>,
        t35: Duration,
        baud: u32,
    ) -> Result<Duration, ConfigError> {
        let Some(t) = t else {
            return Ok(t35);
        };
        let v = self.duration(t, "rtu.turnaround")?;
        if v > Duration::from_secs(1) {
            return Err(self.err(
                line(t),
                "rtu.turnaround",
                "more than 1s; the inverter would time out",
            ));
        }
        if v < t35 {
            self.warn(line(t), "rtu.turnaround", format_args!("{v:?} is shorter than t3.5 ({t35:?}) for {baud} baud; a strict master may not see the reply"));
        }
        Ok(v)
    }

    /// `rtu.frame_timeout`: at most 1s; warned about when shorter than t3.5.
    fn frame_timeout(
        &mut self,
        t: Option<&Spanned<DurationText>>,
        t35: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(t) = t else {
            // 20 ms, but never shorter than t3.5 (32 ms at 1200 baud).
            return Ok(Duration::from_millis(20).max(t35));
        };
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
        Ok(v)
    }
}

/// The `rtu` of a config without an `rtu:` section (no RTU slave runs).
pub(super) fn placeholder_rtu() -> RtuConfig {
    RtuConfig {
        turnaround: t35(38_400, 11),
        ..RtuConfig::master_line(String::new(), 38_400, 8, Parity::None, 2, 1)
    }
}

//! The serial edge: opens a port with exactly the configured settings.
//!
//! Owns nothing after the open; callers own the stream. Kept apart so that everything
//! else can be tested on in-memory streams and pseudo-terminals. Also owns the kernel's
//! RS485 mode ([`set_rs485`]: `TIOCSRS485`, read back with `TIOCGRS485`), applied at open
//! when `rtu.rs485` asks for it.

use std::os::fd::AsRawFd;
use std::time::Duration;

use crate::config::{Parity, Rs485Config, RtuConfig};

/// Open `cfg.device` with the configured baud, data bits, parity and stop bits, no flow
/// control, and the kernel RS485 mode if `rtu.rs485` is enabled. The error names the
/// device and what failed.
pub fn open(cfg: &RtuConfig) -> anyhow::Result<tokio_serial::SerialStream> {
    use tokio_serial::SerialPortBuilderExt as _;
    let data_bits = match cfg.data_bits {
        5 => tokio_serial::DataBits::Five,
        6 => tokio_serial::DataBits::Six,
        7 => tokio_serial::DataBits::Seven,
        _ => tokio_serial::DataBits::Eight,
    };
    let parity = match cfg.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Even => tokio_serial::Parity::Even,
        Parity::Odd => tokio_serial::Parity::Odd,
    };
    let stop_bits = if cfg.stop_bits == 2 {
        tokio_serial::StopBits::Two
    } else {
        tokio_serial::StopBits::One
    };
    let stream = tokio_serial::new(&cfg.device, cfg.baud)
        .data_bits(data_bits)
        .parity(parity)
        .stop_bits(stop_bits)
        .flow_control(tokio_serial::FlowControl::None)
        .open_native_async();
    let stream = match stream {
        Ok(stream) => stream,
        // qemu-user (CI's arm64 runs) refuses termios2; real kernels never get here.
        Err(_) if crate::link::serial_compat::termios2_refused(&cfg.device) => {
            crate::link::serial_compat::open(cfg).map_err(|e| {
                anyhow::anyhow!("serial device {} (classic termios): {e}", cfg.device)
            })?
        }
        Err(e) => anyhow::bail!("serial device {}: {e}", cfg.device),
    };
    if cfg.rs485.enabled {
        let got = set_rs485(&stream, &cfg.rs485)
            .map_err(|e| anyhow::anyhow!("serial device {}: {e}", cfg.device))?;
        tracing::info!(device = %cfg.device, "kernel RS485 mode: {got}");
    }
    Ok(stream)
}

// linux/serial.h
const SER_RS485_ENABLED: u32 = 1 << 0;
const SER_RS485_RTS_ON_SEND: u32 = 1 << 1;
const SER_RS485_RTS_AFTER_SEND: u32 = 1 << 2;
const SER_RS485_RX_DURING_TX: u32 = 1 << 4;

/// `struct serial_rs485` of linux/serial.h (32 bytes; the padding holds newer fields that
/// we leave 0).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct SerialRs485 {
    /// SER_RS485_* bits.
    flags: u32,
    /// RTS asserted this many ms before sending.
    delay_rts_before_send: u32,
    /// RTS held this many ms after sending.
    delay_rts_after_send: u32,
    /// Newer kernel fields; left 0.
    padding: [u32; 5],
}

/// The RS485 state the driver reports (`TIOCGRS485`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rs485State {
    /// RS485 mode is on in the driver.
    pub enabled: bool,
    /// RTS level while sending (drives the transceiver).
    pub rts_on_send: bool,
    /// RTS level after sending.
    pub rts_after_send: bool,
    /// We receive our own transmission (half-duplex echo expected).
    pub rx_during_tx: bool,
    /// Driver delay between RTS and the first bit.
    pub delay_before_send: Duration,
    /// Driver delay between the last bit and releasing RTS.
    pub delay_after_send: Duration,
}

impl std::fmt::Display for Rs485State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}, RTS {} while sending and {} after, delay before {:?}, after {:?}{}",
            if self.enabled { "enabled" } else { "disabled" },
            u8::from(self.rts_on_send),
            u8::from(self.rts_after_send),
            self.delay_before_send,
            self.delay_after_send,
            if self.rx_during_tx {
                ", receiving while sending (expect echoes)"
            } else {
                ""
            }
        )
    }
}

/// Why the RS485 mode could not be set.
#[derive(Debug, thiserror::Error)]
pub enum Rs485Error {
    /// The driver has no kernel RS485 mode (TIOCSRS485 not supported).
    #[error("rtu.rs485 is enabled, but this adapter's driver does not support the kernel RS485 mode (TIOCSRS485: {0}); use an adapter with automatic direction control and remove rtu.rs485 (or set enabled: false)")]
    Unsupported(std::io::Error),
    /// TIOCSRS485 failed for another reason.
    #[error("setting the kernel RS485 mode failed (TIOCSRS485: {0})")]
    Set(std::io::Error),
    /// TIOCGRS485 (the read-back check) failed.
    #[error("reading back the kernel RS485 mode failed (TIOCGRS485: {0})")]
    Get(std::io::Error),
    /// The driver accepted the mode but reports a different one back.
    #[error("the driver did not keep the RS485 mode: asked for {asked}, it reports {got}")]
    NotKept { asked: Rs485State, got: Rs485State },
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// Apply `cfg` with `TIOCSRS485` and read the result back with `TIOCGRS485`. The driver may
/// adjust values (e.g. clamp delays); what it reports is returned. Errors say whether the
/// adapter lacks the mode altogether (`ENOTTY`/`EINVAL`/`EOPNOTSUPP`) or something else
/// failed.
pub fn set_rs485(port: &impl AsRawFd, cfg: &Rs485Config) -> Result<Rs485State, Rs485Error> {
    let fd = port.as_raw_fd();
    let mut flags = 0;
    if cfg.enabled {
        flags |= SER_RS485_ENABLED;
    }
    if cfg.rts_on_send {
        flags |= SER_RS485_RTS_ON_SEND;
    }
    if cfg.rts_after_send {
        flags |= SER_RS485_RTS_AFTER_SEND;
    }
    let mut want = SerialRs485 {
        flags,
        delay_rts_before_send: millis(cfg.delay_before_send),
        delay_rts_after_send: millis(cfg.delay_after_send),
        ..Default::default()
    };
    // SAFETY: `fd` is an open descriptor borrowed from `port` for the call; TIOCSRS485 reads
    // (and may update) one `struct serial_rs485`, which `want` is, laid out as the kernel's.
    let r = unsafe { libc::ioctl(fd, libc::TIOCSRS485 as _, &mut want as *mut SerialRs485) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENOTTY | libc::EINVAL | libc::EOPNOTSUPP) => Rs485Error::Unsupported(e),
            _ => Rs485Error::Set(e),
        });
    }
    let got = get_rs485(port)?;
    let asked = state(&SerialRs485 { flags, ..want });
    if got.enabled != asked.enabled {
        return Err(Rs485Error::NotKept { asked, got });
    }
    Ok(got)
}

/// The driver's RS485 state (`TIOCGRS485`).
pub fn get_rs485(port: &impl AsRawFd) -> Result<Rs485State, Rs485Error> {
    let mut got = SerialRs485::default();
    // SAFETY: as in `set_rs485`; TIOCGRS485 writes one `struct serial_rs485` into `got`.
    let r = unsafe {
        libc::ioctl(
            port.as_raw_fd(),
            libc::TIOCGRS485 as _,
            &mut got as *mut SerialRs485,
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENOTTY | libc::EINVAL | libc::EOPNOTSUPP) => Rs485Error::Unsupported(e),
            _ => Rs485Error::Get(e),
        });
    }
    Ok(state(&got))
}

fn state(s: &SerialRs485) -> Rs485State {
    Rs485State {
        enabled: s.flags & SER_RS485_ENABLED != 0,
        rts_on_send: s.flags & SER_RS485_RTS_ON_SEND != 0,
        rts_after_send: s.flags & SER_RS485_RTS_AFTER_SEND != 0,
        rx_during_tx: s.flags & SER_RS485_RX_DURING_TX != 0,
        delay_before_send: Duration::from_millis(u64::from(s.delay_rts_before_send)),
        delay_after_send: Duration::from_millis(u64::from(s.delay_rts_after_send)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_serial::SerialPort as _;

    #[test]
    fn the_struct_has_the_kernels_size() {
        assert_eq!(std::mem::size_of::<SerialRs485>(), 32);
    }

    #[tokio::test]
    async fn a_pty_has_no_rs485_mode_and_the_error_says_what_to_do() {
        let (_a, b) = tokio_serial::SerialStream::pair().expect("pty pair");
        let cfg = Rs485Config {
            enabled: true,
            ..Default::default()
        };
        let err = set_rs485(&b, &cfg).expect_err("a pty does not do RS485");
        assert!(matches!(err, Rs485Error::Unsupported(_)), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("does not support the kernel RS485 mode"),
            "{msg}"
        );
        assert!(msg.contains("TIOCSRS485"), "{msg}");
        assert!(msg.contains("rtu.rs485"), "{msg}");
        assert!(matches!(get_rs485(&b), Err(Rs485Error::Unsupported(_))));
    }

    #[tokio::test]
    async fn open_with_rs485_on_a_pty_fails_naming_the_device() {
        let (_a, b) = tokio_serial::SerialStream::pair().expect("pty pair");
        let device = b.name().expect("pty path");
        drop(b);
        let yaml = format!(
            "rtu: {{device: '{device}', rs485: {{delay_before_send: 1ms}}}}
regions:
  - {{name: id, start: 8192, count: 1, source: static, values: {{8192: 1}}}}
"
        );
        let cfg = crate::config::parse(&yaml, "test").expect("config").config;
        assert!(cfg.rtu.rs485.enabled, "a written section means enabled");
        assert_eq!(cfg.rtu.rs485.delay_before_send, Duration::from_millis(1));
        let err = open(&cfg.rtu).expect_err("refused").to_string();
        assert!(err.contains(&device), "{err}");
        assert!(
            err.contains("does not support the kernel RS485 mode"),
            "{err}"
        );
        // Without the section the same pty opens.
        let mut plain = cfg.rtu.clone();
        plain.rs485 = Rs485Config::default();
        assert!(open(&plain).is_ok());
    }

    #[test]
    fn state_decodes_flags_and_delays() {
        let s = state(&SerialRs485 {
            flags: SER_RS485_ENABLED | SER_RS485_RTS_ON_SEND | SER_RS485_RX_DURING_TX,
            delay_rts_before_send: 2,
            delay_rts_after_send: 0,
            ..Default::default()
        });
        assert!(s.enabled && s.rts_on_send && !s.rts_after_send && s.rx_during_tx);
        assert_eq!(s.delay_before_send, Duration::from_millis(2));
        assert!(s.to_string().contains("expect echoes"), "{s}");
    }

    #[test]
    fn config_rejects_what_the_kernel_would_not_take() {
        let base = |rs: &str| {
            format!(
                "rtu: {{device: /dev/ttyUSB0, rs485: {rs}}}
regions:
  - {{name: id, start: 8192, count: 1, source: static, values: {{8192: 1}}}}
"
            )
        };
        for (rs, want) in [
            ("{rts_on_send: true, rts_after_send: true}", "must differ"),
            ("{delay_before_send: 1500us}", "whole milliseconds"),
            ("{delay_after_send: 200ms}", "at most 100ms"),
            ("{bogus: 1}", "bogus"),
        ] {
            let e = crate::config::parse(&base(rs), "gw.yaml")
                .expect_err(rs)
                .to_string();
            assert!(e.contains(want), "{rs}: {e}");
        }
        let off = crate::config::parse(&base("{enabled: false}"), "gw.yaml")
            .expect("ok")
            .config;
        assert!(!off.rtu.rs485.enabled);
    }
}

//! The serial edge: opens a port with exactly the configured settings.
//!
//! Owns nothing after the open; callers own the stream. Kept apart so that everything
//! else can be tested on in-memory streams and pseudo-terminals.

use crate::config::{Parity, RtuConfig};

/// Open `cfg.device` with the configured baud, data bits, parity and stop bits, no flow
/// control. The error names the device and what failed.
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
    tokio_serial::new(&cfg.device, cfg.baud)
        .data_bits(data_bits)
        .parity(parity)
        .stop_bits(stop_bits)
        .flow_control(tokio_serial::FlowControl::None)
        .open_native_async()
        .map_err(|e| anyhow::anyhow!("serial device {}: {e}", cfg.device))
}

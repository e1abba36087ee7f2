//! What the two Modbus TCP servers for the LAN share — the KSTAR devices' server
//! ([`crate::servers::modbus_tcp`]) and the meter's ([`crate::servers::meter_tcp`]): their
//! counters, and the one read that answers a LAN client from the image. Touches the image
//! (reads only) and the counters.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tokio::time::Instant;
use tokio_modbus::ExceptionCode;

use crate::config::MAX_READ;
use crate::image::{DeviceTable, Image, ReadRefusal, WarmUp};
use crate::link::tcp_front::{FrontCounters, FrontStats};

/// Counters of a Modbus TCP server for the LAN.
#[derive(Debug, Default)]
pub struct TcpStats {
    /// Reads answered with data.
    pub reads: AtomicU64,
    /// Reads refused because a region was stale or not read yet (exception 0B).
    pub reads_stale: AtomicU64,
    /// Reads outside the regions (02) or with a bad count (03).
    pub reads_refused: AtomicU64,
    /// Writes the device confirmed.
    pub writes_ok: AtomicU64,
    /// Writes refused before the bus (02/03): not allowed, out of range.
    pub writes_refused: AtomicU64,
    /// Writes the device refused or did not answer.
    pub writes_failed: AtomicU64,
    /// Requests with an unsupported function code or a foreign unit id.
    pub bad_requests: AtomicU64,
    /// Admission and idleness, counted by the TCP front (`tcp_server.allow_from`, limits).
    pub front: FrontCounters,
}

impl FrontStats for TcpStats {
    fn front(&self) -> &FrontCounters {
        &self.front
    }
}

/// Answer a LAN read with function code `fc` from the image's table for it (see
/// [`Image::table_for`]): the meter server's reads.
pub(crate) fn read_fc(
    image: &Image,
    stats: &TcpStats,
    fc: u8,
    address: u16,
    count: u16,
) -> Result<Vec<u16>, ExceptionCode> {
    read(image, stats, image.table_for(fc).into(), address, count)
}

/// Answer a LAN read of `table` from one snapshot; every touched region is checked on its
/// own (0B while warming up or stale, 02 outside the regions, 03 for a bad count).
pub(crate) fn read(
    image: &Image,
    stats: &TcpStats,
    table: DeviceTable,
    address: u16,
    count: u16,
) -> Result<Vec<u16>, ExceptionCode> {
    if count == 0 || count > MAX_READ {
        stats.reads_refused.fetch_add(1, Relaxed);
        return Err(ExceptionCode::IllegalDataValue);
    }
    let snap = image.load();
    match image.check_read(
        &snap,
        table,
        address,
        count,
        Instant::now(),
        WarmUp::Touched,
    ) {
        Ok(touched) => {
            let mut out = Vec::with_capacity(usize::from(count));
            image.for_each_word(&snap, touched, address, count, |w| out.push(w));
            stats.reads.fetch_add(1, Relaxed);
            Ok(out)
        }
        Err(ReadRefusal::OutsideRegions) => {
            stats.reads_refused.fetch_add(1, Relaxed);
            Err(ExceptionCode::IllegalDataAddress)
        }
        Err(ReadRefusal::WarmingUp | ReadRefusal::Stale(_)) => {
            stats.reads_stale.fetch_add(1, Relaxed);
            Err(ExceptionCode::GatewayTargetDevice)
        }
    }
}

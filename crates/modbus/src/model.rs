//! Domain types shared by the config, the image, the protocol code and the servers: what a
//! region is, which register table it lives in, what a stale read gets, what a server
//! did with a request, and how a bus device path names a TCP converter. Plain data;
//! imports nothing of the crate, so every layer may use it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// Largest register count of one Modbus read request.
pub const MAX_READ: u16 = 125;

/// How a bus device path names an RS485-to-Ethernet converter: `tcp://HOST:PORT`.
pub const TCP_SCHEME: &str = "tcp://";

/// `HOST:PORT` of a `tcp://HOST:PORT` device path; `None` for a serial device.
pub fn tcp_target(device: &str) -> Option<&str> {
    device.strip_prefix(TCP_SCHEME)
}

/// The register table a register lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    /// Holding registers: read with FC03, written with FC06/FC16.
    Holding,
    /// Input registers: read with FC04. These devices also write some with FC06 at the
    /// same number (documented per register with `writes`).
    Input,
}

impl Table {
    /// The read function code.
    pub fn read_code(self) -> u8 {
        match self {
            Table::Holding => 3,
            Table::Input => 4,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Holding => "holding",
            Table::Input => "input",
        }
    }
}

/// What a read of a stale region gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStale {
    /// Answer with the stale data.
    Serve,
    /// Exception 04 (server device failure).
    Exception,
    /// No reply at all, as a disconnected meter.
    Silence,
}

impl OnStale {
    pub fn as_str(self) -> &'static str {
        match self {
            OnStale::Serve => "serve",
            OnStale::Exception => "exception",
            OnStale::Silence => "silence",
        }
    }
}

/// Where a region's data comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sources {
    /// Written by the KSEM's push (the push server accepts writes here).
    pub push: bool,
    /// Read from the KSEM's Modbus TCP slave by the poller.
    pub poll: bool,
    /// Static words from the config (`values:`), filled once at start.
    pub fixed: bool,
    /// Polled over RTU by the `rtu_poll` master.
    pub rtu_poll: bool,
}

impl fmt::Display for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.rtu_poll {
            return f.write_str("rtu_poll");
        }
        match (self.push, self.poll, self.fixed) {
            (true, true, _) => f.write_str("[push, poll]"),
            (true, false, _) => f.write_str("push"),
            (false, true, _) => f.write_str("poll"),
            _ => f.write_str("static"),
        }
    }
}

/// One block of consecutive registers served from the image.
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    /// Unique name, used in logs, `/status`, metrics and reload messages.
    pub name: String,
    /// First register address.
    pub start: u16,
    /// Number of registers.
    pub count: u16,
    /// Where its data comes from.
    pub source: Sources,
    /// Poll interval (poll sources).
    pub every: Option<Duration>,
    /// Older than this since its last write, the region is stale.
    pub max_age: Duration,
    /// What a read of the region gets while it is stale.
    pub on_stale: OnStale,
    /// Poll a push region at this interval while pushes have stopped.
    pub fallback_poll: Option<Duration>,
    /// Fixed words of a static region (address → value); other words read 0.
    pub values: BTreeMap<u16, u16>,
    /// The register table the region is read from and served as (`function: input|holding`);
    /// `None`: one table served to FC03 (and FC04 with `rtu.input_registers`), as for the KSEM.
    pub table: Option<Table>,
    /// The device on the `rtu_poll:` bus it belongs to (index in `Config::devices`); 0 in a
    /// KSEM or one-device config. Devices may use the same addresses.
    pub device: usize,
}

impl Region {
    /// One past the last address.
    pub fn end(&self) -> u32 {
        u32::from(self.start) + u32::from(self.count)
    }
    pub fn contains(&self, address: u16) -> bool {
        address >= self.start && u32::from(address) < self.end()
    }
}

/// Exception codes the slave sends.
pub mod exception {
    pub const ILLEGAL_FUNCTION: u8 = 0x01;
    pub const ILLEGAL_DATA_ADDRESS: u8 = 0x02;
    pub const ILLEGAL_DATA_VALUE: u8 = 0x03;
    pub const SERVER_DEVICE_FAILURE: u8 = 0x04;
}

/// What the slave does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A normal reply of `len` bytes is in the buffer.
    Data { len: usize },
    /// An exception reply of 5 bytes is in the buffer.
    Exception { code: u8 },
    /// No reply: not every region was filled yet.
    SilentWarmup,
    /// No reply: a touched region is stale and its policy is silence.
    SilentStale,
}

impl Answer {
    /// Bytes to send, if any.
    pub fn reply_len(self) -> Option<usize> {
        match self {
            Answer::Data { len } => Some(len),
            Answer::Exception { .. } => Some(5),
            Answer::SilentWarmup | Answer::SilentStale => None,
        }
    }
}

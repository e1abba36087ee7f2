//! (stub: replaced by the framer branch)
pub const MAX_ADU: usize = 256;
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Read {
        function: u8,
        address: u16,
        count: u16,
    },
    Other {
        function: u8,
    },
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    Request(Request),
    Foreign { unit: u8, function: u8 },
    Broadcast { function: u8 },
}
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FramerStats {
    pub requests: u64,
    pub foreign: u64,
    pub broadcast: u64,
    pub crc_errors: u64,
    pub garbage_bytes: u64,
    pub partial_discarded: u64,
    pub oversize: u64,
}
pub struct Framer {
    unit: u8,
}
impl Framer {
    pub fn new(unit: u8) -> Self {
        Framer { unit }
    }
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        bytes.len()
    }
    pub fn next_frame(&mut self) -> Option<Frame> {
        None
    }
    pub fn on_silence(&mut self) -> Option<Frame> {
        None
    }
    pub fn buffered(&self) -> usize {
        0
    }
    pub fn stats(&self) -> FramerStats {
        FramerStats::default()
    }
    pub fn unit(&self) -> u8 {
        self.unit
    }
}

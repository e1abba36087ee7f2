//! What the two pollers (`ksem_poll`, `rtu_poll`) share about a region on their schedule:
//! which region, which registers, how often and when next. Touches nothing.

use std::time::Duration;

use tokio::time::Instant;

/// One region on a poller's schedule.
#[derive(Debug)]
pub(crate) struct Slot {
    /// The region's index in the image.
    pub(crate) region: usize,
    /// The region's name, for logs and per-region counters.
    pub(crate) name: String,
    /// First register.
    pub(crate) start: u16,
    /// Registers in the region.
    pub(crate) count: u16,
    /// Poll interval.
    pub(crate) every: Duration,
    /// When the region is next due.
    pub(crate) next: Instant,
    /// The last read failed (logged once per streak).
    pub(crate) failing: bool,
}

impl Slot {
    /// Region `region` of the image, due at `next`.
    pub(crate) fn new(
        region: usize,
        r: &airbridge_modbus::model::Region,
        every: Duration,
        next: Instant,
    ) -> Self {
        Slot {
            region,
            name: r.name.clone(),
            start: r.start,
            count: r.count,
            every,
            next,
            failing: false,
        }
    }

    /// One past its last register.
    pub(crate) fn end(&self) -> u32 {
        u32::from(self.start) + u32::from(self.count)
    }
}

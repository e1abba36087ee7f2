//! Sources: everything that writes into the [`crate::image::Image`], and nothing else.
//! [`push`] is the Modbus TCP server the KSEM writes its time-critical registers to,
//! [`ksem_poll`] the client that reads the slow blocks from the KSEM's slave, [`rtu_poll`]
//! the RTU master that polls the KSTAR devices on their bus (and runs LAN writes between
//! polls); `schedule` what the two pollers share about a region on their schedule.

pub mod ksem_poll;
pub mod push;
pub(crate) mod rtu_poll;
pub(crate) mod schedule;

//! The KSEM → Plenticore direction: the RTU slave, the gateway end to end between simulated
//! devices, faults, RS485 behind a TCP converter, sharing the meter, and the soak run. One
//! test binary per area; shared helpers are in tests/common.

#[path = "../common/mod.rs"]
mod common;

mod e2e;
mod faults;
mod rtu_over_tcp;
mod rtu_slave;
mod share;
mod soak;

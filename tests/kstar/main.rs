//! The KSTAR direction: the vendor documents' golden frames, a simulated device end to end,
//! faults on the bus, several devices on one bus, a late adapter, and the real binary. One
//! test binary per area; shared helpers are in tests/common.

#[path = "../common/mod.rs"]
mod common;

mod kstar_cli;
mod kstar_e2e;
mod kstar_faults;
mod kstar_golden;
mod kstar_multi;
mod late_device;

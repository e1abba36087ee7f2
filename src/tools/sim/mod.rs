//! Simulators: real programs speaking real Modbus, used by `airbridge simulate`,
//! `airbridge demo` and the integration tests. They share nothing with the
//! gateway but the CRC and the wire. [`fault`] holds misbehaving peers for the fault and
//! soak tests.

pub mod device;
pub mod fault;
pub mod inverter;
pub mod ksem;

//! Simulators: real programs speaking real Modbus, used by `airbridge simulate`,
//! `airbridge demo`, the bench and the integration tests. They speak to the gateway only
//! over the wire; what they take from the crates below is the codec (CRC, the master's
//! encoders and reply parser), the RTU master's stream side and the line opener, and
//! register profiles. [`fault`] holds misbehaving peers for the fault and soak tests;
//! [`demo`] runs a simulated meter or device, a real gateway and a simulated client in one
//! process.

pub mod device;
pub mod fault;
pub mod inverter;
pub mod ksem;

pub mod commands;
pub mod demo;

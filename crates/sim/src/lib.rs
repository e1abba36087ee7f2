//! Simulators: real programs speaking real Modbus, used by `airbridge simulate`,
//! `airbridge demo`, the bench and the integration tests. [`ksem`] is the KSEM G2 meter
//! (Modbus TCP slave and pusher), [`inverter`] the Plenticore polling over RTU, [`device`]
//! RS485 devices answering as a register profile describes them, and [`fault`] misbehaving
//! peers for the fault and soak tests. [`commands`] are the `simulate` and `demo`
//! subcommands; the demo itself (private) runs a simulated meter or devices, the real
//! gateway and a simulated client in one process.
//!
//! The simulators speak to the gateway only over the wire. What they take from the crates
//! below: from `airbridge-modbus` the CRC, the RTU request-length rule and the wire timing;
//! from `airbridge-gateway` the RTU master (the inverter polls through it), the serial line
//! opener, the Modbus TCP front's request adapter and register profiles. The demo and the
//! commands also take the gateway itself: its config, its start and the shutdown signal.

pub mod device;
pub mod fault;
pub mod inverter;
pub mod ksem;

pub mod commands;
mod demo;

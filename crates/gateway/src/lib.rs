//! airbridge: a Modbus gateway appliance.
//!
//! Data flows one way: **sources → image → servers**, and the tree says so:
//!
//! ```text
//! sources/   push (the KSEM writes to us) · ksem_poll (we read the KSEM) · rtu_poll (we read a KSTAR bus)
//!    ↓
//! image      one lock-free register image: a snapshot per reader, an age per region
//!    ↓
//! servers/   rtu_slave (the inverter on RS485) · modbus_tcp (KSTAR LAN clients) · meter_tcp (the
//!            KSEM image for the house) · mqtt (Home Assistant)
//! ```
//!
//! Beneath them: [`model`] (domain types), [`modbus`] (the pure codec: bytes in, frames
//! out), [`link`] (the I/O edges: serial ports, the TCP front, the reopen loop, the RTU
//! master), [`config`] (what the user wrote, validated), [`control`] (register profiles and
//! the write policy), [`ops`] (journal, logging, counters). Above them: [`app`] wires a
//! gateway together, supervises it, reloads it and reports it (systemd, status page);
//! [`tools`] holds the simulators, the demo and the bench. `src/main.rs` is the CLI.
//!
//! Lower layers never import higher ones: `model`, `modbus` and `image` import nothing
//! above themselves.

// Beneath the data path.
pub mod config;
pub mod control;
pub mod link;
pub mod ops;

// The data path.
pub mod image;
pub mod servers;
pub mod sources;

// Above it.
pub mod app;

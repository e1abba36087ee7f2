//! airbridge's gateway: everything `airbridge run` needs, and nothing else (the simulators,
//! the demo and the bench are crates above this one; the command line is the binary).
//!
//! Data flows one way, **sources → image → servers**; commands the other way, **servers →
//! control → the device's queue**:
//!
//! ```text
//! sources/   push (the KSEM writes to us) · ksem_poll (we read the KSEM) · rtu_poll (we read a
//!            KSTAR bus, and run its queued writes between polls)
//!    ↓ data                                   ↑ commands: the device's write queue
//! image      one lock-free register image: a snapshot per reader, an age per region
//!    ↓                                        ↑
//! servers/   rtu_slave (the inverter on RS485) · modbus_tcp (KSTAR LAN clients) · meter_tcp
//!            (the KSEM image for the house) · mqtt (Home Assistant)
//!                                             ↑ control::command, the one write path
//! ```
//!
//! Beneath them: [`link`] (the I/O edges: serial ports, the TCP front, the reopen loop, the
//! RTU master), [`config`] (what the user wrote, validated), [`control`] (register profiles,
//! the write policy and the one write path), [`ops`] (journal, logging, counters), and below
//! this crate `airbridge_modbus` (domain types and the pure codec). Above them: [`app`] wires
//! a gateway together, supervises it, reloads it and reports it (systemd, status page).
//!
//! Lower layers never import higher ones: image, ops → control → config → link → sources,
//! servers → app; sources and servers never import each other (they meet in the image and
//! in control). The tree test checks this module by module.

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

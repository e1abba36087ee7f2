//! airbridge: a Modbus gateway appliance.
//!
//! Data flows one way: **sources → image → servers**.
//!
//! - sources: [`push`] (Modbus TCP server the KSEM writes to) and [`poll`]
//!   (Modbus TCP client polling the KSEM's slave);
//! - [`image`]: one lock-free register image, snapshot per reader, age per region;
//! - servers: [`rtu::slave`] answers the inverter on RS485 from the image only.
//!
//! KSTAR devices run the same engine the other way round: [`rtu_poll`] (RTU master on the
//! device's bus) → image → [`tcp_server`] (Modbus TCP for LAN clients), with control writes
//! checked by [`writes`] against the [`profile`] and executed by the poller between polls.
//!
//! [`config`] describes all of it, [`gateway`] wires it together and supervises it,
//! [`sim`] holds the simulated KSEM and inverter that [`demo`] and the tests run against.
//! The binary (`src/main.rs`) is a thin CLI over this library.

pub mod bench;
pub mod config;
pub mod demo;
pub mod gateway;
pub mod image;
pub mod logging;
pub mod poll;
pub mod profile;
pub mod push;
pub mod reload;
pub mod rtu;
pub mod rtu_poll;
pub mod serial;
pub mod serial_compat;
pub mod sim;
pub mod systemd;
pub mod tcp_server;
pub mod util;
pub mod writes;

// Operations: the status page, metrics and the frame journal.
pub mod journal;
pub mod status;

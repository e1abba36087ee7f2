//! Modbus RTU: the pure protocol pieces ([`crc`], [`frame`], [`pdu`]) and the I/O
//! edges that use them ([`slave`] serves the image, [`master`] is the client side
//! used by the simulated inverter and the bench tool).

pub mod crc;
pub mod frame;
pub mod master;
pub mod pdu;
pub mod slave;

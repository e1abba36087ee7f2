//! The bottom layer, pure: the domain types every layer shares ([`model`]) and the Modbus
//! codec, bytes in, frames out. No I/O, no clock, no config: [`crc`],
//! the RTU slave's [`rtu_frame`]r, and the master's request encoders and its one reply
//! parser ([`master`]); RTU [`timing`] (wire time, t3.5). Everything here is tested without
//! a stream.

pub mod crc;
pub mod master;
pub mod model;
pub mod rtu_frame;
pub mod timing;

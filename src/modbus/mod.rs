//! The Modbus codec, pure: bytes in, frames out. No I/O, no clock, no config: [`crc`],
//! the RTU slave's [`rtu_frame`]r, and the master's request encoders and its one reply
//! parser ([`master`]). Everything here is tested without a stream.

pub mod crc;
pub mod master;
pub mod rtu_frame;

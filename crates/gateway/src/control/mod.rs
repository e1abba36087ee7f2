//! Control: what registers mean and who may write them. [`profile`] loads and decodes a
//! register profile; [`writes`] is the write policy a LAN write is checked against before
//! it is queued for the bus. Pure: no I/O but reading a profile file.

pub mod profile;
pub mod writes;

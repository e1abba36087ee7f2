//! Tools for the user and the tests, never part of the data path: the simulators
//! ([`sim`]: a KSEM, an inverter, KSTAR devices, misbehaving peers), the [`demo`] and the
//! [`bench`].

pub mod bench;
pub mod demo;
pub mod sim;

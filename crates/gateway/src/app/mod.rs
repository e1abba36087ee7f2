//! The application: [`gateway`] wires sources, image and servers together from a config;
//! [`supervisor`] runs it under signals (stop, reload) and systemd; [`handles`] is the shared
//! state every part can observe; [`reload`] applies a new config; [`systemd`] and
//! [`status`] report the truth to systemd and to the user; [`monitor`] logs state changes.

pub mod gateway;
pub(crate) mod handles;
pub(crate) mod monitor;
pub mod reload;
pub mod status;
pub mod supervisor;
pub mod systemd;

//! Operations: what every part uses to be observed. The frame [`journal`], [`logging`]
//! (setup, level, rate-limited repeats), the [`stats`] counters and histograms, and the
//! [`heartbeat`] that shows the supervisor a loop is alive. Imports only [`airbridge_modbus::model`].

pub mod heartbeat;
pub mod journal;
pub mod logging;
pub mod stats;

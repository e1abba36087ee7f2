//! Running and operating the gateway: `airbridge run` and `demo`, the status page and
//! metrics, the frame journal, logging, systemd and packaging. One test binary per area;
//! shared helpers are in tests/common.

#[path = "../common/mod.rs"]
mod common;

mod cli_run;
mod deb_package;
mod deploy;
mod journal;
mod logging;
mod polish;
mod status;
mod status_states;

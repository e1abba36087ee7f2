//! MQTT for Home Assistant against a real Mosquitto. One test binary per area; shared helpers
//! are in tests/common.

#[path = "../common/mod.rs"]
mod common;

mod mqtt;

//! Configuration: the schema and its messages, `airbridge check`, KSTAR sections, the shipped
//! profiles and hot reload. One test binary per area; shared helpers are in tests/common.

#[path = "../common/mod.rs"]
mod common;

mod cli_check;
mod config;
mod config_errors;
mod kstar_config;
mod profiles;
mod reload;

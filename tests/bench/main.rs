//! `airbridge bench`: its reports, its series through the real binary and its refusal of a
//! live gateway. One test binary per area; shared helpers are in tests/common.

#[path = "../common/mod.rs"]
mod common;

mod bench_cli;
mod bench_live;

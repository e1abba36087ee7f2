//! The source tree itself: the layers inside crates/gateway, and every link in the
//! documentation. One test binary per area; shared helpers are in tests/common.

mod docs_links;
mod layers;

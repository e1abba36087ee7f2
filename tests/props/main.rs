//! Property tests, CI's stand-in for the fuzz targets: the checkers in tests/common
//! (shared with fuzz/ by path) on arbitrary input, and the codecs and the image.

#[path = "../common/check_config.rs"]
mod check_config;
#[path = "../common/check_framer.rs"]
mod check_framer;
#[path = "../common/check_push.rs"]
mod check_push;

mod prop_codec;
mod prop_config;
mod prop_framer;
mod prop_image;
mod prop_push;

//! (placeholder: written by the bench branch)
fn main() {}

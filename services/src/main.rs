//! model-runner services.
fn main() {}

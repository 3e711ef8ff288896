//! Load benchmark of the HTTP API (filled in by the next commit).

fn main() {}

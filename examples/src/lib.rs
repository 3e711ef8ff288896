//! Small programs to copy from; see the `examples/` folder of this crate. Each file starts with
//! the command that runs it.

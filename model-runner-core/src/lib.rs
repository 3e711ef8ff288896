//! Domain model, ports and engine of model-runner.

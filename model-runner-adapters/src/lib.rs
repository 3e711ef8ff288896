//! Adapters for the model-runner ports.

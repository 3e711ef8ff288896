//! PostgreSQL run store (in progress).

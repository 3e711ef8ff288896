//! Helpers shared by integration tests.
#![allow(dead_code)]

pub mod collector;
#[cfg(feature = "postgres")]
pub mod isolation;

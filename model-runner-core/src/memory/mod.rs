//! In-memory reference adapters for every port: always compiled, used by tests and by
//! embedders who want no persistence. They pass the same conformance suites as the durable
//! adapters, so behaviour proven here holds there. Their readiness probes (`ping`) answer
//! `Ok`: there is nothing remote to reach.

mod call_cache;
#[cfg(test)]
mod hooked;
mod progress;
mod queue;
mod sink;
mod source;
mod store;

pub use call_cache::{DEFAULT_CALL_CACHE_BYTES, MemoryCallCache};
#[cfg(test)]
pub(crate) use hooked::HookedStore;
pub use progress::MemoryProgressBoard;
pub use queue::MemoryRunQueue;
pub use sink::MemorySink;
pub use source::MemoryBlockSource;
pub use store::MemoryRunStore;

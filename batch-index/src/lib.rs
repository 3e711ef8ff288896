//! Map/reduce account indexer (work in progress).

//! Engine loops: scheduler, enqueuer and worker.

//! Realising derivations: the scheduler and its executors (local, hook, remote).
//!
//! Empty until the build-engine issue fills it; see `ARCHITECTURE.md`.

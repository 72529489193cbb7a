//! The Store trait and its backends (local SQLite store, binary caches, ssh).
//!
//! Empty until the local-store issue fills it; see `ARCHITECTURE.md`.

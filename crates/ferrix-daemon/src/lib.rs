//! Servers: the serve protocol (`nix-store --serve`), later the worker protocol.
//!
//! Empty until the remote-build issue fills it; see `ARCHITECTURE.md`.

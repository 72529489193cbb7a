//! The Nix language: parsing, lazy evaluation, builtins and string context.
//!
//! Empty until the evaluator issue fills it; see `ARCHITECTURE.md`.

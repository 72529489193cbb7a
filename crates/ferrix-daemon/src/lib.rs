//! Servers, each generic over a handler trait so that it can be tested with scripted bytes.
//!
//! - [`serve`]: the serve protocol of `nix-store --serve [--write]` (what `ssh://` stores speak);
//! - [`worker`]: the worker protocol of `nix-daemon` and `nix-daemon --stdio` (what `ssh-ng://`
//!   stores speak);
//! - [`http_cache`]: a store as an HTTP binary cache (`ferrix serve-cache`).

#[cfg(test)]
mod export_record;
pub mod http_cache;
pub mod serve;
pub mod worker;

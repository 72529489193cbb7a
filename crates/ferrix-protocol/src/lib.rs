//! Nix's wire encoding and the messages of its two protocols.
//!
//! - [`wire`]: numbers, padded strings, lists and sets, store paths, framed streams, with a
//!   [`Limits`] check on every length read from a peer before anything is allocated;
//! - [`serve`]: the serve protocol of `nix-store --serve` (what `ssh://` stores speak),
//!   versions 2.5 to 2.8;
//! - [`worker`]: the worker protocol of `nix-daemon` and `ssh-ng://`, versions 1.18 to 1.38:
//!   the handshake, the log messages of the server, the operations, their payloads and
//!   replies;
//! - [`derivation`]: the `BasicDerivation` both protocols send;
//! - [`text`]: a peer's messages without their escape sequences, for a terminal;
//! - [`async_codec`]: the same over tokio's async readers and writers, for servers on an event
//!   loop: primitives, framed streams, and any message through the sync decoders.
//!
//! Pure: nothing here opens a file or a socket; every function works on the reader or writer
//! it is given and never panics, whatever the bytes; a bad stream is a typed [`WireError`]
//! that says what was being read.

pub mod async_codec;
pub mod derivation;
mod json;
pub mod serve;
pub mod text;
mod version;
pub mod wire;
pub mod worker;

pub use version::Version;
pub use wire::{Limits, WireError};

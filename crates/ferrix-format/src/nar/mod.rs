//! NAR, the Nix ARchive: one canonical byte sequence per file system tree.
//!
//! [`dump`] serialises a tree, [`parse`] reads one strictly (every non-canonical archive is a
//! typed error naming the byte offset), [`restore`] writes one back to disk, [`listing`] lists one.
//!
//! None of them recurses: nesting lives in explicit stacks, so a tree or an archive may be as
//! deep as the file system or the stream allows, and the file system is reached through
//! directory descriptors, so full paths longer than `PATH_MAX` are no obstacle either.

mod dirs;
mod dump;
mod listing;
mod parse;
mod restore;

pub use dirs::{DirStack, DIR_FLAGS};
pub use dump::{dump_path, hash_path, DumpError};
pub use listing::{list, NarEntry, NarListing};
pub use parse::{parse, parse_exact, Discard, NarError, NarErrorKind, NarVisitor};
pub use restore::{restore, restore_prefix, RestoreError};

/// The first framed string of every NAR.
pub const MAGIC: &[u8] = b"nix-archive-1";

/// Longest entry name or symlink target accepted when reading; longer ones cannot be
/// created on any file system Nix runs on.
pub const MAX_NAME: usize = 4096;

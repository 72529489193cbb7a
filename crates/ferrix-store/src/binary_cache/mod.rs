//! Binary caches in Nix's format (`nix-cache-info`, `<hash>.narinfo`,
//! `nar/<filehash>.nar[.ext]`) in a directory (`file://`): writing paths into one, and
//! reading them back into the store.

mod compression;
mod read;
mod write;

pub use compression::Compression;
pub use read::{copy_from_cache, CacheSource};
pub use write::{copy_to_cache, CacheError, FileCache};

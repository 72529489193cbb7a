//! Binary caches in Nix's format (`nix-cache-info`, `<hash>.narinfo`,
//! `nar/<filehash>.nar[.ext]`): writing one into a directory (`file://`).

mod compression;
mod write;

pub use compression::Compression;
pub use write::{copy_to_cache, CacheError, FileCache};

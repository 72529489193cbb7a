//! Binary caches in Nix's format (`nix-cache-info`, `<hash>.narinfo`,
//! `nar/<filehash>.nar[.ext]`): writing paths into a directory (`file://`), and reading
//! them from a directory or over HTTP, as `ferrix copy --from` and substitution do.

mod compression;
mod disk_cache;
mod error;
mod http;
mod source;
mod store;
mod substituters;
mod write;

pub use compression::Compression;
pub use disk_cache::{CachedInfo, DiskCacheTtl, NarInfoDiskCache, Remembered};
pub use error::CacheError;
pub use http::{HttpClient, HttpSettings, TlsRoots};
pub use source::{CacheSource, Trust};
pub use store::{to_path_info, BinaryCache};
pub use substituters::{Found, Progress, Queried, Substituters};
pub use write::FileCache;

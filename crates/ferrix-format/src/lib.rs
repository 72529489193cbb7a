//! Nix's formats and algorithms, bit for bit: hashes and their encodings, store paths, NAR,
//! derivations, narinfo and signatures.
//!
//! Pure: no network, no async, no global state, no file system access beyond the paths a
//! caller passes in. Every parser is total: bad input is a typed error, never a panic.

pub mod content_address;
pub mod derivation;
pub mod hash;
pub mod json;
pub mod nar;
pub mod narinfo;
pub mod nixbase32;
pub mod signature;
pub mod store_path;
pub mod wire;

pub use content_address::{ContentAddress, FileIngestionMethod};
pub use derivation::{Derivation, DerivationOutput};
pub use hash::{Encoding, Hash, HashAlgo};
pub use narinfo::NarInfo;
pub use store_path::{StoreDir, StorePath};

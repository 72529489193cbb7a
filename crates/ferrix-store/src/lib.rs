//! Nix-compatible stores: the local store — Nix's directory layout and SQLite schema,
//! all-or-nothing additions, `flock` path locks as Nix takes them, and garbage collection —
//! binary caches and machines over ssh, all behind one [`Store`] trait that
//! [`copy_paths`] copies between.

pub mod binary_cache;
mod building;
pub mod canon;
pub(crate) mod chunks;
pub mod closure;
pub mod config;
pub mod copy;
pub mod db;
pub mod drv;
pub mod edge;
pub mod error;
pub mod export;
pub mod fsutil;
pub mod gc;
pub mod local;
pub mod lock;
pub mod optimise;
pub mod path_info;
mod place;
pub mod remote_store;
pub mod serve_client;
pub mod ssh;
pub mod store;
mod streams;
pub mod temproots;
pub mod verify;
pub mod worker_client;

pub use config::LocalStoreConfig;
pub use copy::{copy_paths, CopyOptions};
pub use edge::AsyncStore;
pub use error::{Result, StoreError};
pub use local::{LocalStore, OutputsIntent, StoreLock};
pub use path_info::ValidPathInfo;
pub use store::{trusted, AddOptions, CopyError, Store};

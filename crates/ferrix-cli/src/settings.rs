//! Settings the commands need, assembled from the environment (the only place it is read).

use anyhow::{Context, Result};
use ferrix_format::StoreDir;

/// What the commands of this binary are configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub store_dir: StoreDir,
}

impl Settings {
    /// Defaults, then `NIX_STORE_DIR`.
    pub fn from_env() -> Result<Self> {
        let store_dir = match std::env::var("NIX_STORE_DIR") {
            Ok(d) if !d.is_empty() => {
                StoreDir::new(&d).with_context(|| format!("in NIX_STORE_DIR='{d}'"))?
            }
            _ => StoreDir::default(),
        };
        Ok(Self { store_dir })
    }
}

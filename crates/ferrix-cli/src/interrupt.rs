//! Ctrl-C and SIGTERM while the store is being written: the first asks the work to stop
//! cleanly (it removes what it staged and fails with "interrupted by the user"), a second
//! one ends the process at once, as the signal's default would.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{Context, Result};
use ferrix_store::LocalStore;
use signal_hook::consts::{SIGINT, SIGTERM};

/// Catch SIGINT and SIGTERM from now on and let `store` watch for them. Also when the
/// signals came ignored from the parent (a background job of a script): an addition is
/// stopped the way Nix stops it, by its signal handler.
pub fn watch(store: &LocalStore) -> Result<()> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        // Registered first, so that it sees the flag as the previous signal left it.
        signal_hook::flag::register_conditional_default(sig, flag.clone())
            .context("installing a signal handler")?;
        signal_hook::flag::register(sig, flag.clone()).context("installing a signal handler")?;
    }
    store.set_interrupt(flag);
    Ok(())
}

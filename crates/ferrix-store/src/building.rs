//! The record of the paths this process's builds are writing in place
//! (`<state>/ferrix/pending/<pid>-building`), which recovery reads after a crash.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;

use ferrix_format::StorePath;

use crate::error::{io_err, Result};

/// The paths this process's builds are writing, and the record that names them.
///
/// The record must name every such path at every instant, even when the process is killed
/// halfway through updating it: new names are appended (one `write`), and when builds end
/// the live names are written over the start before the file is cut to length, so that an
/// interrupted update leaves at worst names of finished builds (which recovery finds valid
/// or absent), never a record missing a live one.
#[derive(Debug)]
pub(crate) struct Building {
    record: PathBuf,
    state: Mutex<BuildingState>,
}

#[derive(Debug, Default)]
struct BuildingState {
    paths: BTreeMap<StorePath, usize>,
    /// The record, open while it names anything.
    file: Option<fs::File>,
    /// Its length.
    len: u64,
}

impl Building {
    pub(crate) fn new(record: PathBuf) -> Self {
        Self {
            record,
            state: Mutex::new(BuildingState::default()),
        }
    }

    pub(crate) fn add(&self, new: &[StorePath]) -> Result<()> {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut names = Vec::new();
        for p in new {
            let n = g.paths.entry(p.clone()).or_default();
            *n += 1;
            if *n == 1 {
                names.extend_from_slice(p.to_string().as_bytes());
                names.push(0);
            }
        }
        if names.is_empty() {
            return Ok(());
        }
        let res = (|| {
            use std::os::unix::fs::FileExt;
            if g.file.is_none() {
                // Opened once, kept for the store's lifetime.
                // Not O_APPEND: Linux's `pwrite` would append too, and `remove` rewrites.
                let f = fs::OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .write(true)
                    .open(&self.record)?;
                g.file = Some(f);
                g.len = 0;
            }
            if let Some(f) = &g.file {
                f.write_all_at(&names, g.len)?;
            }
            g.len += names.len() as u64;
            Ok::<(), io::Error>(())
        })();
        if res.is_err() {
            for p in new {
                Self::forget(&mut g, p);
            }
        }
        res.map_err(io_err("writing", &self.record))
    }

    fn forget(g: &mut BuildingState, p: &StorePath) {
        if let Some(n) = g.paths.get_mut(p) {
            *n -= 1;
            if *n == 0 {
                g.paths.remove(p);
            }
        }
    }

    pub(crate) fn remove(&self, done: &[StorePath]) {
        use std::os::unix::fs::FileExt;
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for p in done {
            Self::forget(&mut g, p);
        }
        if g.paths.is_empty() {
            // Emptied, not deleted: builds come and go, and every new file costs an inode.
            // The empty record goes when the store is dropped (or with recovery).
            if let Some(f) = &g.file {
                if f.set_len(0).is_ok() {
                    g.len = 0;
                }
            }
            return;
        }
        let mut names = Vec::new();
        for p in g.paths.keys() {
            names.extend_from_slice(p.to_string().as_bytes());
            names.push(0);
        }
        if let Some(f) = &g.file {
            if f.write_all_at(&names, 0).is_ok() && f.set_len(names.len() as u64).is_ok() {
                g.len = names.len() as u64;
            }
        }
    }
}

impl Drop for Building {
    fn drop(&mut self) {
        let g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if g.file.is_some() && g.paths.is_empty() {
            let _ = fs::remove_file(&self.record);
        }
    }
}

//! Writing a NAR back to disk, never outside the target and never through a symlink.

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, OpenOptionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::parse::{parse, parse_exact, NarError, NarVisitor};

/// Why a restore failed.
#[derive(Debug, Error)]
pub enum RestoreError {
    #[error("restoring into '{target}'")]
    Nar {
        target: PathBuf,
        #[source]
        source: NarError,
    },
}

struct Restorer<'a> {
    target: &'a Path,
    buf: Vec<u8>,
}

impl Restorer<'_> {
    /// Entry names were checked by the parser (no `/`, `.`, `..`, NUL), and every directory on
    /// the way was created by this restore, so the joined path stays inside the target.
    fn at(&self, rel: &[u8]) -> PathBuf {
        if rel.is_empty() {
            self.target.to_owned()
        } else {
            self.target.join(OsStr::from_bytes(rel))
        }
    }
}

fn ctx(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("creating '{}': {e}", path.display()))
}

impl NarVisitor for Restorer<'_> {
    fn directory(&mut self, rel: &[u8]) -> io::Result<()> {
        let p = self.at(rel);
        fs::create_dir(&p).map_err(|e| ctx(&p, e))
    }

    fn regular(
        &mut self,
        rel: &[u8],
        executable: bool,
        _size: u64,
        _offset: u64,
        contents: &mut dyn Read,
    ) -> io::Result<()> {
        let p = self.at(rel);
        // create_new is O_EXCL: it fails on any existing entry, a symlink included.
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if executable { 0o777 } else { 0o666 })
            .open(&p)
            .map_err(|e| ctx(&p, e))?;
        loop {
            let n = contents.read(&mut self.buf)?;
            if n == 0 {
                break;
            }
            f.write_all(&self.buf[..n]).map_err(|e| ctx(&p, e))?;
        }
        Ok(())
    }

    fn symlink(&mut self, rel: &[u8], target: &[u8]) -> io::Result<()> {
        let p = self.at(rel);
        symlink(OsStr::from_bytes(target), &p).map_err(|e| ctx(&p, e))
    }
}

/// Restore the NAR read from `input` at `target`, which must not exist yet. On error the
/// partial tree is left for the caller to remove (it alone knows whether it owns `target`).
pub fn restore<R: Read>(input: R, target: &Path) -> Result<u64, RestoreError> {
    restore_with(input, target, true)
}

/// Like [`restore`], but for an archive embedded in a longer stream: reading stops right after
/// the archive's last byte.
pub fn restore_prefix<R: Read>(input: R, target: &Path) -> Result<u64, RestoreError> {
    restore_with(input, target, false)
}

fn restore_with<R: Read>(input: R, target: &Path, exact: bool) -> Result<u64, RestoreError> {
    let mut r = Restorer {
        target,
        buf: vec![0u8; 256 * 1024],
    };
    let parsed = if exact {
        parse_exact(input, &mut r)
    } else {
        parse(input, &mut r)
    };
    parsed.map_err(|source| RestoreError::Nar {
        target: target.to_owned(),
        source,
    })
}

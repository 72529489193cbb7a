//! Writing a NAR back to disk, never outside the target and never through a symlink.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use rustix::fs::{mkdirat, openat, symlinkat, Mode};
use thiserror::Error;

use super::dirs::{DirStack, DIR_FLAGS};
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
    /// The directories being restored, innermost last: every entry is created by name in its
    /// parent, so neither depth nor the length of the full path is limited.
    dirs: DirStack,
}

impl Restorer<'_> {
    /// Entry names were checked by the parser (no `/`, `.`, `..`, NUL), and every directory on
    /// the way was created by this restore, so the joined path stays inside the target. Used
    /// for messages only.
    fn at(&self, rel: &[u8]) -> PathBuf {
        if rel.is_empty() {
            self.target.to_owned()
        } else {
            self.target.join(OsStr::from_bytes(rel))
        }
    }

    /// The directory that holds `rel` (not the root), and the last component of `rel`.
    fn parent<'r>(&self, rel: &'r [u8]) -> io::Result<(BorrowedFd<'_>, &'r [u8])> {
        let name = rel.rsplit(|&b| b == b'/').next().unwrap_or(rel);
        match self.dirs.top() {
            Some(fd) => Ok((fd, name)),
            None => Err(ctx(
                &self.at(rel),
                io::Error::other("its directory is not open"),
            )),
        }
    }
}

fn ctx(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("creating '{}': {e}", path.display()))
}

impl NarVisitor for Restorer<'_> {
    fn directory(&mut self, rel: &[u8]) -> io::Result<()> {
        let fd = if rel.is_empty() {
            fs::create_dir(self.target).map_err(|e| ctx(self.target, e))?;
            rustix::fs::open(self.target, DIR_FLAGS, Mode::empty())
        } else {
            let (parent, name) = self.parent(rel)?;
            mkdirat(parent, name, Mode::from_raw_mode(0o777))
                .and_then(|()| openat(parent, name, DIR_FLAGS, Mode::empty()))
        };
        let fd = fd.map_err(|e| ctx(&self.at(rel), e.into()))?;
        self.dirs.push(fd).map_err(|e| ctx(&self.at(rel), e))
    }

    fn end_directory(&mut self, rel: &[u8]) -> io::Result<()> {
        self.dirs.pop().map_err(|e| ctx(&self.at(rel), e))
    }

    fn regular(
        &mut self,
        rel: &[u8],
        executable: bool,
        _size: u64,
        _offset: u64,
        contents: &mut dyn Read,
    ) -> io::Result<()> {
        let mode = if executable { 0o777 } else { 0o666 };
        let f = self.dirs.create_file(self.target, rel, mode);
        let mut f = f.map_err(|e| ctx(&self.at(rel), e))?;
        loop {
            let n = contents.read(&mut self.buf)?;
            if n == 0 {
                break;
            }
            f.write_all(&self.buf[..n])
                .map_err(|e| ctx(&self.at(rel), e))?;
        }
        Ok(())
    }

    fn symlink(&mut self, rel: &[u8], target: &[u8]) -> io::Result<()> {
        let made = if rel.is_empty() {
            symlink(OsStr::from_bytes(target), self.target)
        } else {
            let (parent, name) = self.parent(rel)?;
            symlinkat(target, parent, name).map_err(io::Error::from)
        };
        made.map_err(|e| ctx(&self.at(rel), e))
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
        dirs: DirStack::new(),
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

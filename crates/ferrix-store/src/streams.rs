//! Readers the store stages NARs through (hashing, keeping small ones in memory, stopping on
//! an interrupt), and small file helpers of its own.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use ferrix_format::hash::{HashSink, Hasher};
use ferrix_format::nar;

use crate::error::{io_err, Result, StoreError};
use crate::local::MEM_NAR;

/// The contents of `path` if it is a regular file (never following a symlink, never waiting
/// on a FIFO); `None` for anything else.
pub(crate) fn read_regular(path: &Path) -> Result<Option<Vec<u8>>> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(path);
    let mut f = match f {
        Ok(f) => f,
        // A symlink (ELOOP with O_NOFOLLOW) is not a regular file.
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return Ok(None)
        }
        Err(e) => return Err(io_err("reading", path)(e)),
    };
    if !f.metadata().map_err(io_err("reading", path))?.is_file() {
        return Ok(None);
    }
    let mut text = Vec::new();
    f.read_to_end(&mut text).map_err(io_err("reading", path))?;
    Ok(Some(text))
}

/// A stream that fails once the user asked to stop, so that long reads end promptly.
pub(crate) struct Interruptible<'a, R> {
    pub(crate) inner: R,
    pub(crate) flag: Option<&'a AtomicBool>,
}

impl<R: Read> Read for Interruptible<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.flag.is_some_and(|f| f.load(Ordering::Relaxed)) {
            return Err(io::Error::other("interrupted by the user"));
        }
        self.inner.read(buf)
    }
}

/// Copies a NAR stream into a hasher as it is read.
pub(crate) struct HashingReader<R> {
    pub(crate) inner: R,
    pub(crate) sink: HashSink,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sink.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// The NAR of a single non-executable regular file.
pub(crate) fn write_file_nar(out: &mut Vec<u8>, contents: &[u8]) {
    use ferrix_format::wire::push_bytes;
    push_bytes(out, nar::MAGIC);
    push_bytes(out, b"(");
    push_bytes(out, b"type");
    push_bytes(out, b"regular");
    push_bytes(out, b"contents");
    push_bytes(out, contents);
    push_bytes(out, b")");
}

/// Keeps what is read, up to [`MEM_NAR`] bytes; past that it fails, with `overflowed` set
/// and everything read so far (including the last read) in `buf`.
pub(crate) struct MemReader<R> {
    pub(crate) inner: R,
    pub(crate) buf: Vec<u8>,
    pub(crate) overflowed: bool,
}

impl<R: Read> Read for MemReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.buf.extend_from_slice(&buf[..n]);
        if self.buf.len() > MEM_NAR {
            self.overflowed = true;
            return Err(io::Error::other("archive too large to keep in memory"));
        }
        Ok(n)
    }
}

/// Reads a NAR without keeping anything.
pub(crate) struct SkipVisitor;

impl nar::NarVisitor for SkipVisitor {
    fn directory(&mut self, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn regular(&mut self, _: &[u8], _: bool, _: u64, _: u64, _: &mut dyn Read) -> io::Result<()> {
        Ok(())
    }
    fn symlink(&mut self, _: &[u8], _: &[u8]) -> io::Result<()> {
        Ok(())
    }
}

/// Feeds what is read to an optional second hasher.
pub(crate) struct TeeReader<'a, R> {
    pub(crate) inner: R,
    pub(crate) extra: Option<&'a mut Hasher>,
}

impl<R: Read> Read for TeeReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = self.extra.as_deref_mut() {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// An in-process pipe (reader, writer) for streaming a NAR between threads.
pub(crate) fn pipe() -> Result<(io::PipeReader, io::PipeWriter)> {
    let (r, w) = io::pipe().map_err(|e| StoreError::Io {
        what: "creating a pipe",
        path: PathBuf::new(),
        source: e,
    })?;
    // A NAR goes through in large reads rather than one page at a time (the default 64 KiB
    // pipe made 200,000 reads of 4 KiB for a 1 GiB tree). Where the system allows less,
    // the default stays.
    let _ = rustix::pipe::fcntl_setpipe_size(&w, PIPE_SIZE);
    Ok((r, w))
}

/// The size asked of a pipe carrying a NAR.
const PIPE_SIZE: usize = 1 << 20;

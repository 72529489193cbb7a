//! Readers the store stages NARs through (hashing, keeping small ones in memory, stopping on
//! an interrupt), and small file helpers of its own.

use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use ferrix_format::hash::HashSink;
use ferrix_format::nar;
use ferrix_format::{Hash, HashAlgo};

use crate::error::{io_err, Result};
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

/// Copies a NAR stream into a hasher as it is read (unless it is hashed elsewhere).
pub(crate) struct HashingReader<R> {
    pub(crate) inner: R,
    pub(crate) sink: Option<HashSink>,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(s) = self.sink.as_mut() {
            s.write_all(&buf[..n])?;
        }
        Ok(n)
    }
}

impl<R> HashingReader<R> {
    /// The hash and size of what was read; zero when it was not hashed here.
    pub(crate) fn finish(self) -> (Hash, u64) {
        match self.sink {
            Some(s) => s.finish(),
            None => (Hash::zero(HashAlgo::Sha256), 0),
        }
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

/// Why passing a NAR through failed: reading and checking it, or writing it on.
pub(crate) enum PassError {
    Read(nar::NarError),
    Write(io::Error),
}

/// Copy exactly one NAR from `input` (a protocol stream, where nothing marks its end but the
/// archive's own structure) to `out`, checking its structure on the way.
pub(crate) fn pass_nar(input: impl Read, out: &mut dyn Write) -> Result<u64, PassError> {
    struct Tee<'a, R> {
        inner: R,
        out: &'a mut dyn Write,
        failed: Option<io::Error>,
    }
    impl<R: Read> Read for Tee<'_, R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            if let Err(e) = self.out.write_all(&buf[..n]) {
                let shown = io::Error::from(e.kind());
                self.failed = Some(e);
                return Err(shown);
            }
            Ok(n)
        }
    }
    let mut tee = Tee {
        inner: input,
        out,
        failed: None,
    };
    match nar::parse(&mut tee, &mut nar::Discard) {
        Ok(n) => Ok(n),
        Err(e) => Err(match tee.failed.take() {
            Some(w) => PassError::Write(w),
            None => PassError::Read(e),
        }),
    }
}

/// A writer that keeps the error its inner writer gave, so a caller can tell a failure to
/// write here from a failure of whatever produced the bytes.
pub(crate) struct Noting<W> {
    pub(crate) inner: W,
    pub(crate) failed: Option<io::Error>,
}

impl<W: Write> Write for Noting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf).map_err(|e| {
            let shown = io::Error::from(e.kind());
            self.failed = Some(e);
            shown
        })
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().map_err(|e| {
            let shown = io::Error::from(e.kind());
            self.failed = Some(e);
            shown
        })
    }
}

/// Bytes written to `inner`, hashed and counted on the way.
pub(crate) struct HashTee<W> {
    pub(crate) sink: HashSink,
    pub(crate) inner: W,
}

impl<W: Write> Write for HashTee<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sink.write_all(&buf[..n])?;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

//! The data some operations carry after their arguments, on both sides.
//!
//! - `AddToStoreNar` (39): the NAR, in one of three ways by version ([`NarTransfer`]). The
//!   server reads it through a [`NarPayload`]; the client sends it with
//!   [`write_framed`] (framed), by answering `STDERR_READ` from the NAR in
//!   [`process_stderr`](super::process_stderr) (tunnelled), or by writing it right after the
//!   request (raw).
//! - `AddMultipleToStore` (44): a framed stream holding a u64 count, then per path its keyed
//!   path info (the 1.16 form) followed by its NAR ([`MultiplePathsReader`],
//!   [`MultiplePathsWriter`]).
//! - `AddBuildLog` (45): the log as a framed stream ([`crate::wire::FramedReader`],
//!   [`write_framed`]).

use std::io::{self, BufWriter, Read, Write};

use ferrix_format::StoreDir;

use super::path_info::{PathInfo, FULL};
use super::stderr::READ;
use crate::wire::{read_count, write_u64, FramedReader, FramedWriter, Limits, WireError};
use crate::Version;

/// The NAR of `AddToStoreNar` is a framed stream from this version on.
pub const FRAMED_NAR_SINCE: Version = Version::new(1, 23);
/// The NAR of `AddToStoreNar` is pulled with `STDERR_READ` from this version on (up to 1.22).
pub const TUNNEL_SINCE: Version = Version::new(1, 21);

/// How the NAR of `AddToStoreNar` follows the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NarTransfer {
    /// [≥ 1.23] A framed stream right after the request.
    Framed,
    /// [1.21 – 1.22] The server pulls it with `STDERR_READ` while it works; the client answers
    /// each with a string of at most the length asked for.
    Tunnelled,
    /// [< 1.21] The NAR itself right after the request.
    Raw,
}

impl NarTransfer {
    pub fn for_version(version: Version) -> Self {
        if version >= FRAMED_NAR_SINCE {
            Self::Framed
        } else if version >= TUNNEL_SINCE {
            Self::Tunnelled
        } else {
            Self::Raw
        }
    }
}

fn eof(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, msg)
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// The server's side of the NAR of `AddToStoreNar`: it yields exactly `nar_size` bytes, then
/// end of file, whichever way the NAR comes ([`NarTransfer`]); a stream that ends before is an
/// [`io::ErrorKind::UnexpectedEof`] error. `r` is the session's input, `w` its output (used
/// only to pull a tunnelled NAR with `STDERR_READ`, each request flushed).
///
/// After the consumer is done (whether it read everything or not), call
/// [`NarPayload::finish`] so that the next operation starts after the payload.
///
/// Nix's daemon reads a raw NAR (< 1.21) by parsing it; this reads `nar_size` bytes, which is
/// the same for every client that tells the truth about the size.
#[derive(Debug)]
pub struct NarPayload<R: Read, W: Write> {
    src: Source<R>,
    w: W,
    /// NAR bytes not yet handed out.
    left: u64,
    /// Bytes of the current `STDERR_READ` answer not yet handed out, and its padding.
    chunk: u64,
    pad: usize,
}

#[derive(Debug)]
enum Source<R: Read> {
    Framed(FramedReader<R>),
    Tunnelled(R),
    Raw(R),
}

impl<R: Read, W: Write> NarPayload<R, W> {
    pub fn new(r: R, w: W, version: Version, nar_size: u64) -> Self {
        let src = match NarTransfer::for_version(version) {
            NarTransfer::Framed => Source::Framed(FramedReader::new(r)),
            NarTransfer::Tunnelled => Source::Tunnelled(r),
            NarTransfer::Raw => Source::Raw(r),
        };
        Self {
            src,
            w,
            left: nar_size,
            chunk: 0,
            pad: 0,
        }
    }

    /// A stream of unknown length pulled from the client with `STDERR_READ`, whatever the
    /// version (`ImportPaths`): the consumer reads what it needs and no more, since the
    /// client cannot answer past the end of what it sends.
    pub fn tunnelled(r: R, w: W) -> Self {
        Self {
            src: Source::Tunnelled(r),
            w,
            left: u64::MAX,
            chunk: 0,
            pad: 0,
        }
    }

    /// How the NAR comes.
    pub fn transfer(&self) -> NarTransfer {
        match self.src {
            Source::Framed(_) => NarTransfer::Framed,
            Source::Tunnelled(_) => NarTransfer::Tunnelled,
            Source::Raw(_) => NarTransfer::Raw,
        }
    }

    /// NAR bytes not read yet.
    pub fn remaining(&self) -> u64 {
        self.left
    }

    /// Skip what the consumer left, so that the reader is just after the payload: the rest of
    /// the frames up to the empty one (framed), the rest of the NAR (raw). A tunnelled NAR is
    /// not pulled any further (its client sends only what is asked for): only the rest of an
    /// answer already received is skipped. The reader back.
    pub fn finish(mut self) -> io::Result<R> {
        if let Source::Raw(_) = self.src {
            io::copy(&mut self, &mut io::sink())?;
        }
        match self.src {
            Source::Framed(mut f) => {
                f.drain()?;
                Ok(f.into_inner())
            }
            Source::Raw(r) => Ok(r),
            Source::Tunnelled(mut r) => {
                io::copy(&mut (&mut r).take(self.chunk), &mut io::sink())?;
                let mut pad = [0u8; 8];
                r.read_exact(&mut pad[..self.pad])?;
                Ok(r)
            }
        }
    }
}

/// Pull at most `want` bytes of a tunnelled NAR: answer what is left of the current answer, or
/// ask for more (`STDERR_READ`, flushed) and read the answer's length.
fn read_tunnelled<R: Read, W: Write>(
    r: &mut R,
    w: &mut W,
    chunk: &mut u64,
    pad: &mut usize,
    left: u64,
    buf: &mut [u8],
) -> io::Result<usize> {
    if *chunk == 0 {
        if *pad > 0 {
            let mut b = [0u8; 8];
            r.read_exact(&mut b[..*pad])?;
            *pad = 0;
            if b.iter().any(|&x| x != 0) {
                return Err(invalid(
                    "non-zero padding in the NAR data of the client".into(),
                ));
            }
        }
        let ask = left.min(buf.len() as u64).min(64 * 1024);
        write_u64(w, READ)?;
        write_u64(w, ask)?;
        w.flush()?;
        let mut b = [0u8; 8];
        r.read_exact(&mut b)?;
        let n = u64::from_le_bytes(b);
        if n == 0 {
            return Err(eof("the client sends no more of the NAR"));
        }
        if n > ask {
            return Err(invalid(format!(
                "the client sends {n} bytes of the NAR where {ask} were asked for"
            )));
        }
        *chunk = n;
        *pad = crate::wire::padding(n);
    }
    let want = (*chunk).min(buf.len() as u64) as usize;
    // `min`: a reader that claims more than it was given cannot make the count wrap.
    let got = r.read(&mut buf[..want])?.min(want);
    if got == 0 {
        return Err(eof("the stream ends inside the NAR data of the client"));
    }
    *chunk -= got as u64;
    Ok(got)
}

impl<R: Read, W: Write> Read for NarPayload<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.left == 0 {
            return Ok(0);
        }
        let want = self.left.min(buf.len() as u64) as usize;
        let buf = &mut buf[..want];
        let got = match &mut self.src {
            Source::Framed(f) => f.read(buf)?,
            Source::Raw(r) => r.read(buf)?,
            Source::Tunnelled(r) => read_tunnelled(
                r,
                &mut self.w,
                &mut self.chunk,
                &mut self.pad,
                self.left,
                buf,
            )?,
        };
        if got == 0 {
            return Err(eof("the NAR ends before its announced size"));
        }
        self.left -= got as u64;
        Ok(got)
    }
}

/// Copy all of `data` to `w` as a framed stream (frames of at most 64 KiB), ended by the
/// empty frame and flushed. The number of payload bytes.
pub fn write_framed<W: Write + ?Sized, R: Read + ?Sized>(
    w: &mut W,
    data: &mut R,
) -> io::Result<u64> {
    let mut framed = BufWriter::with_capacity(64 * 1024, FramedWriter::new(&mut *w));
    let n = io::copy(data, &mut framed)?;
    framed
        .into_inner()
        .map_err(io::IntoInnerError::into_error)?
        .finish()?;
    Ok(n)
}

/// The server's side of the stream of `AddMultipleToStore`: [`MultiplePathsReader::next_path`]
/// gives each path info and its NAR in turn. `r` is the session's input, just after the
/// request's flags.
///
/// The path infos are read in their 1.16 form, whatever the session's version, as Nix does.
/// After the consumer is done, call [`MultiplePathsReader::finish`] so that the next
/// operation starts after the stream.
#[derive(Debug)]
pub struct MultiplePathsReader<R: Read> {
    framed: FramedReader<R>,
    store_dir: StoreDir,
    limits: Limits,
    /// Paths announced and not yet read; `None` before the count is read.
    left: Option<u64>,
    /// NAR bytes of the current path not yet handed out.
    nar_left: u64,
}

impl<R: Read> MultiplePathsReader<R> {
    pub fn new(r: R, store_dir: &StoreDir, limits: &Limits) -> Self {
        Self {
            framed: FramedReader::new(r),
            store_dir: store_dir.clone(),
            limits: *limits,
            left: None,
            nar_left: 0,
        }
    }

    /// The number of paths the client announced (read at the first call).
    pub fn count(&mut self) -> Result<u64, WireError> {
        if let Some(n) = self.left {
            return Ok(n);
        }
        let n = read_count(
            &mut self.framed,
            &self.limits,
            "number of paths of AddMultipleToStore",
        )?;
        self.left = Some(n);
        Ok(n)
    }

    /// The next path info and a reader of exactly its `nar_size` bytes of NAR (what is left of
    /// the previous NAR is skipped first); `None` after the announced number of paths.
    pub fn next_path(&mut self) -> Result<Option<(PathInfo, PathNar<'_, R>)>, WireError> {
        let left = self.count()?;
        if self.nar_left > 0 {
            let skip = self.nar_left;
            let got = io::copy(&mut (&mut self.framed).take(skip), &mut io::sink())
                .map_err(|e| WireError::io("the NAR of a path of AddMultipleToStore", e))?;
            if got < skip {
                return Err(WireError::io(
                    "the NAR of a path of AddMultipleToStore",
                    eof("the stream ends inside a NAR"),
                ));
            }
            self.nar_left = 0;
        }
        if left == 0 {
            return Ok(None);
        }
        let info = PathInfo::read(&mut self.framed, FULL, &self.store_dir, &self.limits)?;
        if info.info.nar_size == 0 {
            return Err(WireError::unexpected(
                "NAR size of a path of AddMultipleToStore (a NAR is never empty)",
                0,
            ));
        }
        self.left = Some(left - 1);
        self.nar_left = info.info.nar_size;
        Ok(Some((info, PathNar { parent: self })))
    }

    /// Skip the rest of the stream, up to and including its empty frame; the reader back.
    pub fn finish(mut self) -> io::Result<R> {
        self.framed.drain()?;
        Ok(self.framed.into_inner())
    }
}

/// The NAR of one path of a [`MultiplePathsReader`]: exactly its `nar_size` bytes, then end of
/// file; an [`io::ErrorKind::UnexpectedEof`] error when the stream ends before.
#[derive(Debug)]
pub struct PathNar<'a, R: Read> {
    parent: &'a mut MultiplePathsReader<R>,
}

impl<R: Read> PathNar<'_, R> {
    /// NAR bytes not read yet.
    pub fn remaining(&self) -> u64 {
        self.parent.nar_left
    }
}

impl<R: Read> Read for PathNar<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let p = &mut *self.parent;
        if buf.is_empty() || p.nar_left == 0 {
            return Ok(0);
        }
        let want = p.nar_left.min(buf.len() as u64) as usize;
        let got = p.framed.read(&mut buf[..want])?.min(want);
        if got == 0 {
            return Err(eof("the stream ends inside the NAR of a path"));
        }
        p.nar_left -= got as u64;
        Ok(got)
    }
}

/// The client's side of the stream of `AddMultipleToStore`: [`MultiplePathsWriter::new`]
/// with the number of paths, [`MultiplePathsWriter::add`] for each (dependencies first, as the
/// server registers them in turn), then [`MultiplePathsWriter::finish`].
#[derive(Debug)]
pub struct MultiplePathsWriter<W: Write> {
    out: BufWriter<FramedWriter<W>>,
    store_dir: StoreDir,
    left: u64,
}

impl<W: Write> MultiplePathsWriter<W> {
    pub fn new(w: W, store_dir: &StoreDir, count: u64) -> io::Result<Self> {
        let mut out = BufWriter::with_capacity(64 * 1024, FramedWriter::new(w));
        write_u64(&mut out, count)?;
        Ok(Self {
            out,
            store_dir: store_dir.clone(),
            left: count,
        })
    }

    /// One path: its info, then its NAR from `nar`, which must yield exactly
    /// `info.info.nar_size` bytes (else an [`io::ErrorKind::InvalidInput`] error, and the
    /// stream is unusable).
    pub fn add(&mut self, info: &PathInfo, nar: &mut dyn Read) -> io::Result<()> {
        if self.left == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "more paths than announced for AddMultipleToStore",
            ));
        }
        info.write(&mut self.out, FULL, &self.store_dir)?;
        let n = io::copy(&mut (&mut *nar).take(info.info.nar_size), &mut self.out)?;
        let mut extra = [0u8; 1];
        if n != info.info.nar_size || nar.read(&mut extra)? != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the NAR of '{}' is not of its announced size {}",
                    info.path, info.info.nar_size
                ),
            ));
        }
        self.left -= 1;
        Ok(())
    }

    /// End the stream (flushed); the writer back. Fewer paths than announced is an
    /// [`io::ErrorKind::InvalidInput`] error.
    pub fn finish(self) -> io::Result<W> {
        if self.left != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} paths fewer than announced for AddMultipleToStore",
                    self.left
                ),
            ));
        }
        self.out
            .into_inner()
            .map_err(io::IntoInnerError::into_error)?
            .finish()
    }
}

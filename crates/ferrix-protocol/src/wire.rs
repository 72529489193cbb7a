//! Nix's wire encoding, shared by the serve and worker protocols (and by NAR framing):
//!
//! - integers are u64 little-endian; booleans are u64 0 or 1; enums are u64;
//! - a byte string is its u64 length, the bytes, then zero bytes up to a multiple of 8;
//! - a list or set is a u64 count followed by its items; a map, a count then key/value pairs;
//! - a store path is a string holding the full path (`/nix/store/<hash>-<name>`); an optional
//!   store path is the empty string when absent;
//! - a framed stream is a sequence of (u64 length, that many raw bytes, *no* padding), ended by
//!   a frame of length zero.
//!
//! Readers check every length against [`Limits`] before allocating, grow buffers only as bytes
//! actually arrive, and return a [`WireError`] that says what was being read. Writers only fail
//! on I/O, so they return [`io::Result`].

use std::collections::BTreeSet;
use std::io::{self, Read, Write};

use ferrix_format::content_address::ContentAddressError;
use ferrix_format::hash::HashError;
use ferrix_format::store_path::StorePathError;
use ferrix_format::{StoreDir, StorePath};
use thiserror::Error;

pub use ferrix_format::wire::{padding, push_bytes, write_bytes, write_u64};

use crate::Version;

/// Bounds on what one read may take from a peer.
///
/// Every length and count read from the wire is checked against these before anything is
/// allocated, so a hostile 8-byte length prefix costs nothing. The bounds are per item: a list
/// of `max_items` strings of `max_string` bytes each is still allowed, and its memory grows only
/// as the peer actually sends the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest byte string (store path, environment value, log message, JSON …).
    pub max_string: u64,
    /// Most items in one list, set or map.
    pub max_items: u64,
}

impl Limits {
    /// 64 MiB per string (a derivation's environment can hold whole files, Nix sets no bound;
    /// 64 MiB is far above anything real and still harmless), 2^20 items per list (a closure
    /// of a million paths is far beyond NixOS systems, which have some ten thousand).
    pub const DEFAULT: Limits = Limits {
        max_string: 64 << 20,
        max_items: 1 << 20,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Why bytes from a peer were refused. Each variant names what was being read.
#[derive(Debug, Error)]
pub enum WireError {
    /// The stream failed or ended early ([`io::ErrorKind::UnexpectedEof`]).
    #[error("reading {what}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{what}: length {len} is over the limit of {limit}")]
    TooLong {
        what: &'static str,
        len: u64,
        limit: u64,
    },
    #[error("{what}: non-zero padding")]
    BadPadding { what: &'static str },
    #[error("{what} is not valid UTF-8")]
    BadUtf8 { what: &'static str },
    #[error("{what}: bad store path '{text}'")]
    BadStorePath {
        what: &'static str,
        text: String,
        #[source]
        source: StorePathError,
    },
    #[error("{what}: bad hash '{text}'")]
    BadHash {
        what: &'static str,
        text: String,
        #[source]
        source: HashError,
    },
    #[error("{what}: bad content address '{text}'")]
    BadContentAddress {
        what: &'static str,
        text: String,
        #[source]
        source: ContentAddressError,
    },
    /// A well-formed value that is not one of those allowed here (a boolean of 2, an unknown
    /// command or status, a name listed twice …).
    #[error("{what}: unexpected value {value}")]
    UnexpectedValue { what: &'static str, value: String },
    #[error("{what}: protocol mismatch: expected magic number {expected:#x}, got {got:#x}")]
    BadMagic {
        what: &'static str,
        expected: u64,
        got: u64,
    },
    #[error(
        "the peer speaks {protocol} protocol version {}, we speak {ours} and accept {minimum} or newer with the same major version",
        Version::describe_wire(*.theirs)
    )]
    UnsupportedVersion {
        protocol: &'static str,
        ours: Version,
        minimum: Version,
        /// As sent.
        theirs: u64,
    },
}

impl WireError {
    pub fn io(what: &'static str, source: io::Error) -> Self {
        Self::Io { what, source }
    }

    /// An unexpected value, its text cut to a readable length.
    pub fn unexpected(what: &'static str, value: impl std::fmt::Display) -> Self {
        let mut value = value.to_string();
        if value.len() > 200 {
            let mut cut = 200;
            while !value.is_char_boundary(cut) {
                cut -= 1;
            }
            value.truncate(cut);
            value.push('…');
        }
        Self::UnexpectedValue { what, value }
    }

    /// Whether the stream ended before the value was complete.
    pub fn is_eof(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.kind() == io::ErrorKind::UnexpectedEof)
    }
}

/// A `Result` with [`WireError`].
pub type Result<T, E = WireError> = std::result::Result<T, E>;

fn eof(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, msg)
}

/// Read exactly `buf.len()` bytes, retrying on `Interrupted`.
fn fill<R: Read + ?Sized>(r: &mut R, buf: &mut [u8], what: &'static str) -> Result<()> {
    r.read_exact(buf).map_err(|e| WireError::io(what, e))
}

/// One u64.
pub fn read_u64<R: Read + ?Sized>(r: &mut R, what: &'static str) -> Result<u64> {
    let mut b = [0u8; 8];
    fill(r, &mut b, what)?;
    Ok(u64::from_le_bytes(b))
}

/// One u64, or `None` when the stream ends cleanly before its first byte (the way a peer
/// ends a session between messages). A stream ending inside the number is an error.
pub fn read_u64_or_eof<R: Read + ?Sized>(r: &mut R, what: &'static str) -> Result<Option<u64>> {
    let mut b = [0u8; 8];
    let mut got = 0;
    while got < 8 {
        match r.read(&mut b[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(WireError::io(what, eof("the stream ends inside a number"))),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(WireError::io(what, e)),
        }
    }
    Ok(Some(u64::from_le_bytes(b)))
}

/// A boolean: exactly 0 or 1 (what every Nix writes).
pub fn read_bool<R: Read + ?Sized>(r: &mut R, what: &'static str) -> Result<bool> {
    match read_u64(r, what)? {
        0 => Ok(false),
        1 => Ok(true),
        n => Err(WireError::unexpected(what, n)),
    }
}

pub fn write_bool<W: Write + ?Sized>(w: &mut W, b: bool) -> io::Result<()> {
    write_u64(w, u64::from(b))
}

/// A count of list items, checked against `limits.max_items`.
pub fn read_count<R: Read + ?Sized>(r: &mut R, limits: &Limits, what: &'static str) -> Result<u64> {
    let n = read_u64(r, what)?;
    if n > limits.max_items {
        return Err(WireError::TooLong {
            what,
            len: n,
            limit: limits.max_items,
        });
    }
    Ok(n)
}

/// Room to reserve for `n` items up front: never much, whatever the peer claims.
pub(crate) fn initial_capacity(n: u64) -> usize {
    n.min(1024) as usize
}

/// Consume and check the zero padding after `len` bytes.
fn read_padding<R: Read + ?Sized>(r: &mut R, len: u64, what: &'static str) -> Result<()> {
    let pad = padding(len);
    if pad > 0 {
        let mut b = [0u8; 8];
        fill(r, &mut b[..pad], what)?;
        if b[..pad].iter().any(|&x| x != 0) {
            return Err(WireError::BadPadding { what });
        }
    }
    Ok(())
}

/// A byte string, at most `limits.max_string` long.
pub fn read_bytes<R: Read + ?Sized>(
    r: &mut R,
    limits: &Limits,
    what: &'static str,
) -> Result<Vec<u8>> {
    let len = read_u64(r, what)?;
    if len > limits.max_string {
        return Err(WireError::TooLong {
            what,
            len,
            limit: limits.max_string,
        });
    }
    // Grow with what arrives rather than trusting the length.
    let mut buf = Vec::with_capacity(len.min(64 * 1024) as usize);
    let got = (&mut *r)
        .take(len)
        .read_to_end(&mut buf)
        .map_err(|e| WireError::io(what, e))?;
    if (got as u64) < len {
        return Err(WireError::io(what, eof("the stream ends inside a string")));
    }
    read_padding(r, len, what)?;
    Ok(buf)
}

/// A UTF-8 string.
pub fn read_string<R: Read + ?Sized>(
    r: &mut R,
    limits: &Limits,
    what: &'static str,
) -> Result<String> {
    String::from_utf8(read_bytes(r, limits, what)?).map_err(|_| WireError::BadUtf8 { what })
}

pub fn write_str<W: Write + ?Sized>(w: &mut W, s: &str) -> io::Result<()> {
    write_bytes(w, s.as_bytes())
}

/// A list of strings, in order.
pub fn read_strings<R: Read + ?Sized>(
    r: &mut R,
    limits: &Limits,
    what: &'static str,
) -> Result<Vec<String>> {
    let n = read_count(r, limits, what)?;
    let mut v = Vec::with_capacity(initial_capacity(n));
    for _ in 0..n {
        v.push(read_string(r, limits, what)?);
    }
    Ok(v)
}

/// A set of strings; a string sent twice counts once (as in Nix).
pub fn read_string_set<R: Read + ?Sized>(
    r: &mut R,
    limits: &Limits,
    what: &'static str,
) -> Result<BTreeSet<String>> {
    let n = read_count(r, limits, what)?;
    let mut s = BTreeSet::new();
    for _ in 0..n {
        s.insert(read_string(r, limits, what)?);
    }
    Ok(s)
}

/// A list or set of strings: the count, then each.
pub fn write_strings<'a, W, I>(w: &mut W, items: I) -> io::Result<()>
where
    W: Write + ?Sized,
    I: IntoIterator<Item = &'a str>,
    I::IntoIter: ExactSizeIterator,
{
    let items = items.into_iter();
    write_u64(w, items.len() as u64)?;
    for s in items {
        write_str(w, s)?;
    }
    Ok(())
}

/// Parse the full text of a store path in `store_dir`.
pub fn parse_store_path(
    store_dir: &StoreDir,
    text: String,
    what: &'static str,
) -> Result<StorePath> {
    match store_dir.parse_path(&text) {
        Ok(p) => Ok(p),
        Err(source) => Err(WireError::BadStorePath { what, text, source }),
    }
}

/// A store path, sent in full.
pub fn read_store_path<R: Read + ?Sized>(
    r: &mut R,
    store_dir: &StoreDir,
    limits: &Limits,
    what: &'static str,
) -> Result<StorePath> {
    let text = read_string(r, limits, what)?;
    parse_store_path(store_dir, text, what)
}

/// A store path or the empty string.
pub fn read_opt_store_path<R: Read + ?Sized>(
    r: &mut R,
    store_dir: &StoreDir,
    limits: &Limits,
    what: &'static str,
) -> Result<Option<StorePath>> {
    let text = read_string(r, limits, what)?;
    if text.is_empty() {
        return Ok(None);
    }
    parse_store_path(store_dir, text, what).map(Some)
}

/// A set of store paths; a path sent twice counts once (as in Nix).
pub fn read_store_path_set<R: Read + ?Sized>(
    r: &mut R,
    store_dir: &StoreDir,
    limits: &Limits,
    what: &'static str,
) -> Result<BTreeSet<StorePath>> {
    let n = read_count(r, limits, what)?;
    let mut s = BTreeSet::new();
    for _ in 0..n {
        s.insert(read_store_path(r, store_dir, limits, what)?);
    }
    Ok(s)
}

pub fn write_store_path<W: Write + ?Sized>(
    w: &mut W,
    store_dir: &StoreDir,
    path: &StorePath,
) -> io::Result<()> {
    write_str(w, &store_dir.display(path))
}

pub fn write_opt_store_path<W: Write + ?Sized>(
    w: &mut W,
    store_dir: &StoreDir,
    path: Option<&StorePath>,
) -> io::Result<()> {
    match path {
        Some(p) => write_store_path(w, store_dir, p),
        None => write_str(w, ""),
    }
}

/// A list or set of store paths, in the order given (a `BTreeSet` gives Nix's order).
pub fn write_store_paths<'a, W, I>(w: &mut W, store_dir: &StoreDir, paths: I) -> io::Result<()>
where
    W: Write + ?Sized,
    I: IntoIterator<Item = &'a StorePath>,
    I::IntoIter: ExactSizeIterator,
{
    let paths = paths.into_iter();
    write_u64(w, paths.len() as u64)?;
    for p in paths {
        write_store_path(w, store_dir, p)?;
    }
    Ok(())
}

/// The reading side of a framed stream: the payload of the frames, then end of file at the
/// terminating empty frame. The underlying reader is left just after that frame.
///
/// Frames are streamed, never buffered, so no length limit is needed.
#[derive(Debug)]
pub struct FramedReader<R> {
    inner: R,
    /// Bytes left in the current frame.
    left: u64,
    done: bool,
}

impl<R: Read> FramedReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            left: 0,
            done: false,
        }
    }

    /// Whether the terminating frame has been read.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Skip the rest of the payload, up to and including the terminating frame; the number
    /// of payload bytes skipped.
    pub fn drain(&mut self) -> io::Result<u64> {
        io::copy(self, &mut io::sink())
    }

    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for FramedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.done {
            return Ok(0);
        }
        if self.left == 0 {
            let mut b = [0u8; 8];
            self.inner.read_exact(&mut b).map_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    eof("the framed stream ends without its terminating frame")
                } else {
                    e
                }
            })?;
            let n = u64::from_le_bytes(b);
            if n == 0 {
                self.done = true;
                return Ok(0);
            }
            self.left = n;
        }
        let want = self.left.min(buf.len() as u64) as usize;
        let got = self.inner.read(&mut buf[..want])?;
        if got == 0 {
            return Err(eof("the framed stream ends inside a frame"));
        }
        self.left -= got as u64;
        Ok(got)
    }
}

/// The writing side of a framed stream: every non-empty `write` becomes one frame (wrap it in
/// a [`io::BufWriter`] to make frames larger); [`FramedWriter::finish`] writes the terminating
/// empty frame.
#[derive(Debug)]
pub struct FramedWriter<W: Write> {
    inner: W,
}

impl<W: Write> FramedWriter<W> {
    pub fn new(inner: W) -> Self {
        Self { inner }
    }

    /// End the stream with the empty frame and flush; the underlying writer back.
    pub fn finish(mut self) -> io::Result<W> {
        write_u64(&mut self.inner, 0)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for FramedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // An empty frame would end the stream.
        if buf.is_empty() {
            return Ok(0);
        }
        write_u64(&mut self.inner, buf.len() as u64)?;
        self.inner.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Exactly `size` bytes of the underlying reader: end of file after them, and an
/// [`io::ErrorKind::UnexpectedEof`] error (rather than a short read that looks complete) when
/// the underlying stream ends before.
#[derive(Debug)]
pub struct SizedReader<R> {
    inner: R,
    left: u64,
}

impl<R: Read> SizedReader<R> {
    pub fn new(inner: R, size: u64) -> Self {
        Self { inner, left: size }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> u64 {
        self.left
    }

    /// Read and discard what is left.
    pub fn drain(&mut self) -> io::Result<u64> {
        io::copy(self, &mut io::sink())
    }

    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for SizedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.left == 0 {
            return Ok(0);
        }
        let want = self.left.min(buf.len() as u64) as usize;
        let got = self.inner.read(&mut buf[..want])?;
        if got == 0 {
            return Err(eof("the stream ends before the announced size"));
        }
        self.left -= got as u64;
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits::DEFAULT;

    fn dir() -> StoreDir {
        StoreDir::default()
    }

    const P: &str = "/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo";

    #[test]
    fn numbers_and_bools() {
        let mut v = Vec::new();
        write_u64(&mut v, 0x0102_0304_0506_0708).unwrap();
        write_bool(&mut v, true).unwrap();
        assert_eq!(&v[..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
        let mut r = &v[..];
        assert_eq!(read_u64(&mut r, "n").unwrap(), 0x0102_0304_0506_0708);
        assert!(read_bool(&mut r, "b").unwrap());
        assert_eq!(read_u64_or_eof(&mut r, "n").unwrap(), None);

        let two = 2u64.to_le_bytes();
        let e = read_bool(&mut &two[..], "lock flag").unwrap_err();
        assert!(
            matches!(e, WireError::UnexpectedValue { what: "lock flag", ref value } if value == "2")
        );
        let e = read_u64_or_eof(&mut &two[..3], "command").unwrap_err();
        assert!(e.is_eof(), "{e}");
    }

    #[test]
    fn strings() {
        let mut v = Vec::new();
        write_str(&mut v, "abc").unwrap();
        assert_eq!(v, b"\x03\0\0\0\0\0\0\0abc\0\0\0\0\0");
        assert_eq!(read_string(&mut &v[..], &L, "s").unwrap(), "abc");

        let mut bad = v.clone();
        bad[15] = 1;
        let e = read_string(&mut &bad[..], &L, "name").unwrap_err();
        assert!(matches!(e, WireError::BadPadding { what: "name" }));

        let e = read_string(&mut &v[..12], &L, "name").unwrap_err();
        assert!(e.is_eof());
        let e = read_string(&mut &v[..13], &L, "name").unwrap_err();
        assert!(e.is_eof());

        let mut nonutf = Vec::new();
        write_bytes(&mut nonutf, b"\xff").unwrap();
        assert!(matches!(
            read_string(&mut &nonutf[..], &L, "x").unwrap_err(),
            WireError::BadUtf8 { what: "x" }
        ));
        // Bytes need not be UTF-8.
        assert_eq!(read_bytes(&mut &nonutf[..], &L, "x").unwrap(), b"\xff");

        let mut empty = Vec::new();
        write_str(&mut empty, "").unwrap();
        assert_eq!(empty, [0; 8]);
        assert_eq!(read_string(&mut &empty[..], &L, "s").unwrap(), "");
    }

    #[test]
    fn limits_checked_before_allocating() {
        let huge = u64::MAX.to_le_bytes();
        let e = read_bytes(&mut &huge[..], &L, "env value").unwrap_err();
        assert!(matches!(
            e,
            WireError::TooLong { what: "env value", len: u64::MAX, limit } if limit == L.max_string
        ));
        let e = read_strings(&mut &huge[..], &L, "args").unwrap_err();
        assert!(matches!(e, WireError::TooLong { what: "args", .. }));
        let small = Limits {
            max_string: 2,
            max_items: 1,
        };
        let mut v = Vec::new();
        write_strings(&mut v, ["abc"]).unwrap();
        assert!(matches!(
            read_strings(&mut &v[..], &small, "x").unwrap_err(),
            WireError::TooLong {
                len: 3,
                limit: 2,
                ..
            }
        ));
        let mut v = Vec::new();
        write_strings(&mut v, ["a", "b"]).unwrap();
        assert!(matches!(
            read_strings(&mut &v[..], &small, "x").unwrap_err(),
            WireError::TooLong {
                len: 2,
                limit: 1,
                ..
            }
        ));
        // A length just within the limit but not backed by data is an early end, not a
        // 64 MiB allocation.
        let claim = L.max_string.to_le_bytes();
        assert!(read_bytes(&mut &claim[..], &L, "x").unwrap_err().is_eof());
    }

    #[test]
    fn store_paths() {
        let d = dir();
        let p = d.parse_path(P).unwrap();
        let mut v = Vec::new();
        write_store_path(&mut v, &d, &p).unwrap();
        write_opt_store_path(&mut v, &d, None).unwrap();
        write_opt_store_path(&mut v, &d, Some(&p)).unwrap();
        let set: BTreeSet<StorePath> = [p.clone()].into();
        write_store_paths(&mut v, &d, &set).unwrap();
        let mut r = &v[..];
        assert_eq!(read_store_path(&mut r, &d, &L, "p").unwrap(), p);
        assert_eq!(read_opt_store_path(&mut r, &d, &L, "p").unwrap(), None);
        assert_eq!(read_opt_store_path(&mut r, &d, &L, "p").unwrap(), Some(p));
        assert_eq!(read_store_path_set(&mut r, &d, &L, "p").unwrap(), set);
        assert!(r.is_empty());

        let mut v = Vec::new();
        write_str(&mut v, "/tmp/x").unwrap();
        let e = read_store_path(&mut &v[..], &d, &L, "drv path").unwrap_err();
        assert!(
            matches!(e, WireError::BadStorePath { what: "drv path", ref text, .. } if text == "/tmp/x")
        );
        let mut v = Vec::new();
        write_str(&mut v, "").unwrap();
        assert!(read_store_path(&mut &v[..], &d, &L, "p").is_err());
    }

    #[test]
    fn framed() {
        let mut w = FramedWriter::new(Vec::new());
        w.write_all(b"hello").unwrap();
        w.write_all(b"").unwrap();
        w.write_all(b" world!!!").unwrap();
        let mut v = w.finish().unwrap();
        let mut expect = Vec::new();
        for part in [&b"hello"[..], b" world!!!", b""] {
            expect.extend_from_slice(&(part.len() as u64).to_le_bytes());
            expect.extend_from_slice(part);
        }
        assert_eq!(v, expect);
        v.extend_from_slice(b"after");

        let mut r = FramedReader::new(&v[..]);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"hello world!!!");
        assert!(r.is_done());
        assert_eq!(r.read(&mut [0; 4]).unwrap(), 0);
        assert_eq!(r.into_inner(), b"after");

        // Truncated inside a frame and before the end frame.
        for cut in [3, 10, 13, expect.len() - 1] {
            let mut r = FramedReader::new(&expect[..cut]);
            let e = r.read_to_end(&mut Vec::new()).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "cut {cut}");
        }
        let mut r = FramedReader::new(&expect[..]);
        assert_eq!(r.drain().unwrap(), 14);
    }

    #[test]
    fn sized() {
        let data = b"0123456789";
        let mut r = SizedReader::new(&data[..], 4);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"0123");
        assert_eq!(r.into_inner(), b"456789");
        let mut r = SizedReader::new(&data[..], 11);
        let e = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        let mut r = SizedReader::new(&data[..], 6);
        r.read_exact(&mut [0; 2]).unwrap();
        assert_eq!(r.remaining(), 4);
        assert_eq!(r.drain().unwrap(), 4);
        assert_eq!(r.into_inner(), b"6789");
    }
}

//! A strict, streaming NAR reader: canonical archives only, every error at a byte offset.

use std::fmt;
use std::io::{self, Read};

use thiserror::Error;

use super::{MAGIC, MAX_NAME};
use crate::wire::padding;

/// What is wrong with an archive.
#[derive(Debug, Error)]
pub enum NarErrorKind {
    #[error("input doesn't look like a Nix archive (bad magic)")]
    BadMagic,
    #[error("the archive ends early")]
    Truncated,
    #[error("expected '{expected}', found {found}")]
    Expected {
        expected: &'static str,
        found: Token,
    },
    #[error("unknown file type {0}")]
    UnknownType(Token),
    #[error("the 'executable' marker must be followed by an empty string")]
    ExecutableNotEmpty,
    #[error("invalid file name {0}")]
    BadName(Token),
    #[error("entry {name} is not after {prev} in byte order (entries must be sorted, without duplicates)")]
    Unsorted { name: Token, prev: Token },
    #[error("invalid symlink target {0}")]
    BadTarget(Token),
    #[error("non-zero padding")]
    NonZeroPadding,
    #[error("a string of {0} bytes is longer than allowed here")]
    TooLong(u64),
    #[error("data after the end of the archive")]
    TrailingData,
    #[error("reading the archive: {0}")]
    Io(io::Error),
    #[error("at '{path}': {cause}")]
    Visit { path: String, cause: io::Error },
}

/// A NAR error and the offset of the byte where it was found.
#[derive(Debug, Error)]
#[error("bad archive at byte {offset}: {kind}")]
pub struct NarError {
    pub offset: u64,
    pub kind: NarErrorKind,
}

/// A short, printable rendering of a token read from an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token(pub Vec<u8>);

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: Vec<u8> = self.0.iter().copied().take(64).collect();
        write!(f, "'{}'", String::from_utf8_lossy(&shown).escape_debug())?;
        if self.0.len() > 64 {
            write!(f, "…")?;
        }
        Ok(())
    }
}

/// Receives the tree as it is read. Paths are relative to the root, components joined by
/// `/`; the root itself is the empty path.
pub trait NarVisitor {
    fn directory(&mut self, path: &[u8]) -> io::Result<()>;
    /// Called after the last entry of a directory.
    fn end_directory(&mut self, _path: &[u8]) -> io::Result<()> {
        Ok(())
    }
    /// `contents` yields exactly `size` bytes; what the visitor leaves unread is skipped.
    /// `offset` is where the contents start in the archive.
    fn regular(
        &mut self,
        path: &[u8],
        executable: bool,
        size: u64,
        offset: u64,
        contents: &mut dyn Read,
    ) -> io::Result<()>;
    fn symlink(&mut self, path: &[u8], target: &[u8]) -> io::Result<()>;
}

/// A visitor that keeps nothing: for reading an archive only to check it, hash it, or find
/// where it ends in a stream (what the visitor leaves of a file's contents is skipped).
#[derive(Debug, Clone, Copy, Default)]
pub struct Discard;

impl NarVisitor for Discard {
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

struct Reader<R> {
    inner: R,
    offset: u64,
}

impl<R: Read> Reader<R> {
    fn err(&self, kind: NarErrorKind) -> NarError {
        NarError {
            offset: self.offset,
            kind,
        }
    }

    fn fill(&mut self, buf: &mut [u8]) -> Result<(), NarError> {
        let mut done = 0;
        while done < buf.len() {
            match self.inner.read(&mut buf[done..]) {
                Ok(0) => return Err(self.err(NarErrorKind::Truncated)),
                Ok(n) => {
                    done += n;
                    self.offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.err(NarErrorKind::Io(e))),
            }
        }
        Ok(())
    }

    fn u64(&mut self) -> Result<u64, NarError> {
        let mut b = [0u8; 8];
        self.fill(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn pad(&mut self, len: u64) -> Result<(), NarError> {
        let n = padding(len);
        let mut b = [0u8; 8];
        let at = self.offset;
        self.fill(&mut b[..n])?;
        if b[..n].iter().any(|&x| x != 0) {
            return Err(NarError {
                offset: at,
                kind: NarErrorKind::NonZeroPadding,
            });
        }
        Ok(())
    }

    /// A framed string of at most `max` bytes; `None` (with the length) if longer, which
    /// callers turn into their own error without reading the payload.
    fn string(&mut self, max: usize) -> Result<Result<Vec<u8>, u64>, NarError> {
        let len = self.u64()?;
        if len > max as u64 {
            return Ok(Err(len));
        }
        let mut v = vec![0u8; len as usize];
        self.fill(&mut v)?;
        self.pad(len)?;
        Ok(Ok(v))
    }

    fn expect(&mut self, expected: &'static str) -> Result<(), NarError> {
        let at = self.offset;
        // Read at most a little more than the keyword so a huge length cannot exhaust memory.
        match self.small()? {
            Ok(v) if v.is(expected.as_bytes()) => Ok(()),
            Ok(v) => Err(NarError {
                offset: at,
                kind: NarErrorKind::Expected {
                    expected,
                    found: v.token(),
                },
            }),
            Err(len) => Err(NarError {
                offset: at,
                kind: NarErrorKind::Expected {
                    expected,
                    found: Token(format!("a string of {len} bytes").into_bytes()),
                },
            }),
        }
    }

    /// A framed string of at most `max` bytes into `out` (replacing what it held); the length
    /// if longer, without reading the payload.
    fn string_into(&mut self, out: &mut Vec<u8>, max: usize) -> Result<Result<(), u64>, NarError> {
        let len = self.u64()?;
        if len > max as u64 {
            return Ok(Err(len));
        }
        out.clear();
        out.resize(len as usize, 0);
        self.fill(out)?;
        self.pad(len)?;
        Ok(Ok(()))
    }

    /// A framed string of at most [`SMALL`] bytes, without allocating; the length if longer.
    fn small(&mut self) -> Result<Result<Small, u64>, NarError> {
        let len = self.u64()?;
        if len > SMALL as u64 {
            return Ok(Err(len));
        }
        let mut s = Small {
            bytes: [0; SMALL],
            len: len as usize,
        };
        self.fill(&mut s.bytes[..s.len])?;
        self.pad(len)?;
        Ok(Ok(s))
    }

    /// A keyword; anything longer than [`SMALL`] is `TooLong`.
    fn keyword(&mut self) -> Result<Small, NarError> {
        let at = self.offset;
        match self.small()? {
            Ok(v) => Ok(v),
            Err(len) => Err(NarError {
                offset: at,
                kind: NarErrorKind::TooLong(len),
            }),
        }
    }
}

/// The longest keyword read (`executable` and `directory` and every other fit).
const SMALL: usize = 16;

/// A short string read from an archive, kept on the stack.
struct Small {
    bytes: [u8; SMALL],
    len: usize,
}

impl Small {
    fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }
    fn is(&self, s: &[u8]) -> bool {
        self.as_bytes() == s
    }
    fn token(&self) -> Token {
        Token(self.as_bytes().to_vec())
    }
}

/// Reads exactly `left` bytes of file contents from the archive.
struct Contents<'a, R> {
    r: &'a mut Reader<R>,
    left: u64,
}

impl<R: Read> Read for Contents<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.r.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= n as u64;
        self.r.offset += n as u64;
        Ok(n)
    }
}

/// Parse one NAR from `input`, feeding `visitor`; stops right after the root node, leaving any
/// further bytes unread (for archives embedded in a protocol stream).
pub fn parse<R: Read, V: NarVisitor + ?Sized>(input: R, visitor: &mut V) -> Result<u64, NarError> {
    let mut r = Reader {
        inner: input,
        offset: 0,
    };
    parse_inner(&mut r, visitor)?;
    Ok(r.offset)
}

/// Parse one NAR that must make up the whole of `input`. Returns the archive's size.
pub fn parse_exact<R: Read, V: NarVisitor + ?Sized>(
    input: R,
    visitor: &mut V,
) -> Result<u64, NarError> {
    let mut r = Reader {
        inner: input,
        offset: 0,
    };
    parse_inner(&mut r, visitor)?;
    let mut b = [0u8; 1];
    loop {
        match r.inner.read(&mut b) {
            Ok(0) => return Ok(r.offset),
            Ok(_) => return Err(r.err(NarErrorKind::TrailingData)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(r.err(NarErrorKind::Io(e))),
        }
    }
}

fn parse_inner<R: Read, V: NarVisitor + ?Sized>(
    r: &mut Reader<R>,
    visitor: &mut V,
) -> Result<(), NarError> {
    match r.string(MAGIC.len()) {
        Ok(Ok(m)) if m == MAGIC => {}
        Ok(_) => {
            return Err(NarError {
                offset: 0,
                kind: NarErrorKind::BadMagic,
            })
        }
        // Nothing at all is a stream cut short (an export cut after its marker), not a
        // stranger's file.
        Err(e) if matches!(e.kind, NarErrorKind::Truncated) && r.offset == 0 => return Err(e),
        Err(e)
            if matches!(
                e.kind,
                NarErrorKind::Truncated | NarErrorKind::NonZeroPadding
            ) =>
        {
            return Err(NarError {
                offset: 0,
                kind: NarErrorKind::BadMagic,
            })
        }
        Err(e) => return Err(e),
    }
    Tree::default().parse(r, visitor)
}

fn visit_err<R: Read>(r: &Reader<R>, path: &[u8], source: io::Error) -> NarError {
    r.err(NarErrorKind::Visit {
        path: String::from_utf8_lossy(path).into_owned(),
        cause: source,
    })
}

/// A directory whose entries are being read.
#[derive(Default)]
struct Dir {
    /// Length of the path of the directory itself.
    path_len: usize,
    /// The name of the previous entry, to check the order (empty before the first).
    prev: Vec<u8>,
}

/// The walk through an archive. Nesting is kept in `dirs`, not on the call stack, so any
/// depth parses in constant stack space; memory grows with the depth, which the archive's
/// own length bounds.
#[derive(Default)]
struct Tree {
    /// The path of the node being read, relative to the root.
    path: Vec<u8>,
    /// The open directories, innermost last: `dirs[..depth]`. Deeper slots are kept for
    /// their buffers.
    dirs: Vec<Dir>,
    depth: usize,
    /// The entry name being read.
    name: Vec<u8>,
}

impl Tree {
    fn parse<R: Read, V: NarVisitor + ?Sized>(
        mut self,
        r: &mut Reader<R>,
        v: &mut V,
    ) -> Result<(), NarError> {
        loop {
            let dir = self.node(r, v)?;
            // A file or symlink is complete; a directory's entries follow.
            if !dir {
                self.close_entry(r)?;
            }
            loop {
                if self.depth == 0 {
                    return Ok(());
                }
                if self.next_entry(r, v)? {
                    break;
                }
                // The directory ended, and with it the entry holding it.
                self.depth -= 1;
                self.close_entry(r)?;
            }
        }
    }

    /// After a node: the `)` closing the entry that held it (nothing for the root); the
    /// entry's name becomes the previous one of its directory.
    fn close_entry<R: Read>(&mut self, r: &mut Reader<R>) -> Result<(), NarError> {
        let Some(d) = self.depth.checked_sub(1).and_then(|i| self.dirs.get_mut(i)) else {
            return Ok(());
        };
        r.expect(")")?;
        let start = d.path_len + usize::from(d.path_len > 0);
        d.prev.clear();
        d.prev
            .extend_from_slice(self.path.get(start..).unwrap_or_default());
        self.path.truncate(d.path_len);
        Ok(())
    }

    /// In the innermost directory: `true` when an entry starts (its node next, its name
    /// appended to the path), `false` when the directory ends.
    fn next_entry<R: Read, V: NarVisitor + ?Sized>(
        &mut self,
        r: &mut Reader<R>,
        v: &mut V,
    ) -> Result<bool, NarError> {
        let Some(d) = self.depth.checked_sub(1).and_then(|i| self.dirs.get_mut(i)) else {
            return Ok(false);
        };
        let at = r.offset;
        let t = r
            .keyword()
            .map_err(|e| e.with_expected(at, "entry' or ')"))?;
        if t.is(b")") {
            v.end_directory(&self.path)
                .map_err(|e| visit_err(r, &self.path, e))?;
            return Ok(false);
        }
        if !t.is(b"entry") {
            return Err(NarError {
                offset: at,
                kind: NarErrorKind::Expected {
                    expected: "entry' or ')",
                    found: t.token(),
                },
            });
        }
        r.expect("(")?;
        r.expect("name")?;
        let at = r.offset;
        let name = &mut self.name;
        if let Err(len) = r.string_into(name, MAX_NAME)? {
            return Err(NarError {
                offset: at,
                kind: NarErrorKind::TooLong(len),
            });
        }
        if name.is_empty()
            || name[..] == b"."[..]
            || name[..] == b".."[..]
            || name.contains(&b'/')
            || name.contains(&0)
        {
            return Err(NarError {
                offset: at,
                kind: NarErrorKind::BadName(Token(name.clone())),
            });
        }
        if !d.prev.is_empty() && *name <= d.prev {
            return Err(NarError {
                offset: at,
                kind: NarErrorKind::Unsorted {
                    name: Token(name.clone()),
                    prev: Token(d.prev.clone()),
                },
            });
        }
        r.expect("node")?;
        if !self.path.is_empty() {
            self.path.push(b'/');
        }
        self.path.extend_from_slice(name);
        Ok(true)
    }

    /// One node at `path`; `true` for a directory, which is then open with no entry read.
    fn node<R: Read, V: NarVisitor + ?Sized>(
        &mut self,
        r: &mut Reader<R>,
        v: &mut V,
    ) -> Result<bool, NarError> {
        let path = &self.path[..];
        r.expect("(")?;
        r.expect("type")?;
        let at = r.offset;
        let ty = r.keyword().map_err(|e| match e.kind {
            NarErrorKind::TooLong(_) => NarError {
                offset: at,
                kind: NarErrorKind::UnknownType(Token(b"(too long)".to_vec())),
            },
            _ => e,
        })?;
        if ty.is(b"regular") {
            let at = r.offset;
            let mut field = r.keyword().map_err(|e| e.with_expected(at, "contents"))?;
            let mut executable = false;
            if field.is(b"executable") {
                let at = r.offset;
                let marker = r.keyword().map_err(|e| NarError {
                    offset: at,
                    kind: match e.kind {
                        NarErrorKind::TooLong(_) => NarErrorKind::ExecutableNotEmpty,
                        k => k,
                    },
                })?;
                if !marker.is(b"") {
                    return Err(NarError {
                        offset: at,
                        kind: NarErrorKind::ExecutableNotEmpty,
                    });
                }
                executable = true;
                let at2 = r.offset;
                field = r.keyword().map_err(|e| e.with_expected(at2, "contents"))?;
                if !field.is(b"contents") {
                    return Err(NarError {
                        offset: at2,
                        kind: NarErrorKind::Expected {
                            expected: "contents",
                            found: field.token(),
                        },
                    });
                }
            }
            if !field.is(b"contents") {
                return Err(NarError {
                    offset: at,
                    kind: NarErrorKind::Expected {
                        expected: if executable {
                            "contents"
                        } else {
                            "executable' or 'contents"
                        },
                        found: field.token(),
                    },
                });
            }
            let size = r.u64()?;
            let start = r.offset;
            let mut c = Contents { r, left: size };
            let res = v.regular(path, executable, size, start, &mut c);
            let left = c.left;
            if let Err(e) = res {
                // `size` comes from the archive: it may be absurd, so no plain addition.
                if e.kind() == io::ErrorKind::UnexpectedEof && r.offset - start < size {
                    return Err(r.err(NarErrorKind::Truncated));
                }
                return Err(visit_err(r, path, e));
            }
            if left > 0 {
                let mut c = Contents { r, left };
                match io::copy(&mut c, &mut io::sink()) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        return Err(r.err(NarErrorKind::Truncated))
                    }
                    Err(e) => return Err(r.err(NarErrorKind::Io(e))),
                }
            }
            r.pad(size)?;
        } else if ty.is(b"symlink") {
            r.expect("target")?;
            let at = r.offset;
            let target = match r.string(MAX_NAME)? {
                Ok(t) => t,
                Err(len) => {
                    return Err(NarError {
                        offset: at,
                        kind: NarErrorKind::TooLong(len),
                    })
                }
            };
            if target.is_empty() || target.contains(&0) {
                return Err(NarError {
                    offset: at,
                    kind: NarErrorKind::BadTarget(Token(target)),
                });
            }
            v.symlink(path, &target)
                .map_err(|e| visit_err(r, path, e))?;
        } else if ty.is(b"directory") {
            v.directory(path).map_err(|e| visit_err(r, path, e))?;
            let path_len = path.len();
            match self.dirs.get_mut(self.depth) {
                Some(d) => {
                    d.path_len = path_len;
                    d.prev.clear();
                }
                None => self.dirs.push(Dir {
                    path_len,
                    prev: Vec::new(),
                }),
            }
            self.depth += 1;
            return Ok(true);
        } else {
            return Err(NarError {
                offset: at,
                kind: NarErrorKind::UnknownType(ty.token()),
            });
        }
        r.expect(")")?;
        Ok(false)
    }
}

impl NarError {
    /// A token that was too long where a keyword belonged is reported as the keyword missing.
    fn with_expected(self, at: u64, expected: &'static str) -> NarError {
        match self.kind {
            NarErrorKind::TooLong(len) => NarError {
                offset: at,
                kind: NarErrorKind::Expected {
                    expected,
                    found: Token(format!("a string of {len} bytes").into_bytes()),
                },
            },
            _ => self,
        }
    }
}

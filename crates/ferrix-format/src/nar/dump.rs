//! Serialising a file system tree as a NAR, streaming, and hashing it on a second thread.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use rustix::fs::{openat, readlinkat, statat, AtFlags, FileType, Mode, OFlags, RawDir};
use thiserror::Error;

use super::dirs::{DirStack, DIR_FLAGS};
use super::MAGIC;
use crate::hash::{Hash, HashAlgo, HashSink};
use crate::wire::{padding, push_bytes};

/// Why a tree could not be serialised.
#[derive(Debug, Error)]
pub enum DumpError {
    #[error("reading '{path}'")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("file '{path}' has an unsupported type ({kind}); a NAR holds only regular files, directories and symlinks")]
    UnsupportedType { path: PathBuf, kind: &'static str },
    #[error("file '{path}' changed size while it was being archived")]
    Changed { path: PathBuf },
    #[error("writing the archive")]
    Write(#[source] io::Error),
}

/// Buffer for file contents; large enough that syscall cost vanishes against hashing.
const CHUNK: usize = 256 * 1024;

/// Reads of file contents: small enough that the buffer stays in the core's L2 cache while
/// the kernel copies into it (with 256 KiB, reading from the page cache was 3x slower on an
/// EPYC with 512 KiB of L2 per core).
const READ_BUF: usize = 64 * 1024;

/// Buffer for reading directories (`getdents`), room for a hundred long names at least.
const DIRBUF: usize = 32 * 1024;

/// Framing bytes collected before they are written out even without file contents.
const HEAD_FLUSH: usize = 64 * 1024;

/// Write the NAR of `path` to `out`. Directory entries are sorted by the bytes of their names.
///
/// The walk keeps its own stack and reaches each entry by name from its parent's descriptor,
/// so any depth the file system holds can be archived, whatever the length of the full path.
pub fn dump_path<W: Write>(path: &Path, out: W) -> Result<(), DumpError> {
    let mut w = BufWriter::with_capacity(64 * 1024, out);
    let mut d = Dumper {
        root: path,
        w: &mut w,
        head: Vec::with_capacity(256),
        // Grown on demand: most files are small, and zeroing a large buffer per dump is not free.
        buf: Vec::new(),
        rel: Vec::new(),
        names: Vec::new(),
        ents: Vec::new(),
        frames: Vec::new(),
        dirs: DirStack::new(),
        dirbuf: Vec::new(),
        link: Vec::new(),
    };
    push_bytes(&mut d.head, MAGIC);
    d.root_node()?;
    d.walk()?;
    let head = std::mem::take(&mut d.head);
    drop(d);
    w.write_all(&head).map_err(DumpError::Write)?;
    w.flush().map_err(DumpError::Write)
}

fn read_err(path: &Path) -> impl FnOnce(io::Error) -> DumpError + '_ {
    move |source| DumpError::Read {
        path: path.to_owned(),
        source,
    }
}

/// One entry of a directory being archived: its name in [`Dumper::names`] and its type as
/// the directory reported it.
#[derive(Clone, Copy)]
struct Ent {
    start: usize,
    len: usize,
    ty: FileType,
}

/// A directory being archived: its entries in [`Dumper::ents`], the next one to write.
struct Frame {
    ents_start: usize,
    next: usize,
    names_start: usize,
    /// Length of [`Dumper::rel`] without this directory's entries.
    rel_len: usize,
}

struct Dumper<'a, W> {
    root: &'a Path,
    w: &'a mut W,
    /// Framing bytes, collected so that small tokens leave in one write.
    head: Vec<u8>,
    /// File contents.
    buf: Vec<u8>,
    /// The path of the current entry relative to the root (for error messages only).
    rel: Vec<u8>,
    /// Names and entries of the open directories, innermost last, shared as stacks so that
    /// no entry costs an allocation of its own.
    names: Vec<u8>,
    ents: Vec<Ent>,
    frames: Vec<Frame>,
    dirs: DirStack,
    /// Buffer for `getdents`.
    dirbuf: Vec<u8>,
    /// Reused for symlink targets.
    link: Vec<u8>,
}

/// `root` joined with a relative path of `/`-separated names.
fn full_path(root: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        root.to_owned()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}

fn unsupported(ft: FileType) -> &'static str {
    match ft {
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
        FileType::BlockDevice => "block device",
        FileType::CharacterDevice => "character device",
        _ => "unknown",
    }
}

impl<W: Write> Dumper<'_, W> {
    /// The full path of the current entry, for an error.
    fn here(&self) -> PathBuf {
        full_path(self.root, &self.rel)
    }

    fn read_err(&self, source: io::Error) -> DumpError {
        DumpError::Read {
            path: self.here(),
            source,
        }
    }

    fn root_node(&mut self) -> Result<(), DumpError> {
        let path = self.root;
        let meta = fs::symlink_metadata(path).map_err(read_err(path))?;
        let ft = meta.file_type();
        if ft.is_file() {
            let f = File::open(path).map_err(read_err(path))?;
            self.file_node(f, meta.len(), meta.permissions().mode() & 0o100 != 0)
        } else if ft.is_symlink() {
            let target = fs::read_link(path).map_err(read_err(path))?;
            self.symlink_node(target.as_os_str().as_bytes());
            Ok(())
        } else if ft.is_dir() {
            let fd = rustix::fs::open(path, DIR_FLAGS, Mode::empty())
                .map_err(|e| read_err(path)(e.into()))?;
            self.enter(fd)
        } else {
            let kind = if ft.is_fifo() {
                "fifo"
            } else if ft.is_socket() {
                "socket"
            } else if ft.is_block_device() {
                "block device"
            } else if ft.is_char_device() {
                "character device"
            } else {
                "unknown"
            };
            Err(DumpError::UnsupportedType {
                path: path.to_owned(),
                kind,
            })
        }
    }

    /// A regular file's node, its contents read from `f`.
    fn file_node(&mut self, mut f: File, size: u64, executable: bool) -> Result<(), DumpError> {
        let head = &mut self.head;
        push_bytes(head, b"(");
        push_bytes(head, b"type");
        push_bytes(head, b"regular");
        if executable {
            push_bytes(head, b"executable");
            push_bytes(head, b"");
        }
        push_bytes(head, b"contents");
        head.extend_from_slice(&size.to_le_bytes());
        self.w.write_all(head).map_err(DumpError::Write)?;
        head.clear();
        let buf = &mut self.buf;
        let mut left = size;
        if (buf.len() as u64) < size && buf.len() < READ_BUF {
            buf.resize((size.max(4096) as usize).min(READ_BUF), 0);
        }
        while left > 0 {
            let want = buf.len().min(left as usize);
            let n = f.read(&mut buf[..want]).map_err(|source| DumpError::Read {
                path: full_path(self.root, &self.rel),
                source,
            })?;
            if n == 0 {
                return Err(DumpError::Changed {
                    path: full_path(self.root, &self.rel),
                });
            }
            self.w.write_all(&buf[..n]).map_err(DumpError::Write)?;
            left -= n as u64;
        }
        self.head.extend_from_slice(&[0u8; 8][..padding(size)]);
        self.close_node();
        Ok(())
    }

    fn symlink_node(&mut self, target: &[u8]) {
        let head = &mut self.head;
        push_bytes(head, b"(");
        push_bytes(head, b"type");
        push_bytes(head, b"symlink");
        push_bytes(head, b"target");
        push_bytes(head, target);
        self.close_node();
    }

    fn close_node(&mut self) {
        push_bytes(&mut self.head, b")");
    }

    /// Start the node of the directory open at `fd`: read and sort its entries, push it.
    fn enter(&mut self, fd: OwnedFd) -> Result<(), DumpError> {
        push_bytes(&mut self.head, b"(");
        push_bytes(&mut self.head, b"type");
        push_bytes(&mut self.head, b"directory");
        let names_start = self.names.len();
        let ents_start = self.ents.len();
        if self.dirbuf.capacity() == 0 {
            self.dirbuf = Vec::with_capacity(DIRBUF);
        }
        let mut it = RawDir::new(&fd, self.dirbuf.spare_capacity_mut());
        while let Some(e) = it.next() {
            let e = match e {
                Ok(e) => e,
                Err(e) => {
                    return Err(DumpError::Read {
                        path: self.here(),
                        source: e.into(),
                    })
                }
            };
            let name = e.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            self.ents.push(Ent {
                start: self.names.len(),
                len: name.len(),
                ty: e.file_type(),
            });
            self.names.extend_from_slice(name);
        }
        let names = &self.names;
        self.ents[ents_start..].sort_unstable_by(|a, b| {
            names[a.start..a.start + a.len].cmp(&names[b.start..b.start + b.len])
        });
        self.frames.push(Frame {
            ents_start,
            next: ents_start,
            names_start,
            rel_len: self.rel.len(),
        });
        self.dirs.push(fd).map_err(|e| self.read_err(e))
    }

    /// Write the entries of the open directories, depth first, until none is left.
    fn walk(&mut self) -> Result<(), DumpError> {
        while let Some(top) = self.frames.last_mut() {
            if top.next == self.ents.len() {
                // The directory is done: close its node, and the entry holding it.
                let rel_len = top.rel_len;
                self.names.truncate(top.names_start);
                self.ents.truncate(top.ents_start);
                self.frames.pop();
                self.close_node();
                self.rel.truncate(rel_len);
                if let Err(e) = self.dirs.pop() {
                    return Err(self.read_err(e));
                }
                if !self.frames.is_empty() {
                    push_bytes(&mut self.head, b")");
                    self.end_entry();
                }
                continue;
            }
            let ent = self.ents[top.next];
            top.next += 1;
            let name = &self.names[ent.start..ent.start + ent.len];
            let head = &mut self.head;
            push_bytes(head, b"entry");
            push_bytes(head, b"(");
            push_bytes(head, b"name");
            push_bytes(head, name);
            push_bytes(head, b"node");
            if !self.rel.is_empty() {
                self.rel.push(b'/');
            }
            self.rel.extend_from_slice(name);
            if self.entry(ent)? {
                push_bytes(&mut self.head, b")");
                self.end_entry();
            }
            // Trees of directories and symlinks alone write nothing else: keep memory bounded.
            if self.head.len() >= HEAD_FLUSH {
                self.w.write_all(&self.head).map_err(DumpError::Write)?;
                self.head.clear();
            }
        }
        Ok(())
    }

    /// Drop the last component of [`Self::rel`].
    fn end_entry(&mut self) {
        let cut = self.frames.last().map(|f| f.rel_len).unwrap_or_default();
        self.rel.truncate(cut);
    }

    /// Write the node of one entry of the innermost directory. `false` when the entry is a
    /// directory, entered rather than finished.
    fn entry(&mut self, ent: Ent) -> Result<bool, DumpError> {
        let Some(dir) = self.dirs.top() else {
            return Err(self.read_err(io::Error::other("no open directory")));
        };
        let name = &self.names[ent.start..ent.start + ent.len];
        // What the directory says is trusted for directories and symlinks (opening or
        // reading one fails if it changed since); a file needs its size and mode anyway.
        let (ty, stat) = match ent.ty {
            FileType::Directory | FileType::Symlink => (ent.ty, None),
            _ => match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => (FileType::from_raw_mode(st.st_mode), Some(st)),
                Err(e) => return Err(self.read_err(e.into())),
            },
        };
        match ty {
            FileType::Directory => {
                let fd = match openat(dir, name, DIR_FLAGS, Mode::empty()) {
                    Ok(fd) => fd,
                    Err(e) => return Err(self.read_err(e.into())),
                };
                self.enter(fd)?;
                Ok(false)
            }
            FileType::Symlink => {
                let reuse = std::mem::take(&mut self.link);
                match readlinkat(dir, name, reuse) {
                    Ok(target) => {
                        let target = target.into_bytes();
                        self.symlink_node(&target);
                        self.link = target;
                        Ok(true)
                    }
                    Err(e) => Err(self.read_err(e.into())),
                }
            }
            FileType::RegularFile => {
                let (size, mode) = match stat {
                    Some(st) => (st.st_size as u64, st.st_mode),
                    None => return Err(self.read_err(io::Error::other("no file status"))),
                };
                let flags = OFlags::RDONLY
                    | OFlags::CLOEXEC
                    | OFlags::NOFOLLOW
                    | OFlags::NOCTTY
                    // A FIFO swapped in since the stat must not block the open.
                    | OFlags::NONBLOCK;
                let f = match openat(dir, name, flags, Mode::empty()) {
                    Ok(fd) => File::from(fd),
                    Err(e) => return Err(self.read_err(e.into())),
                };
                self.file_node(f, size, mode & 0o100 != 0)?;
                Ok(true)
            }
            other => Err(DumpError::UnsupportedType {
                path: self.here(),
                kind: unsupported(other),
            }),
        }
    }
}

/// A `Write` that ships full buffers to another thread and reuses the ones it gets back.
struct ChunkSender {
    buf: Vec<u8>,
    full: mpsc::SyncSender<Vec<u8>>,
    empty: mpsc::Receiver<Vec<u8>>,
}

impl ChunkSender {
    fn ship(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let next = self
            .empty
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
        let full = std::mem::replace(&mut self.buf, next);
        self.full
            .send(full)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "hasher thread stopped"))
    }
}

impl Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.ship()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.ship()
    }
}

/// The NAR hash and NAR size of `path`. Reading the tree and hashing run on two threads, so
/// the result arrives at the speed of the hash function alone.
pub fn hash_path(path: &Path, algo: HashAlgo) -> Result<(Hash, u64), DumpError> {
    // Small single files are not worth a thread.
    let meta = fs::symlink_metadata(path).map_err(read_err(path))?;
    if !meta.is_dir() && meta.len() < 4 * CHUNK as u64 {
        let mut sink = HashSink::new(algo);
        dump_path(path, &mut sink)?;
        return Ok(sink.finish());
    }
    let (full_tx, full_rx) = mpsc::sync_channel::<Vec<u8>>(8);
    let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
    std::thread::scope(|s| {
        let reader = s.spawn(move || {
            let sender = ChunkSender {
                buf: Vec::with_capacity(CHUNK),
                full: full_tx,
                empty: empty_rx,
            };
            dump_path(path, sender)
        });
        let mut sink = HashSink::new(algo);
        for chunk in full_rx {
            // Infallible: hashing into memory.
            let _ = sink.write_all(&chunk);
            let mut chunk = chunk;
            chunk.clear();
            let _ = empty_tx.send(chunk);
        }
        match reader.join() {
            Ok(r) => r.map(|()| sink.finish()),
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}

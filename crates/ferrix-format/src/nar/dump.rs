//! Serialising a file system tree as a NAR, streaming, and hashing it on a second thread.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use thiserror::Error;

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

/// Write the NAR of `path` to `out`. Directory entries are sorted by the bytes of their names.
pub fn dump_path<W: Write>(path: &Path, out: W) -> Result<(), DumpError> {
    let mut w = BufWriter::with_capacity(64 * 1024, out);
    let mut head = Vec::with_capacity(256);
    push_bytes(&mut head, MAGIC);
    // Grown on demand: most files are small, and zeroing a large buffer per dump is not free.
    let mut buf = Vec::new();
    dump_node(path, &mut w, &mut head, &mut buf)?;
    w.write_all(&head).map_err(DumpError::Write)?;
    w.flush().map_err(DumpError::Write)
}

fn read_err(path: &Path) -> impl FnOnce(io::Error) -> DumpError + '_ {
    move |source| DumpError::Read {
        path: path.to_owned(),
        source,
    }
}

/// `head` collects framing bytes so that small tokens leave in one write.
fn dump_node<W: Write>(
    path: &Path,
    w: &mut W,
    head: &mut Vec<u8>,
    buf: &mut Vec<u8>,
) -> Result<(), DumpError> {
    let meta = fs::symlink_metadata(path).map_err(read_err(path))?;
    let ft = meta.file_type();
    push_bytes(head, b"(");
    push_bytes(head, b"type");
    if ft.is_file() {
        push_bytes(head, b"regular");
        if meta.permissions().mode() & 0o100 != 0 {
            push_bytes(head, b"executable");
            push_bytes(head, b"");
        }
        push_bytes(head, b"contents");
        let size = meta.len();
        head.extend_from_slice(&size.to_le_bytes());
        w.write_all(head).map_err(DumpError::Write)?;
        head.clear();
        let mut f = File::open(path).map_err(read_err(path))?;
        let mut left = size;
        if (buf.len() as u64) < size && buf.len() < CHUNK {
            buf.resize((size.max(4096) as usize).min(CHUNK), 0);
        }
        while left > 0 {
            let want = buf.len().min(left as usize);
            let n = f.read(&mut buf[..want]).map_err(read_err(path))?;
            if n == 0 {
                return Err(DumpError::Changed {
                    path: path.to_owned(),
                });
            }
            w.write_all(&buf[..n]).map_err(DumpError::Write)?;
            left -= n as u64;
        }
        head.extend_from_slice(&[0u8; 8][..padding(size)]);
    } else if ft.is_symlink() {
        let target = fs::read_link(path).map_err(read_err(path))?;
        push_bytes(head, b"symlink");
        push_bytes(head, b"target");
        push_bytes(head, target.as_os_str().as_bytes());
    } else if ft.is_dir() {
        push_bytes(head, b"directory");
        let mut names: Vec<_> = fs::read_dir(path)
            .map_err(read_err(path))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(read_err(path))?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            push_bytes(head, b"entry");
            push_bytes(head, b"(");
            push_bytes(head, b"name");
            push_bytes(head, name.as_bytes());
            push_bytes(head, b"node");
            dump_node(&path.join(&name), w, head, buf)?;
            push_bytes(head, b")");
        }
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
        return Err(DumpError::UnsupportedType {
            path: path.to_owned(),
            kind,
        });
    }
    push_bytes(head, b")");
    Ok(())
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

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

/// Files at least this big are written past the page cache (`O_DIRECT`), where the file
/// system allows it: on disk once written, and no memory to find for them. Copying a large
/// tree into the page cache and flushing it costs several times the device's own time.
const DIRECT_MIN: u64 = 256 << 10;
/// The alignment direct writes need (of memory, offsets and lengths): a page covers every
/// device's logical block.
const DIRECT_ALIGN: usize = 4096;
/// The size of one direct write.
const DIRECT_CHUNK: usize = 1 << 20;
/// Files at least this big are written on a thread of their own while they are read (see
/// [`write_direct`]). For smaller ones the thread costs more than it saves, and paths
/// restored side by side (a closure substituted) keep the device busy anyway.
const DIRECT_THREAD_MIN: u64 = 4 * DIRECT_CHUNK as u64;

struct Restorer<'a> {
    target: &'a Path,
    buf: Vec<u8>,
    /// Two buffers of [`DIRECT_CHUNK`] bytes and room to align them, each made when it is
    /// first needed (the second for a file written on a thread: see [`write_direct`]).
    direct_bufs: [Vec<u8>; 2],
    /// Cleared when the file system refuses direct writes: the rest of the restore does
    /// without.
    direct_ok: bool,
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
        size: u64,
        _offset: u64,
        contents: &mut dyn Read,
    ) -> io::Result<()> {
        let mode = if executable { 0o777 } else { 0o666 };
        let f = self.dirs.create_file(self.target, rel, mode);
        let mut f = f.map_err(|e| ctx(&self.at(rel), e))?;
        if size >= DIRECT_MIN && self.direct_ok {
            return match write_direct(&mut f, contents, &mut self.direct_bufs, size) {
                Ok(Direct::Done) => Ok(()),
                // Later files go through the page cache.
                Ok(Direct::Refused) => {
                    self.direct_ok = false;
                    Ok(())
                }
                Err(e) => Err(ctx(&self.at(rel), e)),
            };
        }
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

/// How a direct write of a file ended (all of it is written either way).
enum Direct {
    Done,
    /// The file system refused direct writes part way; the rest went through the page
    /// cache, and so should later files.
    Refused,
}

/// Writes one file chunk by chunk: whole blocks directly, the last partial block (and
/// everything once direct writes are refused) through the page cache.
struct ChunkWriter<'f> {
    f: &'f fs::File,
    /// The file's flags without `O_DIRECT`.
    flags: rustix::fs::OFlags,
    direct: bool,
    /// A direct write was refused.
    refused: bool,
}

impl ChunkWriter<'_> {
    fn put(&mut self, data: &[u8], last: bool) -> io::Result<()> {
        let mut f = self.f;
        let whole = if self.direct {
            data.len() - data.len() % DIRECT_ALIGN
        } else {
            0
        };
        let mut done = 0;
        while done < whole {
            match f.write(&data[done..whole]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => done += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Refused (by the file system, or a partial write broke the alignment).
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                    self.refused = true;
                    self.buffered()?;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        if last || done < data.len() {
            self.buffered()?;
            f.write_all(&data[done..])?;
        }
        Ok(())
    }

    fn ended(&self) -> Direct {
        if self.refused {
            Direct::Refused
        } else {
            Direct::Done
        }
    }

    fn buffered(&mut self) -> io::Result<()> {
        if self.direct {
            rustix::fs::fcntl_setfl(self.f, self.flags)?;
        }
        self.direct = false;
        Ok(())
    }
}

/// [`DIRECT_CHUNK`] bytes of `raw` at a [`DIRECT_ALIGN`] boundary, `raw` made big enough
/// the first time.
fn aligned(raw: &mut Vec<u8>) -> &mut [u8] {
    if raw.len() < DIRECT_CHUNK + DIRECT_ALIGN {
        *raw = vec![0u8; DIRECT_CHUNK + DIRECT_ALIGN];
    }
    let at = raw.as_ptr().align_offset(DIRECT_ALIGN);
    &mut raw[at..at + DIRECT_CHUNK]
}

/// Fill `buf` from `contents`, short only where the file ends.
fn fill(contents: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match contents.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Write the file's `size` bytes of `contents` to `f` in aligned chunks with `O_DIRECT`,
/// through `bufs` (see [`aligned`]). A file of [`DIRECT_THREAD_MIN`] or more is written on
/// a thread of its own while the next chunk is read: a direct write waits for the device,
/// and reading (with what the reader does: decompressing, hashing) would otherwise wait
/// with it.
fn write_direct(
    f: &mut fs::File,
    contents: &mut dyn Read,
    bufs: &mut [Vec<u8>; 2],
    size: u64,
) -> io::Result<Direct> {
    use rustix::fs::{fcntl_getfl, fcntl_setfl, OFlags};
    let flags = fcntl_getfl(&*f)?;
    let direct = fcntl_setfl(&*f, flags | OFlags::DIRECT).is_ok();
    let mut w = ChunkWriter {
        f: &*f,
        flags,
        direct,
        refused: !direct,
    };
    let [a, b] = bufs;
    let first = aligned(a);
    if size < DIRECT_THREAD_MIN || !direct {
        loop {
            let n = fill(contents, first)?;
            let last = n < DIRECT_CHUNK;
            w.put(&first[..n], last)?;
            if last {
                return Ok(w.ended());
            }
        }
    }
    std::thread::scope(|s| {
        let (full, to_write) = std::sync::mpsc::sync_channel::<(&mut [u8], usize)>(1);
        let (give_back, free) = std::sync::mpsc::channel();
        let writer = s.spawn(move || -> io::Result<ChunkWriter<'_>> {
            for (chunk, n) in to_write {
                let last = n < DIRECT_CHUNK;
                w.put(&chunk[..n], last)?;
                // Gone only when the reading side stopped.
                let _ = give_back.send(chunk);
                if last {
                    break;
                }
            }
            Ok(w)
        });
        let mut spare = vec![first, aligned(b)];
        let read = loop {
            let chunk = match spare.pop() {
                Some(c) => c,
                None => match free.recv() {
                    Ok(c) => c,
                    // The writer stopped: its error says why.
                    Err(_) => break Ok(()),
                },
            };
            let n = match fill(contents, chunk) {
                Ok(n) => n,
                Err(e) => break Err(e),
            };
            if full.send((chunk, n)).is_err() || n < DIRECT_CHUNK {
                break Ok(());
            }
        };
        drop(full);
        let written = writer
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        read?;
        Ok(written?.ended())
    })
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

std::thread_local! {
    /// A thread's restore buffers, kept for its next restore: a thread that restores path
    /// after path (substituting a closure) would otherwise take fresh memory, zeroed page by
    /// page by the kernel, for each.
    static BUFFERS: std::cell::RefCell<(Vec<u8>, [Vec<u8>; 2])> =
        const { std::cell::RefCell::new((Vec::new(), [Vec::new(), Vec::new()])) };
}

fn restore_with<R: Read>(input: R, target: &Path, exact: bool) -> Result<u64, RestoreError> {
    let (mut buf, direct_bufs) = BUFFERS.with(|b| std::mem::take(&mut *b.borrow_mut()));
    buf.resize(256 * 1024, 0);
    let mut r = Restorer {
        target,
        buf,
        direct_bufs,
        direct_ok: true,
        dirs: DirStack::new(),
    };
    let parsed = if exact {
        parse_exact(input, &mut r)
    } else {
        parse(input, &mut r)
    };
    let Restorer {
        buf, direct_bufs, ..
    } = r;
    BUFFERS.with(|b| *b.borrow_mut() = (buf, direct_bufs));
    parsed.map_err(|source| RestoreError::Nar {
        target: target.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Large files (written directly, whole chunks and a tail) and small ones come back
    /// byte for byte, with their modes.
    #[test]
    fn files_around_the_direct_write_sizes_round_trip() {
        round_trip_in(&tempfile::tempdir().unwrap());
        // tmpfs, where direct writes may be refused: the page cache then.
        if Path::new("/dev/shm").is_dir() {
            round_trip_in(&tempfile::tempdir_in("/dev/shm").unwrap());
        }
    }

    fn round_trip_in(d: &tempfile::TempDir) {
        let src = d.path().join("src");
        fs::create_dir(&src).unwrap();
        let sizes = [
            0,
            1,
            DIRECT_ALIGN,
            DIRECT_MIN as usize - 1,
            DIRECT_MIN as usize,
            DIRECT_MIN as usize + 1,
            DIRECT_CHUNK - 1,
            DIRECT_CHUNK,
            DIRECT_CHUNK + DIRECT_ALIGN,
            2 * DIRECT_CHUNK,
            3 * DIRECT_CHUNK + 17,
            DIRECT_THREAD_MIN as usize,
            5 * DIRECT_CHUNK + 17,
        ];
        for (i, n) in sizes.iter().enumerate() {
            let data: Vec<u8> = (0..*n).map(|k| (k * 31 + i) as u8).collect();
            let f = src.join(format!("f{i}"));
            fs::write(&f, &data).unwrap();
            if i % 2 == 1 {
                fs::set_permissions(&f, fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        let mut nar = Vec::new();
        crate::nar::dump_path(&src, &mut nar).unwrap();
        let out = d.path().join("out");
        assert_eq!(restore(&nar[..], &out).unwrap(), nar.len() as u64);
        let mut again = Vec::new();
        crate::nar::dump_path(&out, &mut again).unwrap();
        assert!(again == nar, "the restored tree dumps differently");
        for (i, n) in sizes.iter().enumerate() {
            assert_eq!(
                fs::metadata(out.join(format!("f{i}"))).unwrap().len(),
                *n as u64
            );
        }
    }

    /// A stream that ends inside a large file (written by a thread of its own while it is
    /// read) is an error, whichever chunk it ends in.
    #[test]
    fn a_nar_cut_inside_a_large_file_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs::create_dir(&src).unwrap();
        let data: Vec<u8> = (0..DIRECT_THREAD_MIN as usize + 2 * DIRECT_CHUNK + 5)
            .map(|k| (k % 251) as u8)
            .collect();
        fs::write(src.join("big"), &data).unwrap();
        let mut nar = Vec::new();
        crate::nar::dump_path(&src, &mut nar).unwrap();
        for (i, cut) in [200, DIRECT_CHUNK, 3 * DIRECT_CHUNK + 3, nar.len() - 100]
            .into_iter()
            .enumerate()
        {
            let out = d.path().join(format!("out{i}"));
            let e = restore(&nar[..cut], &out).unwrap_err();
            assert!(e.to_string().contains(&out.display().to_string()), "{e}");
        }
        // And the thread's buffers serve the next restore.
        let out = d.path().join("whole");
        assert_eq!(restore(&nar[..], &out).unwrap(), nar.len() as u64);
        assert!(fs::read(out.join("big")).unwrap() == data);
    }
}

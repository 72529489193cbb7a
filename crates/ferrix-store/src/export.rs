//! `nix-store --export` / `--import`: NARs with their metadata, in Nix's stream format.
//!
//! Per path: `1`, the NAR, the magic `0x4558494e` ("NIXE"), the path, its references, its
//! deriver (or empty) and `0` (no signature); after the last path, `0`.

use std::collections::{BTreeSet, HashSet};
use std::io::{Read, Write};

use ferrix_format::wire::{write_bytes, write_u64};
use ferrix_format::{StoreDir, StorePath};

use crate::error::{Result, StoreError};
use crate::local::{LocalStore, Pending};
use crate::path_info::ValidPathInfo;

const EXPORT_MAGIC: u64 = 0x4558_494e;

fn w(e: std::io::Error) -> StoreError {
    StoreError::ExportWrite(e)
}

/// Write `paths` (which must be valid) references-first.
pub fn export_paths(
    store: &LocalStore,
    paths: &BTreeSet<StorePath>,
    mut out: impl Write,
) -> Result<()> {
    for p in store.topo_sort(paths)? {
        let info = store.path_info(&p)?;
        write_u64(&mut out, 1).map_err(w)?;
        store.nar_from_path(&p, &mut out)?;
        out.write_all(&trailer(store.store_dir(), &info))
            .map_err(w)?;
    }
    write_u64(&mut out, 0).map_err(w)?;
    out.flush().map_err(w)
}

/// What follows a path's NAR in the stream: the magic, the path, its references, its
/// deriver and `0` for no signature. With `1` before the NAR and `0` after the last path,
/// what an exporter of another store writes.
pub fn trailer(store_dir: &StoreDir, info: &ValidPathInfo) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a vector cannot fail.
    let _ = (|| -> std::io::Result<()> {
        write_u64(&mut out, EXPORT_MAGIC)?;
        write_bytes(&mut out, store_dir.display(&info.path).as_bytes())?;
        write_u64(&mut out, info.references.len() as u64)?;
        for r in &info.references {
            write_bytes(&mut out, store_dir.display(r).as_bytes())?;
        }
        let deriver = info.deriver.as_ref().map(|d| store_dir.display(d));
        write_bytes(&mut out, deriver.unwrap_or_default().as_bytes())?;
        write_u64(&mut out, 0)
    })();
    out
}

/// What is wrong with an export stream, outside the archives it holds.
#[derive(Debug, thiserror::Error)]
pub enum ExportErrorKind {
    #[error("the stream ends early")]
    Truncated,
    #[error("reading the stream")]
    Io(#[source] std::io::Error),
    #[error("expected 0 or 1 before a path, got {0}")]
    BadMarker(u64),
    #[error("the export magic does not follow the archive")]
    NoMagic,
    #[error("a string of {0} bytes is longer than allowed here")]
    TooLong(u64),
    #[error("{0} references is not plausible")]
    TooManyRefs(u64),
    #[error("non-zero padding")]
    Padding,
    #[error("a path is not UTF-8")]
    NotUtf8,
    #[error("cannot add path '{0}' because it lacks a signature by a trusted key (and is not content-addressed); only users in 'trusted-users' may add such paths")]
    Unsigned(String),
}

/// The stream being imported, and how far into it we are, for errors.
struct Stream<R> {
    inner: R,
    offset: u64,
}

impl<R: Read> Read for Stream<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.offset += n as u64;
        Ok(n)
    }
}

impl<R: Read> Stream<R> {
    fn err(&self, at: u64, kind: ExportErrorKind) -> StoreError {
        StoreError::BadExport { offset: at, kind }
    }

    fn fill(&mut self, buf: &mut [u8]) -> Result<()> {
        let at = self.offset;
        self.read_exact(buf).map_err(|e| {
            let kind = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                ExportErrorKind::Truncated
            } else {
                ExportErrorKind::Io(e)
            };
            self.err(at.max(self.offset), kind)
        })
    }

    fn u64(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        self.fill(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn string(&mut self, max: usize) -> Result<String> {
        let at = self.offset;
        let n = self.u64()?;
        if n > max as u64 {
            return Err(self.err(at, ExportErrorKind::TooLong(n)));
        }
        let mut v = vec![0u8; n as usize];
        self.fill(&mut v)?;
        let pad = ferrix_format::wire::padding(n);
        let mut p = [0u8; 8];
        self.fill(&mut p[..pad])?;
        if p[..pad].iter().any(|&b| b != 0) {
            return Err(self.err(self.offset - pad as u64, ExportErrorKind::Padding));
        }
        String::from_utf8(v).map_err(|_| self.err(at + 8, ExportErrorKind::NotUtf8))
    }

    /// What follows a path's archive: the magic, the path, its references, its deriver,
    /// and a legacy signature (ignored, as Nix ignores it).
    fn trailer(
        &mut self,
        store_dir: &StoreDir,
    ) -> Result<(StorePath, BTreeSet<StorePath>, Option<StorePath>)> {
        let at = self.offset;
        if self.u64()? != EXPORT_MAGIC {
            return Err(self.err(at, ExportErrorKind::NoMagic));
        }
        let p = self.path_in(store_dir)?;
        let at = self.offset;
        let n = self.u64()?;
        if n > 1_000_000 {
            return Err(self.err(at, ExportErrorKind::TooManyRefs(n)));
        }
        let mut refs = BTreeSet::new();
        for _ in 0..n {
            refs.insert(self.path_in(store_dir)?);
        }
        let at = self.offset;
        let deriver = self.string(4096)?;
        let deriver = if deriver.is_empty() {
            None
        } else {
            Some(Self::parsed(store_dir, at, deriver)?)
        };
        if self.u64()? == 1 {
            self.string(65536)?;
        }
        Ok((p, refs, deriver))
    }

    /// A store path of `store_dir`, its error naming where it stood.
    fn path_in(&mut self, store_dir: &StoreDir) -> Result<StorePath> {
        let at = self.offset;
        let s = self.string(4096)?;
        Self::parsed(store_dir, at, s)
    }

    /// `s`, read at `at`, as a store path of `store_dir`.
    fn parsed(store_dir: &StoreDir, at: u64, s: String) -> Result<StorePath> {
        store_dir
            .parse_path(&s)
            .map_err(|source| StoreError::InExport {
                offset: at,
                source: Box::new(StoreError::BadName {
                    path: s.clone(),
                    source,
                }),
            })
    }
}

/// Read an export stream into the store; returns the paths it held, in stream order. Paths
/// are committed in batches (references may point into the same batch).
pub fn import_paths(store: &LocalStore, input: impl Read) -> Result<Vec<StorePath>> {
    import_checked(store, input, &|_| true)
}

/// Like [`import_paths`], but a path `accept` refuses (an export stream has no signatures;
/// a daemon's untrusted client may add only what its trust allows) ends the import with
/// [`ExportErrorKind::Unsigned`]; what was read before it and not committed yet is dropped.
pub fn import_checked(
    store: &LocalStore,
    input: impl Read,
    accept: &dyn Fn(&ValidPathInfo) -> bool,
) -> Result<Vec<StorePath>> {
    import_inner(store, input, accept).map_err(|e| store.or_interrupted(e))
}

fn import_inner(
    store: &LocalStore,
    input: impl Read,
    accept: &dyn Fn(&ValidPathInfo) -> bool,
) -> Result<Vec<StorePath>> {
    let mut input = Stream {
        inner: input,
        offset: 0,
    };
    let mut imported = Vec::new();
    let mut batch: Vec<Pending> = Vec::new();
    let mut batched: HashSet<StorePath> = HashSet::new();
    loop {
        let at = input.offset;
        match input.u64()? {
            0 => break,
            1 => {}
            n => return Err(input.err(at, ExportErrorKind::BadMarker(n))),
        }
        let what = format!(
            "path #{} of the export stream (its archive starts at byte {})",
            imported.len() + 1,
            input.offset
        );
        let staged = store.stage(&mut input, &what, false)?;
        let trailer_at = input.offset;
        let (p, refs, deriver) = input.trailer(store.store_dir())?;
        imported.push(p.clone());
        if batched.insert(p.clone()) {
            let mut info = ValidPathInfo::new(p.clone(), staged.nar_hash, staged.nar_size);
            info.references = refs;
            info.deriver = deriver;
            if !accept(&info) {
                let why = ExportErrorKind::Unsigned(store.print(&p));
                return Err(input.err(trailer_at, why));
            }
            batch.push(Pending { staged, info });
            if crate::local::batch_full(&batch) {
                store.commit_batch(std::mem::take(&mut batch))?;
                batched.clear();
            }
        }
    }
    store.commit_batch(batch)?;
    Ok(imported)
}

/// Read an export stream into a daemon's store (`nix-store --import` through it): each
/// archive is kept aside in a temporary file while it is checked and hashed, then sent with
/// its metadata (`AddToStoreNar`), signatures unchecked if the daemon trusts this user (an
/// export stream has none), as Nix's import asks.
/// The paths, in stream order.
pub fn import_through_daemon(
    d: &mut crate::worker_client::WorkerClient,
    store_dir: &StoreDir,
    input: impl Read,
) -> std::result::Result<Vec<StorePath>, crate::store::CopyError> {
    use std::io::Seek;
    let mut input = Stream {
        inner: input,
        offset: 0,
    };
    let mut imported = Vec::new();
    loop {
        let at = input.offset;
        match input.u64()? {
            0 => break,
            1 => {}
            n => return Err(input.err(at, ExportErrorKind::BadMarker(n)).into()),
        }
        let what = format!(
            "path #{} of the export stream (its archive starts at byte {})",
            imported.len() + 1,
            input.offset
        );
        let tmp_dir = std::env::temp_dir();
        let mut file = anonymous_file(&tmp_dir)
            .map_err(crate::error::io_err("making a temporary file in", &tmp_dir))?;
        /// The archive to the file, and to its hash.
        struct Both<'a> {
            file: &'a mut std::fs::File,
            hash: ferrix_format::hash::HashSink,
        }
        impl Write for Both<'_> {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.file.write_all(buf)?;
                self.hash.write_all(buf)?;
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                self.file.flush()
            }
        }
        let mut both = Both {
            file: &mut file,
            hash: ferrix_format::hash::HashSink::new(ferrix_format::HashAlgo::Sha256),
        };
        crate::streams::pass_nar(&mut input, &mut both).map_err(|e| match e {
            crate::streams::PassError::Read(source) => StoreError::Nar {
                path: what.clone(),
                source,
            },
            crate::streams::PassError::Write(e) => {
                crate::error::io_err("writing a temporary file in", &tmp_dir)(e)
            }
        })?;
        let (nar_hash, nar_size) = both.hash.finish();
        let (p, references, deriver) = input.trailer(store_dir)?;
        file.rewind().map_err(crate::error::io_err(
            "reading a temporary file in",
            &tmp_dir,
        ))?;
        let info = ferrix_protocol::worker::PathInfo {
            path: p.clone(),
            info: ferrix_protocol::worker::UnkeyedPathInfo {
                deriver,
                nar_hash,
                references,
                registration_time: 0,
                nar_size,
                ultimate: false,
                sigs: BTreeSet::new(),
                ca: None,
            },
        };
        // Unchecked, as Nix's import asks: the daemon grants that to a trusted user only.
        d.add_nar_as(&info, &mut file, true)?;
        imported.push(p);
    }
    Ok(imported)
}

/// A file in `dir` that has no name (it is gone when closed, whatever happens).
fn anonymous_file(dir: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    loop {
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = dir.join(format!(".ferrix-import-{}-{n}", std::process::id()));
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
        {
            Ok(f) => {
                std::fs::remove_file(&p)?;
                return Ok(f);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

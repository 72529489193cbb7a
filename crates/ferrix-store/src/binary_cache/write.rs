//! Writing paths into a binary cache directory as `nix copy --to file://…` does: NARs
//! compressed in parallel, each checked against the store's record of it, then the
//! narinfos in dependency order, so a reader never finds a path whose references are
//! missing.

use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use ferrix_format::hash::HashSink;
use ferrix_format::narinfo::CacheInfo;
use ferrix_format::signature::{SecretKey, Signature};
use ferrix_format::{HashAlgo, NarInfo, StoreDir, StorePath};

use super::{CacheError, Compression};
use crate::path_info::ValidPathInfo;
use crate::store::{copying, parallel_map, CopyError, Store};
use crate::streams::HashTee;

/// A binary cache in a directory, and how paths are written into it.
#[derive(Debug)]
pub struct FileCache {
    pub dir: PathBuf,
    pub compression: Compression,
    /// `compression-level`: each method's default when `None`.
    pub level: Option<i32>,
    /// Keys every narinfo written is signed with (besides the path's own signatures).
    pub keys: Vec<SecretKey>,
    /// Threads for compressing: NARs go this many at a time (and one NAR alone uses them
    /// all, for the methods that can).
    pub threads: u32,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CacheError + 'a {
    move |source| CacheError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

impl FileCache {
    /// Whether the cache has `p`: its narinfo is there.
    pub fn has(&self, p: &StorePath) -> bool {
        narinfo_path(self, p).exists()
    }

    /// Write `infos` (references first, each reference in the cache or earlier in `infos`),
    /// their NARs read from `from`: the NARs several at a time, each checked against its
    /// info, then the narinfos in order.
    pub fn write_paths(
        &self,
        store_dir: &StoreDir,
        infos: &[ValidPathInfo],
        from: &dyn Store,
    ) -> Result<(), CopyError> {
        let nar_dir = self.dir.join("nar");
        fs::create_dir_all(&nar_dir).map_err(io_err("create", &nar_dir))?;
        let info_file = self.dir.join("nix-cache-info");
        if !info_file.exists() {
            let info = CacheInfo {
                store_dir: Some(store_dir.as_str().to_owned()),
                want_mass_query: None,
                priority: None,
            };
            write_atomically(&info_file, info.to_text().as_bytes())?;
        }
        let threads = self.threads.max(1) as usize;
        let workers = threads.min(from.nar_streams()).min(infos.len()).max(1);
        let per_nar = (threads / workers).max(1) as u32;
        // NAR files this call put in place: removed again if it fails, so a failed copy
        // leaves no file that no narinfo names.
        let fresh: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
        let written = parallel_map(infos, workers, |info| {
            self.write_nar(store_dir, info, from, per_nar, &fresh)
                .map_err(copying(from, info))
        });
        let undo = |fresh: Mutex<Vec<PathBuf>>| {
            for f in fresh.into_inner().unwrap_or_else(|e| e.into_inner()) {
                let _ = fs::remove_file(f);
            }
        };
        let written = match written {
            Ok(w) => w,
            Err(e) => {
                undo(fresh);
                return Err(e);
            }
        };
        for (i, info) in written.iter().enumerate() {
            let text = info.to_text(store_dir);
            if let Err(e) = write_atomically(&narinfo_path(self, &info.store_path), text.as_bytes())
            {
                // Those already named stay; the rest go.
                let named: Vec<PathBuf> =
                    written[..i].iter().map(|w| self.dir.join(&w.url)).collect();
                let mut left = fresh.into_inner().unwrap_or_else(|e| e.into_inner());
                left.retain(|f| !named.contains(f));
                undo(Mutex::new(left));
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Compress the NAR of `info.path` from `from` into `nar/`, named by the compressed
    /// file's hash; its narinfo (signed), not yet written.
    fn write_nar(
        &self,
        store_dir: &StoreDir,
        info: &ValidPathInfo,
        from: &dyn Store,
        threads: u32,
        fresh: &Mutex<Vec<PathBuf>>,
    ) -> Result<NarInfo, CopyError> {
        let p = &info.path;
        let printed = store_dir.display(p);
        let tmp = temp_name(&self.dir.join("nar").join(p.hash_part()));
        let file = fs::File::create(&tmp).map_err(io_err("create", &tmp))?;
        let result = (|| {
            let mut file = HashTee {
                sink: HashSink::new(HashAlgo::Sha256),
                inner: BufWriter::with_capacity(1 << 20, file),
            };
            let (nar_hash, nar_size) = {
                let enc = self
                    .compression
                    .encoder(&mut file, self.level, threads)
                    .map_err(io_err("start compressing into", &tmp))?;
                let mut nar = HashTee {
                    sink: HashSink::new(HashAlgo::Sha256),
                    inner: enc,
                };
                from.nar_into(info, &mut nar)?;
                nar.inner.finish().map_err(io_err("compress into", &tmp))?;
                nar.sink.finish()
            };
            file.flush().map_err(io_err("write", &tmp))?;
            let (file_hash, file_size) = file.sink.finish();
            if nar_hash != info.nar_hash || nar_size != info.nar_size {
                return Err(CopyError::NarMismatch {
                    from: from.uri(),
                    path: printed.clone(),
                    expected: info.nar_hash.to_string(),
                    got: nar_hash.to_string(),
                });
            }
            let url = format!(
                "nar/{}.nar{}",
                file_hash.to_nix32(),
                self.compression.extension()
            );
            let target = self.dir.join(&url);
            // The same file may be there for another path already (the same contents).
            let new = !target.exists();
            fs::rename(&tmp, &target).map_err(io_err("rename into place", &target))?;
            if new {
                fresh
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(target.clone());
            }
            let sigs = info
                .sigs
                .iter()
                .map(|s| {
                    s.parse::<Signature>()
                        .map_err(|_| CacheError::BadSignature {
                            path: printed.clone(),
                            sig: s.clone(),
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut out = NarInfo {
                store_path: p.clone(),
                url,
                compression: self.compression.name().to_owned(),
                file_hash: Some(file_hash),
                file_size: Some(file_size),
                nar_hash,
                nar_size,
                references: info.references.clone(),
                deriver: info.deriver.clone(),
                system: None,
                sigs,
                ca: info.ca,
            };
            for k in &self.keys {
                out.sign(store_dir, k);
            }
            Ok(out)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

fn narinfo_path(cache: &FileCache, p: &StorePath) -> PathBuf {
    cache.dir.join(format!("{}.narinfo", p.hash_part()))
}

/// Write `data` at `path` whole or not at all (a reader never sees half a file).
fn write_atomically(path: &Path, data: &[u8]) -> Result<(), CacheError> {
    let tmp = temp_name(path);
    fs::write(&tmp, data).map_err(io_err("write", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("rename into place", path))
}

fn temp_name(path: &Path) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    path.with_file_name(format!(
        ".tmp-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ))
}

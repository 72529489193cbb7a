//! A binary cache as a [`Store`]: read from (`file://`, `http(s)://`), with narinfos asked
//! many at a time and NARs decompressed as they stream; written to when it is a directory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Read, Write};
use std::sync::Mutex;

use ferrix_format::{NarInfo, StoreDir, StorePath};

use super::{CacheError, FileCache, Substituters};
use crate::path_info::ValidPathInfo;
use crate::store::{AddOptions, CopyError, Store};

/// A binary cache: its reading side (one cache, asked as substitution asks), its writing
/// side when it is a directory, or both.
#[derive(Debug)]
pub struct BinaryCache {
    uri: String,
    store_dir: StoreDir,
    read: Option<Substituters>,
    write: Option<FileCache>,
    /// The narinfos the queries found, for reading their NARs.
    found: Mutex<HashMap<StorePath, NarInfo>>,
}

impl BinaryCache {
    /// A cache to read from (`read` holds just it) and, for a directory, to write to.
    pub fn new(
        uri: String,
        store_dir: StoreDir,
        read: Option<Substituters>,
        write: Option<FileCache>,
    ) -> Self {
        Self {
            uri,
            store_dir,
            read,
            write,
            found: Mutex::new(HashMap::new()),
        }
    }

    fn reading(&self) -> Result<&Substituters, CopyError> {
        self.read.as_ref().ok_or_else(|| CopyError::Unsupported {
            store: self.uri.clone(),
            what: "be read here",
        })
    }

    fn narinfo(&self, p: &StorePath) -> Result<NarInfo, CopyError> {
        if let Some(i) = self.found.lock().unwrap_or_else(|e| e.into_inner()).get(p) {
            return Ok(i.clone());
        }
        let q = self
            .reading()?
            .query(&self.store_dir, std::slice::from_ref(p));
        self.take(q, std::slice::from_ref(p))?;
        self.found
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(p)
            .cloned()
            .ok_or_else(|| CopyError::Missing {
                store: self.uri.clone(),
                path: self.store_dir.display(p),
            })
    }

    /// Keep what a query found; a path it did not find because of a problem (unsigned, a
    /// malformed or lying narinfo, the cache failing) is that problem.
    fn take(
        &self,
        q: super::Queried,
        asked: &[StorePath],
    ) -> Result<BTreeMap<StorePath, ValidPathInfo>, CopyError> {
        let mut problems = q.problems;
        if let Some(i) = problems.iter().position(|(p, e)| {
            !q.found.contains_key(p) && !matches!(e, CacheError::Disabled { .. })
        }) {
            return Err(problems.swap_remove(i).1.into());
        }
        let mut found = self.found.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = BTreeMap::new();
        for p in asked {
            if let Some(f) = q.found.get(p) {
                out.insert(p.clone(), to_path_info(&f.info));
                found.insert(p.clone(), f.info.clone());
            }
        }
        Ok(out)
    }
}

/// What a narinfo says of its path, as the store records it.
pub fn to_path_info(info: &NarInfo) -> ValidPathInfo {
    let mut v = ValidPathInfo::new(info.store_path.clone(), info.nar_hash, info.nar_size);
    v.references = info.references.clone();
    v.deriver = info.deriver.clone();
    v.ca = info.ca;
    v.sigs = info.sigs.iter().map(|s| s.to_string()).collect();
    v
}

impl Store for BinaryCache {
    fn uri(&self) -> String {
        self.uri.clone()
    }

    fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    fn query_valid(
        &self,
        paths: &BTreeSet<StorePath>,
        _substitute: bool,
    ) -> Result<BTreeSet<StorePath>, CopyError> {
        if let Some(w) = &self.write {
            return Ok(paths.iter().filter(|p| w.has(p)).cloned().collect());
        }
        Ok(self.query_infos(paths)?.into_keys().collect())
    }

    fn query_infos(
        &self,
        paths: &BTreeSet<StorePath>,
    ) -> Result<BTreeMap<StorePath, ValidPathInfo>, CopyError> {
        let asked: Vec<StorePath> = paths.iter().cloned().collect();
        let q = self.reading()?.query(&self.store_dir, &asked);
        self.take(q, &asked)
    }

    fn closure_is_cheap(&self) -> bool {
        false
    }

    fn nar_streams(&self) -> usize {
        self.read.as_ref().map_or(1, Substituters::connections)
    }

    fn nar_into(&self, info: &ValidPathInfo, out: &mut dyn Write) -> Result<(), CopyError> {
        let narinfo = self.narinfo(&info.path)?;
        let read = self.reading()?;
        let cache = &read.caches()[0];
        let mut nar = cache.nar(&self.store_dir, &narinfo)?;
        copy_out(&mut nar, out).map_err(|(read, source)| {
            if read {
                // The cache failed: not believed in the next run either.
                cache.forget(&info.path);
            }
            CopyError::Stream {
                store: self.uri.clone(),
                path: self.store_dir.display(&info.path),
                source,
            }
        })
    }

    fn add_many(
        &self,
        infos: &[ValidPathInfo],
        from: &dyn Store,
        _opts: &AddOptions,
    ) -> Result<(), CopyError> {
        let w = self.write.as_ref().ok_or_else(|| CopyError::Unsupported {
            store: self.uri.clone(),
            what: "be written to (only file:// caches can)",
        })?;
        w.write_paths(&self.store_dir, infos, from)
    }
}

/// Copy a stream in large blocks; an error says whether reading (`true`) or writing failed.
fn copy_out(from: &mut dyn Read, out: &mut dyn Write) -> Result<(), (bool, io::Error)> {
    let mut buf = vec![0u8; 256 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => out.write_all(&buf[..n]).map_err(|e| (false, e))?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((true, e)),
        }
    }
}

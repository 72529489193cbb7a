//! The operations every store offers — batched queries, NAR streams, adding many paths at
//! once — so that one routine ([`crate::copy::copy_paths`]) copies between any two of them:
//! the local store (also under another root), binary caches (`file://`, `http(s)://`) and
//! machines over ssh (`ssh://`, `ssh-ng://`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use ferrix_format::{StoreDir, StorePath};

use crate::binary_cache::CacheError;
use crate::error::StoreError;
use crate::path_info::ValidPathInfo;
use crate::serve_client::RemoteError;

/// A store paths are copied from and to. The methods block (SQLite, files, pipes to ssh);
/// async callers go through [`crate::AsyncStore`], which runs them on blocking threads.
pub trait Store: Send + Sync {
    /// How messages name the store: its URI.
    fn uri(&self) -> String;

    fn store_dir(&self) -> &StoreDir;

    /// Which of `paths` are valid here, asked at once. With `substitute`, a store that can
    /// (a machine) first fetches what it can of the rest from its own substituters.
    fn query_valid(
        &self,
        paths: &BTreeSet<StorePath>,
        substitute: bool,
    ) -> Result<BTreeSet<StorePath>, CopyError>;

    /// What the store records of those of `paths` that are valid here.
    fn query_infos(
        &self,
        paths: &BTreeSet<StorePath>,
    ) -> Result<BTreeMap<StorePath, ValidPathInfo>, CopyError>;

    /// The closure of `paths` (all valid here) with what the store records of each; with
    /// `include_outputs`, also the valid outputs of the derivations in it. By default one
    /// batched query per level of references.
    fn query_closure(
        &self,
        paths: &BTreeSet<StorePath>,
        include_outputs: bool,
    ) -> Result<BTreeMap<StorePath, ValidPathInfo>, CopyError> {
        closure_by_level(self, paths, include_outputs)
    }

    /// Whether a whole closure is cheaper to ask of this store than to walk it a level at a
    /// time, asking the destination at each level what it lacks. A binary cache answers a
    /// request per path, and may lack (or not be trusted for) paths the destination has.
    fn closure_is_cheap(&self) -> bool {
        true
    }

    /// How many NARs may stream out of the store at once: one over a single connection.
    fn nar_streams(&self) -> usize {
        1
    }

    /// Write the NAR of `info.path`, valid here.
    fn nar_into(&self, info: &ValidPathInfo, out: &mut dyn Write) -> Result<(), CopyError>;

    /// Add `infos`, references first (each reference valid here or earlier in `infos`), their
    /// NARs read from `from`, in as few commits or streams as the store allows. Every NAR is
    /// checked against its info before anything is registered.
    fn add_many(
        &self,
        infos: &[ValidPathInfo],
        from: &dyn Store,
        opts: &AddOptions,
    ) -> Result<(), CopyError>;
}

/// The closure of `paths` in `store`, asked a level of references at a time: what
/// [`Store::query_closure`] does for a store that cannot answer it at once.
pub(crate) fn closure_by_level<S: Store + ?Sized>(
    store: &S,
    paths: &BTreeSet<StorePath>,
    include_outputs: bool,
) -> Result<BTreeMap<StorePath, ValidPathInfo>, CopyError> {
    if include_outputs {
        return Err(CopyError::Unsupported {
            store: store.uri(),
            what: "include the outputs of derivations in a closure",
        });
    }
    let mut out = BTreeMap::new();
    let mut level = paths.clone();
    while !level.is_empty() {
        let infos = store.query_infos(&level)?;
        if let Some(p) = level.iter().find(|p| !infos.contains_key(*p)) {
            return Err(CopyError::Missing {
                store: store.uri(),
                path: store.store_dir().display(p),
            });
        }
        out.extend(infos);
        level = level
            .iter()
            .flat_map(|p| &out[p].references)
            .filter(|r| !out.contains_key(*r))
            .cloned()
            .collect();
    }
    Ok(out)
}

/// A shared store is the store.
impl<T: Store + ?Sized> Store for std::sync::Arc<T> {
    fn uri(&self) -> String {
        (**self).uri()
    }
    fn store_dir(&self) -> &StoreDir {
        (**self).store_dir()
    }
    fn query_valid(
        &self,
        paths: &BTreeSet<StorePath>,
        substitute: bool,
    ) -> Result<BTreeSet<StorePath>, CopyError> {
        (**self).query_valid(paths, substitute)
    }
    fn query_infos(
        &self,
        paths: &BTreeSet<StorePath>,
    ) -> Result<BTreeMap<StorePath, ValidPathInfo>, CopyError> {
        (**self).query_infos(paths)
    }
    fn query_closure(
        &self,
        paths: &BTreeSet<StorePath>,
        include_outputs: bool,
    ) -> Result<BTreeMap<StorePath, ValidPathInfo>, CopyError> {
        (**self).query_closure(paths, include_outputs)
    }
    fn closure_is_cheap(&self) -> bool {
        (**self).closure_is_cheap()
    }
    fn nar_streams(&self) -> usize {
        (**self).nar_streams()
    }
    fn nar_into(&self, info: &ValidPathInfo, out: &mut dyn Write) -> Result<(), CopyError> {
        (**self).nar_into(info, out)
    }
    fn add_many(
        &self,
        infos: &[ValidPathInfo],
        from: &dyn Store,
        opts: &AddOptions,
    ) -> Result<(), CopyError> {
        (**self).add_many(infos, from, opts)
    }
}

/// How paths are added.
#[derive(Debug, Clone)]
pub struct AddOptions {
    /// Whether the destination checks signatures: a daemon against the keys it trusts, the
    /// local store against `trust` when given (as `nix copy` does; `nix-copy-closure` and a
    /// master sending a build's inputs do not). Binary caches read here also check their own
    /// signatures as they are read.
    pub check_sigs: bool,
    /// The keys the local store checks against, and whether it requires signatures at all;
    /// `None`: it takes the paths on its caller's word.
    pub trust: Option<crate::binary_cache::Trust>,
}

impl Default for AddOptions {
    fn default() -> Self {
        Self {
            check_sigs: true,
            trust: None,
        }
    }
}

/// Whether `info` may be added under `trust`: signed by one of its keys, or content-addressed
/// and really at the path its content address gives (or signatures not required).
pub fn trusted(
    store_dir: &StoreDir,
    info: &ValidPathInfo,
    trust: &crate::binary_cache::Trust,
) -> bool {
    if !trust.require_sigs {
        return true;
    }
    let fp = ferrix_format::signature::fingerprint(
        store_dir,
        &info.path,
        &info.nar_hash,
        info.nar_size,
        &info.references,
    );
    let signed = info
        .sigs
        .iter()
        .filter_map(|s| s.parse::<ferrix_format::signature::Signature>().ok())
        .any(|sig| trust.keys.iter().any(|k| k.verify(fp.as_bytes(), &sig)));
    if signed {
        return true;
    }
    let Some(ca) = &info.ca else { return false };
    let self_ref = info.references.contains(&info.path);
    let others = info.references.iter().filter(|r| **r != info.path);
    store_dir
        .make_ca_path(info.path.name(), ca, others, self_ref)
        .is_ok_and(|p| p == info.path)
}

/// Why a copy between stores failed; the store's own error, or what the copy itself found.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Local(#[from] StoreError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("cannot copy from '{from}' to '{to}': their store directories differ ('{from_dir}' and '{to_dir}')")]
    StoreDirs {
        from: String,
        to: String,
        from_dir: String,
        to_dir: String,
    },
    #[error("'{store}' does not have '{path}'")]
    Missing { store: String, path: String },
    #[error("the paths to copy from '{store}' refer to each other in a cycle")]
    Cycle {
        store: String,
        #[source]
        source: StoreError,
    },
    #[error("'{store}' cannot {what}")]
    Unsupported { store: String, what: &'static str },
    #[error("cannot add path '{path}' from '{from}' because it lacks a valid signature (by a key in 'trusted-public-keys'; '--no-check-sigs' copies it anyway)")]
    Unsigned { path: String, from: String },
    #[error("the session with '{store}' is unusable after an earlier failure")]
    Broken { store: String },
    #[error("work on '{store}' was cancelled (the runtime is shutting down)")]
    Cancelled { store: String },
    #[error("cannot copy '{path}' from '{from}'")]
    Copying {
        path: String,
        from: String,
        #[source]
        source: Box<CopyError>,
    },
    #[error("the NAR of '{path}' read from '{from}' has hash {got}, not the {expected} recorded for it (was it modified?)")]
    NarMismatch {
        from: String,
        path: String,
        expected: String,
        got: String,
    },
    #[error("cannot stream '{path}' out of '{store}'")]
    Stream {
        store: String,
        path: String,
        #[source]
        source: io::Error,
    },
}

/// Run `f` on the NAR of `info.path` in `from` as a stream, written by a thread of its own
/// into a channel (so reading the source, decompressing say, and what `f` does, hashing and
/// restoring, run on two cores). When both sides fail, the error is
/// the side that failed first (a reader that stops makes the writer fail, and the other way
/// round).
pub(crate) fn with_nar<T>(
    from: &dyn Store,
    info: &ValidPathInfo,
    f: impl FnOnce(&mut dyn Read) -> Result<T, CopyError>,
) -> Result<T, CopyError> {
    let (tx, mut rx) = crate::chunks::channel(1 << 20, 4);
    let reader_gone = AtomicBool::new(false);
    std::thread::scope(|s| {
        let producer = s.spawn(|| {
            let mut w = Watched {
                inner: tx,
                gone: &reader_gone,
            };
            let r = from.nar_into(info, &mut w);
            if r.is_err() {
                // The reader sees the stream fail rather than end.
                w.inner
                    .fail(io::Error::other("the source of the NAR failed"));
            } else if let Err(e) = w.inner.flush() {
                reader_gone.store(true, Ordering::SeqCst);
                return Err(CopyError::Stream {
                    store: from.uri(),
                    path: from.store_dir().display(&info.path),
                    source: e,
                });
            }
            r
        });
        let got = f(&mut rx);
        drop(rx);
        let produced = producer
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e));
        match (got, produced) {
            (Err(e), _) if reader_gone.load(Ordering::SeqCst) => Err(e),
            (_, Err(e)) => Err(e),
            (got, Ok(())) => got,
        }
    })
}

/// The error `e` of copying `info.path` from `from`, saying so.
pub(crate) fn copying(
    from: &dyn Store,
    info: &ValidPathInfo,
) -> impl FnOnce(CopyError) -> CopyError {
    let (path, from) = (from.store_dir().display(&info.path), from.uri());
    move |e| CopyError::Copying {
        path,
        from,
        source: Box::new(e),
    }
}

/// A writer that notes when its reader is gone.
struct Watched<'a> {
    inner: crate::chunks::ChunkSender,
    gone: &'a AtomicBool,
}

impl Write for Watched<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf).inspect_err(|_| {
            self.gone.store(true, Ordering::SeqCst);
        })
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().inspect_err(|_| {
            self.gone.store(true, Ordering::SeqCst);
        })
    }
}

/// Run `f` on every item on up to `threads` threads, stopping at the first error; the
/// results in the items' order.
pub(crate) fn parallel_map<T: Sync, R: Send, E: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> Result<R, E> + Sync,
) -> Result<Vec<R>, E> {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;
    let threads = threads.clamp(1, items.len().max(1));
    if threads == 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let slots: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    let first_error: Mutex<Option<E>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                if failed.load(Ordering::SeqCst) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(item) = items.get(i) else { return };
                match f(item) {
                    Ok(r) => slots.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r),
                    Err(e) => {
                        failed.store(true, Ordering::SeqCst);
                        first_error
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    Ok(slots
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .flatten()
        .collect())
}

/// What `store` records of `paths` (all valid there), references first.
pub fn sorted_infos(
    store: &crate::LocalStore,
    paths: &BTreeSet<StorePath>,
) -> Result<Vec<ValidPathInfo>, StoreError> {
    store
        .topo_sort(paths)?
        .iter()
        .map(|p| store.path_info(p))
        .collect()
}

/// The number of cores, at least one. Asked once: the standard library reads the cgroup's
/// quota files at every call, and this is asked for every NAR decoded.
pub(crate) fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store whose NARs are `bytes`, then `fail` (or the end).
    struct Scripted {
        sd: StoreDir,
        bytes: Vec<u8>,
        fail: bool,
    }

    impl Store for Scripted {
        fn uri(&self) -> String {
            "scripted".into()
        }
        fn store_dir(&self) -> &StoreDir {
            &self.sd
        }
        fn query_valid(
            &self,
            _: &BTreeSet<StorePath>,
            _: bool,
        ) -> Result<BTreeSet<StorePath>, CopyError> {
            Ok(BTreeSet::new())
        }
        fn query_infos(
            &self,
            _: &BTreeSet<StorePath>,
        ) -> Result<BTreeMap<StorePath, ValidPathInfo>, CopyError> {
            Ok(BTreeMap::new())
        }
        fn nar_into(&self, info: &ValidPathInfo, out: &mut dyn Write) -> Result<(), CopyError> {
            let stream = |source| CopyError::Stream {
                store: self.uri(),
                path: self.sd.display(&info.path),
                source,
            };
            for c in self.bytes.chunks(100_000) {
                out.write_all(c).map_err(stream)?;
            }
            if self.fail {
                return Err(CopyError::Missing {
                    store: self.uri(),
                    path: "the source's own failure".into(),
                });
            }
            Ok(())
        }
        fn add_many(
            &self,
            _: &[ValidPathInfo],
            _: &dyn Store,
            _: &AddOptions,
        ) -> Result<(), CopyError> {
            unreachable!("not a destination")
        }
    }

    fn info() -> ValidPathInfo {
        let sd = StoreDir::default();
        let p = sd
            .parse_path("/nix/store/00000000000000000000000000000000-x")
            .unwrap();
        ValidPathInfo::new(p, ferrix_format::Hash::sha256(b""), 0)
    }

    fn scripted(n: usize, fail: bool) -> Scripted {
        Scripted {
            sd: StoreDir::default(),
            bytes: (0..n).map(|i| i as u8).collect(),
            fail,
        }
    }

    #[test]
    fn the_whole_stream_reaches_the_reader() {
        let s = scripted(5_000_000, false);
        let got = with_nar(&s, &info(), |r| {
            let mut v = Vec::new();
            r.read_to_end(&mut v).unwrap();
            Ok(v)
        })
        .unwrap();
        assert_eq!(got, s.bytes);
    }

    #[test]
    fn a_failing_source_is_the_error_not_the_reader_it_cut_short() {
        let s = scripted(3_000_000, true);
        let err = with_nar(&s, &info(), |r| {
            let mut v = Vec::new();
            r.read_to_end(&mut v).map_err(|source| CopyError::Stream {
                store: "reader".into(),
                path: String::new(),
                source,
            })?;
            Ok(v)
        })
        .unwrap_err();
        assert!(
            matches!(&err, CopyError::Missing { path, .. } if path == "the source's own failure"),
            "{err:?}"
        );
    }

    #[test]
    fn a_reader_that_stops_is_the_error_not_the_source_it_left_writing() {
        let s = scripted(20_000_000, false);
        let err = with_nar(&s, &info(), |r| {
            let mut first = [0u8; 10];
            r.read_exact(&mut first).unwrap();
            Err::<(), _>(CopyError::Unsupported {
                store: "reader".into(),
                what: "go on",
            })
        })
        .unwrap_err();
        assert!(
            matches!(&err, CopyError::Unsupported { store, .. } if store == "reader"),
            "{err:?}"
        );
    }

    #[test]
    fn parallel_map_keeps_order_and_stops_at_an_error() {
        let items: Vec<u32> = (0..200).collect();
        let got = parallel_map(&items, 4, |i| Ok::<_, ()>(i * 2)).unwrap();
        assert_eq!(got, items.iter().map(|i| i * 2).collect::<Vec<_>>());
        let done = std::sync::atomic::AtomicUsize::new(0);
        let err = parallel_map(&items, 4, |i| {
            done.fetch_add(1, Ordering::SeqCst);
            if *i == 10 {
                return Err(*i);
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
            Ok(())
        })
        .unwrap_err();
        assert_eq!(err, 10);
        assert!(done.load(Ordering::SeqCst) < items.len(), "it went on");
    }
}

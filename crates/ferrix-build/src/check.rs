//! `--check`: a derivation built again, its new outputs compared with the registered ones.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::PathBuf;

use ferrix_format::hash::HashSink;
use ferrix_format::{HashAlgo, StorePath};
use ferrix_store::LocalStore;

use crate::error::{BuildFailure, FailureKind};
use crate::executor::Job;

/// `--check`: the new outputs (at `found`), made canonical, must have the NAR hashes of the
/// registered ones, once scratch paths' hash parts are rewritten back. A differing one is
/// kept as `<path>.check` with `keep_failed`.
pub(crate) fn compare_outputs(
    store: &LocalStore,
    job: &Job,
    drv: &str,
    found: &BTreeMap<String, PathBuf>,
    scratch: &BTreeMap<String, StorePath>,
    keep_failed: bool,
) -> Result<(), BuildFailure> {
    let store_err = BuildFailure::store(drv);
    let back: Vec<(Vec<u8>, Vec<u8>)> = scratch
        .iter()
        .map(|(name, s)| {
            (
                s.hash_part().as_bytes().to_vec(),
                job.outputs[name].hash_part().as_bytes().to_vec(),
            )
        })
        .collect();
    for (name, p) in &job.outputs {
        let at = &found[name];
        if fs::symlink_metadata(at).is_err() {
            return Err(BuildFailure::new(
                drv.to_owned(),
                FailureKind::MissingOutput {
                    output: name.clone(),
                    path: store.print(p),
                },
            ));
        }
        ferrix_store::canon::canonicalise(at).map_err(store_err)?;
        let mut sink = HashSink::new(HashAlgo::Sha256);
        let mut w = Rewriter::new(&mut sink, &back);
        ferrix_format::nar::dump_path(at, &mut w).map_err(|source| {
            BuildFailure::new(
                drv.to_owned(),
                FailureKind::UnreadableOutput {
                    path: store.print(p),
                    source,
                },
            )
        })?;
        w.finish().map_err(|source| {
            BuildFailure::new(
                drv.to_owned(),
                FailureKind::Io {
                    what: format!("reading output '{}'", at.display()),
                    source,
                },
            )
        })?;
        let (new_hash, _) = sink.finish();
        let old = store.path_info(p).map_err(store_err)?;
        if new_hash != old.nar_hash {
            let kept = if keep_failed {
                let to = PathBuf::from(format!("{}.check", store.real_path(p).display()));
                let _ = ferrix_store::fsutil::delete_path(&to);
                fs::rename(at, &to)
                    .ok()
                    .map(|()| format!("{}.check", store.print(p)))
            } else {
                None
            };
            return Err(BuildFailure::new(
                drv.to_owned(),
                FailureKind::NotDeterministic {
                    path: store.print(p),
                    kept,
                },
            ));
        }
    }
    Ok(())
}

/// Replaces fixed-length byte strings in a stream (hash parts: 32 bytes each), holding back
/// the last few bytes so that occurrences across writes are found.
struct Rewriter<'a, W: Write> {
    inner: W,
    rewrites: &'a [(Vec<u8>, Vec<u8>)],
    held: Vec<u8>,
}

impl<'a, W: Write> Rewriter<'a, W> {
    fn new(inner: W, rewrites: &'a [(Vec<u8>, Vec<u8>)]) -> Self {
        Self {
            inner,
            rewrites,
            held: Vec::new(),
        }
    }

    fn replace_held(&mut self) {
        for (from, to) in self.rewrites {
            let mut i = 0;
            while i + from.len() <= self.held.len() {
                if self.held[i..i + from.len()] == from[..] {
                    self.held[i..i + from.len()].copy_from_slice(to);
                    i += from.len();
                } else {
                    i += 1;
                }
            }
        }
    }

    fn finish(mut self) -> io::Result<()> {
        self.replace_held();
        self.inner.write_all(&self.held)?;
        self.inner.flush()
    }
}

impl<W: Write> Write for Rewriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.rewrites.is_empty() {
            return self.inner.write(buf);
        }
        self.held.extend_from_slice(buf);
        self.replace_held();
        let keep = self
            .rewrites
            .iter()
            .map(|(f, _)| f.len().saturating_sub(1))
            .max()
            .unwrap_or(0)
            .min(self.held.len());
        let n = self.held.len() - keep;
        self.inner.write_all(&self.held[..n])?;
        self.held.drain(..n);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

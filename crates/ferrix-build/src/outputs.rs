//! What a builder left: each output checked (present, readable, fixed-output hash, allowed
//! references and requisites, no cycles between outputs), made canonical, and its
//! references found: the path infos to register.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};

use ferrix_format::hash::HashSink;
use ferrix_format::{ContentAddress, FileIngestionMethod, HashAlgo, StorePath};
use ferrix_store::{LocalStore, ValidPathInfo};

use crate::attrs::Attrs;
use crate::error::{BuildFailure, FailureKind};
use crate::executor::Job;
use crate::refscan::RefScanner;

/// Writes to two sinks at once: the NAR hash and the reference scanner.
struct Tee<'a>(&'a mut HashSink, &'a mut RefScanner);

impl Write for Tee<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_all(buf)?;
        self.1.write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Check the outputs the builder left, make them canonical and find their references: the
/// path infos to register.
pub(crate) fn check_outputs(
    store: &LocalStore,
    job: &Job,
    drv: &str,
    input_closure: BTreeSet<StorePath>,
    unregistered: &BTreeMap<StorePath, ValidPathInfo>,
) -> Result<Vec<ValidPathInfo>, BuildFailure> {
    let store_err = BuildFailure::store(drv);
    for (name, p) in &job.outputs {
        let real = store.real_path(p);
        if fs::symlink_metadata(&real).is_err() {
            return Err(BuildFailure::new(
                drv.to_owned(),
                FailureKind::MissingOutput {
                    output: name.clone(),
                    path: store.print(p),
                },
            ));
        }
        ferrix_store::canon::canonicalise(&real).map_err(store_err)?;
    }
    let own: BTreeSet<StorePath> = job.outputs.values().cloned().collect();
    let mut candidates = input_closure;
    candidates.extend(own.iter().cloned());

    let mut infos: BTreeMap<StorePath, ValidPathInfo> = BTreeMap::new();
    for p in &own {
        let real = store.real_path(p);
        let mut sink = HashSink::new(HashAlgo::Sha256);
        let mut scanner = RefScanner::new(candidates.iter().cloned());
        ferrix_format::nar::dump_path(&real, Tee(&mut sink, &mut scanner)).map_err(|source| {
            BuildFailure::new(
                drv.to_owned(),
                FailureKind::UnreadableOutput {
                    path: store.print(p),
                    source,
                },
            )
        })?;
        let (nar_hash, nar_size) = sink.finish();
        let mut info = ValidPathInfo::new(p.clone(), nar_hash, nar_size);
        info.references = scanner.found();
        info.deriver = Some(job.drv_path.clone());
        info.ultimate = true;
        if let Some((method, expected, _)) = job.drv.fixed_output() {
            let got = match method {
                FileIngestionMethod::Flat => ferrix_format::hash::hash_file(&real, expected.algo())
                    .map_err(|source| {
                        BuildFailure::new(
                            drv.to_owned(),
                            FailureKind::Io {
                                what: format!("hashing '{}'", real.display()),
                                source,
                            },
                        )
                    })?,
                FileIngestionMethod::Recursive if expected.algo() == HashAlgo::Sha256 => nar_hash,
                FileIngestionMethod::Recursive => {
                    ferrix_format::nar::hash_path(&real, expected.algo())
                        .map_err(|e| {
                            BuildFailure::new(
                                drv.to_owned(),
                                FailureKind::Io {
                                    what: format!("hashing '{}'", real.display()),
                                    source: io::Error::other(e.to_string()),
                                },
                            )
                        })?
                        .0
                }
            };
            if got != *expected {
                return Err(BuildFailure::new(
                    drv.to_owned(),
                    FailureKind::HashMismatch {
                        specified: expected.to_sri(),
                        got: got.to_sri(),
                    },
                ));
            }
            if !info.references.is_empty() {
                return Err(BuildFailure::new(drv.to_owned(), FailureKind::BadReferences { path: store.print(p), why: "is the output of a fixed-output derivation, which may not refer to store paths".into() }));
            }
            info.ca = Some(ContentAddress::Fixed {
                method,
                hash: *expected,
            });
        }
        infos.insert(p.clone(), info);
    }
    check_output_cycles(store, drv, &infos)?;
    // What the database does not know yet: these outputs, and inputs still being registered.
    let mut known = unregistered.clone();
    known.extend(infos.iter().map(|(p, i)| (p.clone(), i.clone())));
    for (name, p) in &job.outputs {
        check_allowed(store, job, drv, name, p, &known)?;
    }
    Ok(infos.into_values().collect())
}

/// Outputs may refer to themselves and to each other, but not in a cycle.
fn check_output_cycles(
    store: &LocalStore,
    drv: &str,
    infos: &BTreeMap<StorePath, ValidPathInfo>,
) -> Result<(), BuildFailure> {
    for start in infos.keys() {
        let mut todo: Vec<&StorePath> = infos[start]
            .references
            .iter()
            .filter(|r| *r != start && infos.contains_key(*r))
            .collect();
        let mut seen = BTreeSet::new();
        while let Some(p) = todo.pop() {
            if p == start {
                return Err(BuildFailure::new(
                    drv.to_owned(),
                    FailureKind::BadReferences {
                        path: store.print(start),
                        why: "is part of a reference cycle between the outputs".into(),
                    },
                ));
            }
            if seen.insert(p) {
                todo.extend(
                    infos[p]
                        .references
                        .iter()
                        .filter(|r| infos.contains_key(*r)),
                );
            }
        }
    }
    Ok(())
}

/// `allowedReferences`, `allowedRequisites`, `disallowedReferences`, `disallowedRequisites`
/// (lists of store paths or output names) and, with structured attributes, `maxSize` and
/// `maxClosureSize`.
fn check_allowed(
    store: &LocalStore,
    job: &Job,
    drv: &str,
    output: &str,
    path: &StorePath,
    infos: &BTreeMap<StorePath, ValidPathInfo>,
) -> Result<(), BuildFailure> {
    let checks = Attrs::of(&job.drv)
        .and_then(|a| a.checks(output))
        .map_err(|why| BuildFailure::new(drv.to_owned(), FailureKind::Malformed { why }))?;
    let store_err = BuildFailure::store(drv);
    let info = &infos[path];
    let too_big = |what: &str, size: u64, limit: u64| {
        BuildFailure::new(
            drv.to_owned(),
            FailureKind::BadReferences {
                path: store.print(path),
                why: format!(
            "(output '{output}') is too large: {what} is {size} bytes; the limit is {limit} bytes"
        ),
            },
        )
    };
    if let Some(limit) = checks.max_size.filter(|l| info.nar_size > *l) {
        return Err(too_big("its NAR", info.nar_size, limit));
    }
    let closure = || -> Result<BTreeSet<StorePath>, BuildFailure> {
        let mut all = BTreeSet::new();
        let mut todo: Vec<StorePath> = vec![path.clone()];
        while let Some(p) = todo.pop() {
            if !all.insert(p.clone()) {
                continue;
            }
            match infos.get(&p) {
                Some(i) => todo.extend(i.references.iter().cloned()),
                None => todo.extend(store.references(&p).map_err(store_err)?),
            }
        }
        Ok(all)
    };
    if let Some(limit) = checks.max_closure_size {
        let mut size = 0;
        for p in closure()? {
            size += match infos.get(&p) {
                Some(i) => i.nar_size,
                None => store.path_info(&p).map_err(store_err)?.nar_size,
            };
        }
        if size > limit {
            return Err(too_big("its closure", size, limit));
        }
    }
    for (attr, spec, allowed, requisites) in [
        ("allowedReferences", &checks.allowed_references, true, false),
        ("allowedRequisites", &checks.allowed_requisites, true, true),
        (
            "disallowedReferences",
            &checks.disallowed_references,
            false,
            false,
        ),
        (
            "disallowedRequisites",
            &checks.disallowed_requisites,
            false,
            true,
        ),
    ] {
        let Some(spec) = spec else {
            continue;
        };
        let spec: BTreeSet<StorePath> = spec
            .iter()
            .map(|s| {
                store
                    .parse_path(s)
                    .ok()
                    .or_else(|| job.outputs.get(s).cloned())
                    .ok_or_else(|| {
                        BuildFailure::new(
                            drv.to_owned(),
                            FailureKind::BadReferences {
                                path: store.print(path),
                                why: format!("has an illegal reference specifier '{s}' in {attr}"),
                            },
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
        let used: BTreeSet<StorePath> = if requisites {
            let mut all = closure()?;
            if checks.ignore_self_refs {
                // As Nix does outside structured attributes: a path is not its own requisite.
                all.remove(path);
            }
            all
        } else {
            info.references.clone()
        };
        let bad: Vec<String> = used
            .iter()
            .filter(|u| spec.contains(*u) != allowed)
            .map(|u| store.print(u))
            .collect();
        if !bad.is_empty() {
            return Err(BuildFailure::new(drv.to_owned(), FailureKind::BadReferences { path: store.print(path), why: format!(
                    "(output '{output}') is not allowed to refer to the following paths ({attr}):\n  {}",
                    bad.join("\n  ")
                ) }));
        }
    }
    Ok(())
}

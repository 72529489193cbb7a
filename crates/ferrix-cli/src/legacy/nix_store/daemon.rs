//! `nix-store` through a daemon (`--store daemon`, `NIX_REMOTE`, or a store this user cannot
//! write with the daemon's socket there): the operations are the daemon's, the output is
//! what the same operation prints on a local store.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use ferrix_format::{FileIngestionMethod, HashAlgo, StoreDir, StorePath};
use ferrix_protocol::worker::{BuildMode, DerivedPath, GcAction, OutputsSpec};
use ferrix_store::worker_client::WorkerClient;

use super::{Op, Query};
use crate::settings::Settings;
use crate::shell::Shell;

/// What `nix-store` was asked, parsed.
pub(super) struct Asked<'a> {
    pub op: Op,
    pub query: Option<Query>,
    pub operands: &'a [String],
    pub recursive: bool,
    pub include_outputs: bool,
    pub check_contents: bool,
    pub repair: bool,
    pub gc_action: ferrix_store::gc::GcAction,
    pub print_roots: bool,
    pub max_freed: Option<u64>,
    pub add_root: Option<&'a Path>,
    pub dry_run: bool,
    pub check: bool,
    pub print_invalid: bool,
    pub quiet: bool,
    /// `--serve --write`.
    pub serve_write: bool,
}

/// Run `asked` through the daemon at `url`.
pub(super) fn run(
    settings: &Settings,
    url: &str,
    asked: Asked<'_>,
    shell: &mut Shell,
) -> Result<ExitCode> {
    let mut d = crate::stores::connect_daemon(url, settings)?;
    let sd = settings.store_dir.clone();
    let resolve = |a: &str| crate::ops::resolve_in(&sd, Path::new(sd.as_str()), a);
    let paths =
        || -> Result<Vec<StorePath>> { asked.operands.iter().map(|a| resolve(a)).collect() };
    let printed = |p: &StorePath| sd.display(p);
    match asked.op {
        Op::Realise => return realise(&mut d, &sd, &asked, shell),
        Op::Add | Op::AddFixed => {
            let (algo, srcs) = match asked.op {
                Op::AddFixed => {
                    let Some((algo, rest)) = asked.operands.split_first() else {
                        bail!("'--add-fixed' requires a hash algorithm");
                    };
                    (algo.parse::<HashAlgo>()?, rest)
                }
                _ => (HashAlgo::Sha256, asked.operands),
            };
            let method = if asked.op == Op::Add || asked.recursive {
                FileIngestionMethod::Recursive
            } else {
                FileIngestionMethod::Flat
            };
            for src in srcs {
                let src = Path::new(src);
                let name = src
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .with_context(|| format!("'{}' has no file name", src.display()))?;
                let p = d.add_path(src, &name, method, algo)?;
                shell.println(printed(&p))?;
            }
        }
        Op::Query => query(&mut d, &sd, &asked, &paths()?, shell)?,
        Op::CheckValidity => {
            let ps = paths()?;
            let valid = d.query_valid(&ps.iter().cloned().collect(), false)?;
            for p in &ps {
                if valid.contains(p) {
                    continue;
                }
                if !asked.print_invalid {
                    bail!("path '{}' is not valid", printed(p));
                }
                shell.println(printed(p))?;
            }
        }
        Op::Delete => {
            let ps: BTreeSet<StorePath> = paths()?.into_iter().collect();
            crate::ops::gc_through_daemon(&mut d, GcAction::DeleteSpecific, &ps, None, shell)?;
        }
        Op::Gc => {
            if asked.print_roots {
                for (link, p) in d.find_roots()? {
                    shell.println(format!("{link} -> {}", printed(&p)))?;
                }
                return Ok(ExitCode::SUCCESS);
            }
            use ferrix_store::gc::GcAction as A;
            let action = match asked.gc_action {
                A::ReturnLive => GcAction::ReturnLive,
                A::ReturnDead => GcAction::ReturnDead,
                A::DeleteDead => GcAction::DeleteDead,
                A::DeleteSpecific => GcAction::DeleteSpecific,
            };
            crate::ops::gc_through_daemon(
                &mut d,
                action,
                &BTreeSet::new(),
                asked.max_freed,
                shell,
            )?;
        }
        Op::Verify => {
            let errors = d.verify_store(asked.check_contents, asked.repair, to_stderr())?;
            if errors {
                return Ok(ExitCode::from(1));
            }
        }
        Op::Optimise => d.optimise_store(to_stderr())?,
        Op::VerifyPath => {
            // Each path's NAR from the daemon, hashed here against what it records.
            let mut bad = false;
            for p in paths()? {
                let info = d
                    .query_path_info(&p)?
                    .with_context(|| format!("path '{}' is not valid", printed(&p)))?;
                let mut sink = ferrix_format::hash::HashSink::new(info.nar_hash.algo());
                d.nar_into(&p, &mut sink)?;
                let (got, size) = sink.finish();
                if got != info.nar_hash || (info.nar_size != 0 && size != info.nar_size) {
                    let enc = |h: &ferrix_format::Hash| h.encode_typed(ferrix_format::Encoding::Nix32);
                    shell.error(format!(
                        "path '{}' was modified! expected hash '{}', got '{}'",
                        printed(&p),
                        enc(&info.nar_hash),
                        enc(&got)
                    ));
                    bad = true;
                }
            }
            if bad {
                return Ok(ExitCode::from(1));
            }
        }
        Op::RepairPath => crate::stores::repair_through_daemon(&mut d, &sd, &paths()?)?,
        Op::Export => export(&mut d, &sd, &paths()?, shell)?,
        Op::Serve => crate::serve::serve_through_daemon(d, sd, asked.serve_write)?,
        Op::DumpDb => {
            // All of them sorted by path; those named in the order named, as Nix dumps them.
            let paths: Vec<StorePath> = if asked.operands.is_empty() {
                d.all_valid()?.into_iter().collect()
            } else {
                paths()?
            };
            for p in paths {
                let info = d
                    .query_path_info(&p)?
                    .with_context(|| format!("path '{}' is not valid", printed(&p)))?;
                shell.println(printed(&p))?;
                shell.println(info.nar_hash.to_base16())?;
                shell.println(info.nar_size)?;
                shell.println(info.deriver.map(|x| printed(&x)).unwrap_or_default())?;
                shell.println(info.references.len())?;
                for r in &info.references {
                    shell.println(printed(r))?;
                }
            }
        }
        Op::Import => {
            let stdin = std::io::stdin().lock();
            let input = std::io::BufReader::with_capacity(1 << 20, stdin);
            for p in ferrix_store::export::import_through_daemon(&mut d, &sd, input)? {
                shell.println(printed(&p))?;
            }
        }
        Op::ReadLog => {
            // Build logs are readable where the daemon keeps them, as the store's files are.
            for p in paths()? {
                let deriver = if p.is_derivation() {
                    None
                } else {
                    d.query_path_info(&p)?.and_then(|i| i.deriver)
                };
                let log = crate::build::log_of(&sd, &settings.store.log_dir, &p, deriver)?;
                shell.out().write_all(&log)?;
            }
        }
        _ => bail!(
            "this operation of nix-store works on a local store only so far, not through the daemon at '{url}'"
        ),
    }
    Ok(ExitCode::SUCCESS)
}

use crate::stores::log_to_stderr as to_stderr;

/// `nix-store -r` through the daemon: what it will do (with `--dry-run`, only that), then
/// the build, then the outputs (or roots to them) printed.
fn realise(
    d: &mut WorkerClient,
    sd: &StoreDir,
    asked: &Asked<'_>,
    shell: &mut Shell,
) -> Result<ExitCode> {
    let mut targets = Vec::new();
    for a in asked.operands {
        targets.push(derived_path(sd, a)?);
    }
    let missing = d.query_missing(&targets)?;
    announce(sd, &missing, asked.dry_run, shell);
    if asked.dry_run {
        return Ok(ExitCode::SUCCESS);
    }
    let mode = if asked.check {
        BuildMode::Check
    } else if asked.repair {
        BuildMode::Repair
    } else {
        BuildMode::Normal
    };
    let sink: ferrix_store::serve_client::LogSink = if asked.quiet {
        Box::new(|_: &str| {})
    } else {
        to_stderr()
    };
    if let Err(e) = d.build_paths(&targets, mode, sink) {
        shell.error(format!("{:#}", anyhow::Error::new(e)));
        return Ok(ExitCode::from(1));
    }
    let mut outputs: Vec<StorePath> = Vec::new();
    for t in &targets {
        match t {
            DerivedPath::Opaque(p) => outputs.push(p.clone()),
            DerivedPath::Built {
                drv_path,
                outputs: spec,
            } => {
                // Nix prints a derivation's outputs as a set: in store path order.
                let outs: BTreeSet<StorePath> = d
                    .output_map(drv_path)?
                    .into_iter()
                    .filter(|(name, _)| match spec {
                        OutputsSpec::All => true,
                        OutputsSpec::Names(n) => n.contains(name),
                    })
                    .filter_map(|(_, p)| p)
                    .collect();
                outputs.extend(outs);
            }
        }
    }
    for (i, p) in outputs.iter().enumerate() {
        match asked.add_root {
            Some(link) => {
                let link = if outputs.len() > 1 {
                    PathBuf::from(format!("{}-{}", link.display(), i))
                } else {
                    link.to_owned()
                };
                let link = crate::stores::daemon_root(d, sd, p, &link)?;
                shell.println(link.display())?;
            }
            None => shell.println(sd.display(p))?,
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `nix-store --export` through the daemon: the closure order of `paths` (references
/// first), each path's NAR from the daemon, its metadata after it, as a local export writes.
fn export(
    d: &mut WorkerClient,
    sd: &StoreDir,
    paths: &[StorePath],
    shell: &mut Shell,
) -> Result<()> {
    export_to(d, sd, paths, shell.out())
}

/// The export stream of `paths` from the daemon, written to `out`.
pub(crate) fn export_to(
    d: &mut WorkerClient,
    sd: &StoreDir,
    paths: &[StorePath],
    out: &mut dyn std::io::Write,
) -> Result<()> {
    let mut infos = std::collections::HashMap::new();
    for p in paths {
        let info = d
            .query_path_info(p)?
            .with_context(|| format!("path '{}' is not valid", sd.display(p)))?;
        infos.insert(p.clone(), info);
    }
    let set: BTreeSet<StorePath> = paths.iter().cloned().collect();
    let order = ferrix_store::closure::topo_sort(sd, &set, |p| {
        Ok(infos
            .get(p)
            .map(|i| i.references.iter().cloned().collect())
            .unwrap_or_default())
    })?;
    for p in order {
        let i = &infos[&p];
        let info = ferrix_store::ValidPathInfo {
            path: p.clone(),
            deriver: i.deriver.clone(),
            nar_hash: i.nar_hash,
            references: i.references.clone(),
            registration_time: 0,
            nar_size: i.nar_size,
            ultimate: false,
            sigs: Default::default(),
            ca: i.ca,
        };
        ferrix_format::wire::write_u64(&mut *out, 1)?;
        d.nar_into(&p, &mut *out)?;
        out.write_all(&ferrix_store::export::trailer(sd, &info))?;
    }
    ferrix_format::wire::write_u64(&mut *out, 0)?;
    out.flush()?;
    Ok(())
}

/// `drv`, `drv!out,dev` (or `^`) as a derivation's outputs; anything else as a path.
pub(crate) fn derived_path(sd: &StoreDir, arg: &str) -> Result<DerivedPath> {
    let (path, outs) = match arg.split_once(['!', '^']) {
        Some((p, o)) if p.ends_with(".drv") => (p, Some(o)),
        _ => (arg, None),
    };
    let p = crate::ops::resolve_in(sd, Path::new(sd.as_str()), path)?;
    if !p.is_derivation() {
        return Ok(DerivedPath::Opaque(p));
    }
    let outputs = match outs {
        None | Some("*") | Some("") => OutputsSpec::All,
        Some(o) => OutputsSpec::Names(o.split(',').map(str::to_owned).collect()),
    };
    Ok(DerivedPath::Built {
        drv_path: p,
        outputs,
    })
}

/// What the build will do, as a local `nix-store -r` says it.
fn announce(sd: &StoreDir, m: &ferrix_protocol::worker::Missing, dry_run: bool, shell: &mut Shell) {
    let what = if dry_run { "would be" } else { "will be" };
    if !m.will_build.is_empty() {
        let n = m.will_build.len();
        shell.note(if n == 1 {
            format!("this derivation {what} built:")
        } else {
            format!("these {n} derivations {what} built:")
        });
        for p in &m.will_build {
            shell.note(format!("  {}", sd.display(p)));
        }
    }
    if !m.will_substitute.is_empty() {
        let n = m.will_substitute.len();
        let head = if n == 1 {
            format!("this path {what} fetched")
        } else {
            format!("these {n} paths {what} fetched")
        };
        shell.note(format!(
            "{head} ({} download, {} unpacked):",
            crate::ops::mib(m.download_size),
            crate::ops::mib(m.nar_size)
        ));
        for p in &m.will_substitute {
            shell.note(format!("  {}", sd.display(p)));
        }
    }
}

/// `nix-store -q` through the daemon.
fn query(
    d: &mut WorkerClient,
    sd: &StoreDir,
    asked: &Asked<'_>,
    paths: &[StorePath],
    shell: &mut Shell,
) -> Result<()> {
    let mut infos = std::collections::BTreeMap::new();
    for p in paths {
        match d.query_path_info(p)? {
            Some(i) => {
                infos.insert(p.clone(), i);
            }
            None => bail!("path '{}' is not valid", sd.display(p)),
        }
    }
    let q = asked.query.unwrap_or(Query::Outputs);
    match q {
        Query::Outputs => {
            for p in paths {
                if p.is_derivation() {
                    let outs: BTreeSet<StorePath> =
                        d.output_map(p)?.into_values().flatten().collect();
                    for o in outs {
                        shell.println(sd.display(&o))?;
                    }
                } else {
                    shell.println(sd.display(p))?;
                }
            }
        }
        Query::References => {
            let set: BTreeSet<StorePath> = infos
                .values()
                .flat_map(|i| i.references.iter().cloned())
                .collect();
            print_sorted(d, sd, set, shell)?;
        }
        Query::Referrers => {
            let mut set = BTreeSet::new();
            for p in paths {
                set.extend(d.referrers(p)?);
            }
            print_sorted(d, sd, set, shell)?;
        }
        Query::ReferrersClosure => {
            let mut set: BTreeSet<StorePath> = BTreeSet::new();
            let mut todo: Vec<StorePath> = paths.to_vec();
            while let Some(p) = todo.pop() {
                if set.insert(p.clone()) {
                    todo.extend(d.referrers(&p)?);
                }
            }
            print_sorted(d, sd, set, shell)?;
        }
        Query::Requisites => {
            let mut set: BTreeSet<StorePath> = BTreeSet::new();
            let mut todo: Vec<StorePath> = paths.to_vec();
            while let Some(p) = todo.pop() {
                if !set.insert(p.clone()) {
                    continue;
                }
                if let Some(i) = d.query_path_info(&p)? {
                    todo.extend(i.references.iter().cloned());
                }
                if asked.include_outputs && p.is_derivation() {
                    let valid_outs: BTreeSet<StorePath> =
                        d.output_map(&p)?.into_values().flatten().collect();
                    todo.extend(d.query_valid(&valid_outs, false)?);
                }
            }
            print_sorted(d, sd, set, shell)?;
        }
        Query::Deriver => {
            for p in paths {
                match &infos[p].deriver {
                    Some(dv) => shell.println(sd.display(dv))?,
                    None => shell.println("unknown-deriver")?,
                }
            }
        }
        Query::Hash => {
            for p in paths {
                shell.println(infos[p].nar_hash)?;
            }
        }
        Query::Size => {
            for p in paths {
                shell.println(infos[p].nar_size)?;
            }
        }
        Query::Roots => {
            let mut wanted: BTreeSet<StorePath> = BTreeSet::new();
            let mut todo: Vec<StorePath> = paths.to_vec();
            while let Some(p) = todo.pop() {
                if wanted.insert(p.clone()) {
                    todo.extend(d.referrers(&p)?);
                }
            }
            for (link, p) in d.find_roots()? {
                if wanted.contains(&p) {
                    shell.println(format!("{link} -> {}", sd.display(&p)))?;
                }
            }
        }
        Query::Tree | Query::Graph => {
            let mut refs = |q: &StorePath| -> Result<BTreeSet<StorePath>> {
                Ok(d.query_path_info(q)?
                    .map(|i| i.references)
                    .unwrap_or_default())
            };
            if q == Query::Graph {
                crate::ops::print_graph_with(&mut refs, paths, shell)?;
            } else {
                let mut done = BTreeSet::new();
                for p in paths {
                    crate::ops::print_tree_with(sd, &mut refs, p, "", "", &mut done, shell)?;
                }
            }
        }
    }
    Ok(())
}

/// `set` references first, as Nix prints it.
fn print_sorted(
    d: &mut WorkerClient,
    sd: &StoreDir,
    set: BTreeSet<StorePath>,
    shell: &mut Shell,
) -> Result<()> {
    let mut refs = std::collections::HashMap::new();
    for p in &set {
        let r = d
            .query_path_info(p)?
            .map(|i| i.references.into_iter().collect::<Vec<_>>())
            .unwrap_or_default();
        refs.insert(p.clone(), r);
    }
    let sorted = ferrix_store::closure::topo_sort(sd, &set, |p| {
        Ok(refs.get(p).cloned().unwrap_or_default())
    })?;
    for p in sorted {
        shell.println(sd.display(&p))?;
    }
    Ok(())
}

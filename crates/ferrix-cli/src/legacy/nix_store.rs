//! `nix-store`: the classic store command, Nix's operations and flags.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use ferrix_format::signature::SecretKey;
use ferrix_format::{nar, FileIngestionMethod, Hash, HashAlgo, StorePath};
use ferrix_store::gc::{GcAction, GcOptions};
use ferrix_store::LocalStore;

use super::{ArgIter, Common};
use crate::cmd::check_key_name;
use crate::ops;
use crate::settings::{CliSetting, Settings};
use crate::shell::Shell;

const HELP: &str = "Usage: nix-store OPERATION [OPTIONS...] [ARGUMENTS...]

Operations:
  --add PATH...                      add paths to the store (recursive, sha256)
  --add-fixed [--recursive] ALGO PATH...
  --print-fixed-path [--recursive] ALGO HASH NAME
  --query, -q [--references|--referrers|--referrers-closure|--requisites|-R
               [--include-outputs]|--tree|--graph|--deriver|-d|--hash|--size|--roots|--outputs] PATH...
  --realise, -r DRV[!OUTPUTS]|PATH... [--add-root LINK] [--dry-run] [--check|--repair] [-Q]
  --repair-path PATH...
                                     [-j N] [--cores N] [-k] [-K] [--max-silent-time S] [--timeout S]
  --read-log, -l DRV|PATH...
  --verify [--check-contents] [--repair]
  --verify-path PATH...
  --check-validity [--print-invalid] PATH...
  --export PATH... > FILE            --import < FILE
  --dump-db [PATH...]                --load-db < FILE
  --delete PATH...                   [--ignore-liveness]
  --gc [--print-roots|--print-live|--print-dead] [--max-freed N]
  --dump PATH                        --restore PATH < NAR
  --generate-binary-cache-key NAME SECRET-FILE PUBLIC-FILE

Options: --store URL, --option NAME VALUE";

pub(crate) mod daemon;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Dump,
    Restore,
    GenerateKey,
    Add,
    AddFixed,
    PrintFixedPath,
    Query,
    Realise,
    Verify,
    VerifyPath,
    Export,
    Import,
    DumpDb,
    LoadDb,
    Delete,
    Gc,
    ReadLog,
    RepairPath,
    CheckValidity,
    Serve,
    Optimise,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Query {
    Outputs,
    References,
    Referrers,
    ReferrersClosure,
    Requisites,
    Tree,
    Graph,
    Deriver,
    Hash,
    Size,
    Roots,
}

/// `-qR` is `-q -R`: single-dash groups of short flags are split, as Nix does.
fn expand(args: &[OsString]) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    for a in args {
        match a.to_str() {
            Some(s)
                if s.len() > 2
                    && s.starts_with('-')
                    && !s.starts_with("--")
                    && s[1..].chars().all(|c| c.is_ascii_alphabetic()) =>
            {
                out.extend(s[1..].chars().map(|c| OsString::from(format!("-{c}"))));
            }
            _ => out.push(a.clone()),
        }
    }
    out
}

pub fn run(args: &[OsString], shell: &mut Shell) -> Result<ExitCode> {
    let mut it = ArgIter::new("nix-store", expand(args));
    let mut op: Option<Op> = None;
    let mut query: Option<Query> = None;
    let mut operands: Vec<OsString> = Vec::new();
    let mut recursive = false;
    let mut include_outputs = false;
    let mut check_contents = false;
    let mut repair = false;
    let mut gc_action = GcAction::DeleteDead;
    let mut print_roots = false;
    let mut max_freed: Option<u64> = None;
    let mut add_root: Option<PathBuf> = None;
    let mut ignore_liveness = false;
    let mut store_url: Option<String> = None;
    let mut dry_run = false;
    let mut check = false;
    let mut print_invalid = false;
    let mut serve_write = false;
    let mut quiet = false;
    let mut options: Vec<CliSetting> = Vec::new();
    let set = |op: &mut Option<Op>, new: Op| -> Result<()> {
        if op.is_some_and(|o| o != new) {
            bail!(
                "only one operation may be specified\nTry 'nix-store --help' for more information."
            );
        }
        *op = Some(new);
        Ok(())
    };
    let mut set_query = |q: Query| query = Some(q);
    while let Some(a) = it.next() {
        let flag = a.to_str().unwrap_or("");
        match it.common(flag, HELP, shell)? {
            super::Common::Exit(code) => return Ok(code),
            Common::Consumed => continue,
            Common::Other => {}
        }
        match flag {
            "--dump" => set(&mut op, Op::Dump)?,
            "--restore" => set(&mut op, Op::Restore)?,
            "--generate-binary-cache-key" => set(&mut op, Op::GenerateKey)?,
            "--add" => set(&mut op, Op::Add)?,
            "--add-fixed" => set(&mut op, Op::AddFixed)?,
            "--print-fixed-path" => set(&mut op, Op::PrintFixedPath)?,
            "--query" | "-q" => set(&mut op, Op::Query)?,
            "--realise" | "-r" => set(&mut op, Op::Realise)?,
            "--verify" => set(&mut op, Op::Verify)?,
            "--verify-path" => set(&mut op, Op::VerifyPath)?,
            "--export" => set(&mut op, Op::Export)?,
            "--import" => set(&mut op, Op::Import)?,
            "--serve" => set(&mut op, Op::Serve)?,
            "--write" => serve_write = true,
            "--dump-db" => set(&mut op, Op::DumpDb)?,
            "--load-db" => set(&mut op, Op::LoadDb)?,
            "--delete" => set(&mut op, Op::Delete)?,
            "--gc" => set(&mut op, Op::Gc)?,
            "--optimise" | "--optimize" => set(&mut op, Op::Optimise)?,
            "--read-log" | "-l" => set(&mut op, Op::ReadLog)?,
            "--repair-path" => set(&mut op, Op::RepairPath)?,
            "--check-validity" => set(&mut op, Op::CheckValidity)?,
            "--print-invalid" => print_invalid = true,
            "--no-build-output" | "-Q" => quiet = true,
            "--dry-run" => dry_run = true,
            "--check" => check = true,
            "--recursive" => recursive = true,
            "--outputs" => set_query(Query::Outputs),
            "--references" => set_query(Query::References),
            "--referrers" | "--referers" => set_query(Query::Referrers),
            "--referrers-closure" | "--referers-closure" => set_query(Query::ReferrersClosure),
            "--requisites" | "-R" => set_query(Query::Requisites),
            "--tree" => set_query(Query::Tree),
            "--graph" => set_query(Query::Graph),
            "--deriver" | "-d" => set_query(Query::Deriver),
            "--hash" => set_query(Query::Hash),
            "--size" => set_query(Query::Size),
            "--roots" => set_query(Query::Roots),
            "--include-outputs" => include_outputs = true,
            "--check-contents" => check_contents = true,
            "--repair" => repair = true,
            "--print-roots" => print_roots = true,
            "--print-live" => gc_action = GcAction::ReturnLive,
            "--print-dead" => gc_action = GcAction::ReturnDead,
            "--max-freed" => {
                let v = it.value(flag)?;
                max_freed = Some(parse_size(&v)?);
            }
            "--add-root" => add_root = Some(PathBuf::from(it.value(flag)?)),
            "--indirect" => {}
            "--ignore-liveness" => ignore_liveness = true,
            "--store" => store_url = Some(it.value(flag)?),
            "--option" => {
                let k = it.value(flag)?;
                let v = it.value(flag)?;
                options.push(CliSetting::option(k, v));
            }
            f if f.len() > 2 && f.starts_with("-j") => {
                options.push(CliSetting::flag("-j", "max-jobs", &f[2..]))
            }
            f if crate::build::build_flag(f).is_some() => options.extend(it.build_option(f)?),
            "--" => operands.extend(it.by_ref()),
            f if f.starts_with('-') && f.len() > 1 => return Err(it.unknown(f)),
            _ => operands.push(a),
        }
    }
    let Some(op) = op else {
        bail!("no operation specified\nTry 'nix-store --help' for more information.");
    };
    let strs = |v: &[OsString]| -> Vec<String> {
        v.iter().map(|s| s.to_string_lossy().into_owned()).collect()
    };

    // Settings are read (and a bad value refused) before anything is done, as in Nix.
    let conf = crate::settings::load_conf(&options, shell)?;
    // Operations that need no store.
    match op {
        Op::Dump => {
            let [path] = &operands[..] else {
                bail!("'--dump' requires exactly one path");
            };
            crate::cmd::dump(Path::new(path), shell)?;
            return Ok(ExitCode::SUCCESS);
        }
        Op::Restore => {
            let [path] = &operands[..] else {
                bail!("'--restore' requires exactly one path");
            };
            restore(Path::new(path))?;
            return Ok(ExitCode::SUCCESS);
        }
        Op::GenerateKey => {
            let [name, sk_file, pk_file] = &operands[..] else {
                bail!("three arguments expected\nTry 'nix-store --help' for more information.");
            };
            let name = name.to_string_lossy();
            check_key_name(&name)?;
            let sk = SecretKey::generate(&name)?;
            write_key(Path::new(sk_file), &sk.to_string(), 0o600)?;
            write_key(Path::new(pk_file), &sk.to_public().to_string(), 0o644)?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let settings = Settings::with_conf(store_url.as_deref(), conf)?;
    if op == Op::PrintFixedPath {
        let ops = strs(&operands);
        let [algo, hash, name] = &ops[..] else {
            bail!("'--print-fixed-path' requires three arguments");
        };
        let algo: HashAlgo = algo.parse()?;
        let h = Hash::parse(hash, Some(algo))?;
        let method = if recursive {
            FileIngestionMethod::Recursive
        } else {
            FileIngestionMethod::Flat
        };
        let p = settings
            .store_dir
            .make_fixed_output_path(name, method, &h, [], false)?;
        shell.println(settings.store_dir.display(&p))?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some((url, _)) = settings.daemon() {
        let url = url.to_owned();
        let operands = strs(&operands);
        let asked = daemon::Asked {
            op,
            query,
            operands: &operands,
            recursive,
            include_outputs,
            check_contents,
            repair,
            gc_action,
            print_roots,
            max_freed,
            add_root: add_root.as_deref(),
            dry_run,
            check,
            print_invalid,
            quiet,
            serve_write,
        };
        return daemon::run(&settings, &url, asked, shell);
    }
    let store = std::sync::Arc::new(settings.open_store()?);
    let interrupt = if matches!(op, Op::Add | Op::AddFixed | Op::Import) {
        Some(crate::interrupt::watch(&store)?)
    } else {
        None
    };
    match op {
        Op::Add => {
            let srcs: Vec<PathBuf> = operands.iter().map(PathBuf::from).collect();
            for p in ops::add(
                &store,
                &srcs,
                FileIngestionMethod::Recursive,
                HashAlgo::Sha256,
            )? {
                shell.println(store.print(&p))?;
            }
        }
        Op::AddFixed => {
            let Some((algo, paths)) = operands.split_first() else {
                bail!("'--add-fixed' requires a hash algorithm");
            };
            let algo: HashAlgo = algo.to_string_lossy().parse()?;
            let method = if recursive {
                FileIngestionMethod::Recursive
            } else {
                FileIngestionMethod::Flat
            };
            let srcs: Vec<PathBuf> = paths.iter().map(PathBuf::from).collect();
            for p in ops::add(&store, &srcs, method, algo)? {
                shell.println(store.print(&p))?;
            }
        }
        Op::Query => {
            let paths = ops::resolve_all(&store, &strs(&operands))?;
            query_op(
                &store,
                &settings,
                query.unwrap_or(Query::Outputs),
                &paths,
                include_outputs,
                shell,
            )?;
        }
        Op::Realise => {
            return realise(
                &settings,
                &store,
                &strs(&operands),
                add_root.as_deref(),
                crate::build::RunMode {
                    logs: !quiet,
                    dry_run,
                    mode: if check {
                        ferrix_build::BuildMode::Check
                    } else if repair {
                        ferrix_build::BuildMode::Repair
                    } else {
                        ferrix_build::BuildMode::Normal
                    },
                },
                shell,
            );
        }
        Op::ReadLog => {
            for a in strs(&operands) {
                let p = ops::resolve(&store, &a)?;
                shell
                    .out()
                    .write_all(&crate::build::read_log(&store, &p)?)?;
            }
        }
        Op::Verify => {
            if repair {
                let mut repairer = |paths: &[StorePath], sh: &mut Shell| {
                    crate::build::repair_paths(&settings, store.clone(), paths, sh)
                };
                return ops::verify(&store, check_contents, Some(&mut repairer), None, shell);
            }
            return ops::verify(&store, check_contents, None, None, shell);
        }
        Op::VerifyPath => {
            let paths = ops::resolve_all(&store, &strs(&operands))?;
            return ops::verify(&store, true, None, Some(&paths), shell);
        }
        Op::Serve => {
            crate::serve::serve(&settings, store.clone(), serve_write)?;
        }
        Op::Optimise => ops::optimise(&store, shell)?,
        Op::CheckValidity => {
            for a in strs(&operands) {
                let p = ops::resolve(&store, &a)?;
                if store.is_valid_path(&p)? {
                    continue;
                }
                if !print_invalid {
                    bail!("path '{}' is not valid", store.print(&p));
                }
                shell.println(store.print(&p))?;
            }
        }
        Op::RepairPath => {
            let paths = ops::resolve_all(&store, &strs(&operands))?;
            let repaired = crate::build::repair_paths(&settings, store.clone(), &paths, shell)?;
            let all = paths.iter().all(|p| repaired.contains(p));
            return Ok(if all {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        Op::Export => {
            let paths: BTreeSet<StorePath> = ops::resolve_all(&store, &strs(&operands))?
                .into_iter()
                .collect();
            ferrix_store::export::export_paths(&store, &paths, shell.out())?;
        }
        Op::Import => {
            let flag = interrupt.unwrap_or_default();
            // Read in large chunks already: no buffer on top.
            let imported =
                ferrix_store::export::import_paths(&store, crate::interrupt::stdin(flag))?;
            for p in imported {
                shell.println(store.print(&p))?;
            }
        }
        Op::DumpDb => {
            // All of them sorted by path; those named in the order named, as Nix dumps them.
            let paths: Vec<StorePath> = if operands.is_empty() {
                store
                    .all_valid_paths()?
                    .into_iter()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect()
            } else {
                ops::resolve_all(&store, &strs(&operands))?
            };
            for p in paths {
                let info = store.path_info(&p)?;
                shell.println(store.print(&p))?;
                shell.println(info.nar_hash.to_base16())?;
                shell.println(info.nar_size)?;
                shell.println(info.deriver.map(|d| store.print(&d)).unwrap_or_default())?;
                shell.println(info.references.len())?;
                for r in &info.references {
                    shell.println(store.print(r))?;
                }
            }
        }
        Op::LoadDb => {
            let n = ops::load_db(&store, std::io::stdin().lock())?;
            shell.note(format!("registered {n} paths"));
        }
        Op::Delete => {
            let paths = ops::resolve_all(&store, &strs(&operands))?;
            let mut opts = GcOptions::new(GcAction::DeleteSpecific);
            opts.paths = paths.into_iter().collect();
            opts.ignore_liveness = ignore_liveness;
            ops::gc(&store, &settings, opts, shell)?;
        }
        Op::Gc => {
            if print_roots {
                ops::print_roots(&store, shell)?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut opts = GcOptions::new(gc_action);
            opts.max_freed = max_freed;
            ops::gc(&store, &settings, opts, shell)?;
        }
        Op::Dump | Op::Restore | Op::GenerateKey | Op::PrintFixedPath => {
            unreachable!("handled above")
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn query_op(
    store: &LocalStore,
    _settings: &Settings,
    q: Query,
    paths: &[StorePath],
    include_outputs: bool,
    shell: &mut Shell,
) -> Result<()> {
    for p in paths {
        if !store.is_valid_path(p)? {
            bail!("path '{}' is not valid", store.print(p));
        }
    }
    let print_sorted = |set: BTreeSet<StorePath>, shell: &mut Shell| -> Result<()> {
        // Nix prints references first.
        for p in store.topo_sort(&set)? {
            shell.println(store.print(&p))?;
        }
        Ok(())
    };
    match q {
        Query::Outputs => {
            for p in paths {
                if p.is_derivation() {
                    // Sorted by path, as Nix prints a path set.
                    let outs: BTreeSet<StorePath> =
                        store.derivation_outputs(p)?.into_values().collect();
                    for o in outs {
                        shell.println(store.print(&o))?;
                    }
                } else {
                    shell.println(store.print(p))?;
                }
            }
        }
        Query::References => {
            let mut set = BTreeSet::new();
            for p in paths {
                set.extend(store.references(p)?);
            }
            print_sorted(set, shell)?;
        }
        Query::Referrers => {
            let mut set = BTreeSet::new();
            for p in paths {
                set.extend(store.referrers(p)?);
            }
            print_sorted(set, shell)?;
        }
        Query::ReferrersClosure => {
            print_sorted(store.referrers_closure(paths.iter().cloned())?, shell)?;
        }
        Query::Requisites if !include_outputs => {
            for p in store.closure_sorted(paths)? {
                shell.println(store.print(&p))?;
            }
        }
        Query::Requisites => {
            print_sorted(
                store.closure(paths.iter().cloned(), include_outputs, false)?,
                shell,
            )?;
        }
        Query::Deriver => {
            for p in paths {
                match store.path_info(p)?.deriver {
                    Some(d) => shell.println(store.print(&d))?,
                    None => shell.println("unknown-deriver")?,
                }
            }
        }
        Query::Hash => {
            for p in paths {
                shell.println(store.path_info(p)?.nar_hash)?;
            }
        }
        Query::Size => {
            for p in paths {
                shell.println(store.path_info(p)?.nar_size)?;
            }
        }
        Query::Tree => {
            let mut done = BTreeSet::new();
            for p in paths {
                ops::print_tree(store, p, "", "", &mut done, shell)?;
            }
        }
        Query::Graph => ops::print_graph(store, paths, shell)?,
        Query::Roots => {
            let roots = ferrix_store::gc::find_roots(store, true)?;
            let wanted: BTreeSet<StorePath> = store.referrers_closure(paths.iter().cloned())?;
            for (root, links) in roots {
                if wanted.contains(&root) {
                    for l in links {
                        shell.println(format!("{l} -> {}", store.print(&root)))?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// `N`, or with a `K`/`M`/`G`/`T` suffix (powers of 1024), as `--max-freed` takes it.
fn parse_size(s: &str) -> Result<u64> {
    let (num, mul) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        Some('T' | 't') => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("'{s}' is not a size"))?;
    n.checked_mul(mul)
        .with_context(|| format!("'{s}' is too large"))
}

/// Unpack stdin into `target`; on a bad archive nothing is left behind.
fn restore(target: &Path) -> Result<()> {
    if std::fs::symlink_metadata(target).is_ok() {
        bail!(
            "cannot restore into '{}': it already exists",
            target.display()
        );
    }
    let stdin = std::io::stdin().lock();
    match nar::restore(BufReader::with_capacity(256 * 1024, stdin), target) {
        Ok(_) => Ok(()),
        Err(e) => {
            // We created `target` (it did not exist), so removing it is ours to do.
            let _ = std::fs::remove_dir_all(target).or_else(|_| std::fs::remove_file(target));
            Err(e.into())
        }
    }
}

/// Key files are written whole or not at all, the secret one readable by its owner only.
fn write_key(path: &Path, text: &str, mode: u32) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write()
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
        .with_context(|| format!("writing key file '{}'", path.display()))
}

/// `nix-store -r`: build the derivations among the arguments (all in one run), check the
/// other paths are valid, then print the output paths (or make `--add-root` links to them).
fn realise(
    settings: &Settings,
    store: &std::sync::Arc<LocalStore>,
    args: &[String],
    add_root: Option<&Path>,
    mode: crate::build::RunMode,
    shell: &mut Shell,
) -> Result<ExitCode> {
    let mut items: Vec<Vec<StorePath>> = Vec::new();
    let mut wanted = Vec::new();
    let mut paths = Vec::new();
    for a in args {
        let looks_like_drv = a.ends_with(".drv") || a.contains(".drv!") || a.contains(".drv^");
        if looks_like_drv {
            let w = crate::build::parse_installable(store, a)?;
            wanted.push(w);
            items.push(Vec::new());
        } else {
            let p = ops::resolve(store, a)?;
            paths.push(p.clone());
            items.push(vec![p]);
        }
    }
    let (plan, outcome) =
        crate::build::realise(settings, store.clone(), &wanted, &paths, mode, shell)?;
    if mode.dry_run {
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(o) = &outcome {
        if !o.success() {
            crate::build::report_failures(store, &plan, o, shell);
            return Ok(ExitCode::from(o.exit_status() as u8));
        }
    }
    let mut w = wanted.iter();
    let mut outputs: Vec<StorePath> = Vec::new();
    for item in items {
        if item.is_empty() {
            if let Some(w) = w.next() {
                // Nix prints a derivation's outputs as a set: in store path order.
                let outs: BTreeSet<StorePath> = crate::build::wanted_outputs(store, w)?
                    .into_values()
                    .collect();
                outputs.extend(outs);
            }
        } else {
            outputs.extend(item);
        }
    }
    for (i, p) in outputs.iter().enumerate() {
        match add_root {
            Some(link) => {
                let link = if outputs.len() > 1 {
                    PathBuf::from(format!("{}-{}", link.display(), i))
                } else {
                    link.to_owned()
                };
                let l = ferrix_store::gc::add_perm_root(store, p, &link)?;
                shell.println(l.display())?;
            }
            None => shell.println(store.print(p))?,
        }
    }
    Ok(ExitCode::SUCCESS)
}

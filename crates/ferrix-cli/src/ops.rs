//! Store operations shared by `nix-store`, `nix-collect-garbage` and the `ferrix` commands,
//! with the output Nix prints for them.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use ferrix_format::{FileIngestionMethod, Hash, HashAlgo, StorePath};
use ferrix_store::gc::{collect_garbage, GcAction, GcOptions};
use ferrix_store::{LocalStore, ValidPathInfo};

use crate::settings::Settings;
use crate::shell::Shell;

/// Add files or trees, each named after its last component, in batches.
pub fn add(
    store: &LocalStore,
    srcs: &[PathBuf],
    method: FileIngestionMethod,
    algo: HashAlgo,
) -> Result<Vec<StorePath>> {
    let mut named = Vec::with_capacity(srcs.len());
    for src in srcs {
        let name = src
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .with_context(|| {
                format!(
                    "'{}' has no file name to name a store path after",
                    src.display()
                )
            })?;
        named.push((src.clone(), name));
    }
    Ok(store.add_paths(&named, method, algo)?)
}

/// A store path from what a user typed: a store path, a path inside one, or a symlink (such
/// as `result`) that leads to one.
pub fn resolve(store: &LocalStore, arg: &str) -> Result<StorePath> {
    resolve_in(store.store_dir(), &store.config().real_store_dir, arg)
}

/// [`resolve`] for a store named by its directory and where its files are (a daemon's).
pub fn resolve_in(
    store_dir: &ferrix_format::StoreDir,
    real_store_dir: &Path,
    arg: &str,
) -> Result<StorePath> {
    let sd = store_dir.as_str();
    // Relative to the working directory, `.` and `..` taken lexically (Nix's `absPath`).
    let mut cur = lexical_abs(Path::new(arg));
    for _ in 0..40 {
        let s = cur.to_string_lossy().into_owned();
        if s.starts_with(sd) || s.starts_with(&*real_store_dir.to_string_lossy()) {
            let in_store = if s.starts_with(sd) {
                s.clone()
            } else {
                format!("{sd}{}", &s[real_store_dir.to_string_lossy().len()..])
            };
            let (p, _) = store_dir
                .parse_path_with_subpath(&in_store)
                .with_context(|| format!("'{arg}' is not a valid store path"))?;
            return Ok(p);
        }
        match std::fs::read_link(&cur) {
            Ok(t) => {
                cur = lexical_abs(&if t.is_absolute() {
                    t
                } else {
                    cur.parent().unwrap_or(Path::new("/")).join(t)
                })
            }
            Err(_) => bail!("path '{arg}' is not in the Nix store"),
        }
    }
    bail!("too many symlinks from '{arg}'")
}

/// `p` made absolute against the working directory, with `.` and `..` removed without
/// looking at the file system.
fn lexical_abs(p: &Path) -> std::path::PathBuf {
    use std::path::Component;
    let joined = match std::env::current_dir() {
        Ok(cwd) if p.is_relative() => cwd.join(p),
        _ => p.to_owned(),
    };
    let mut out = std::path::PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

pub fn resolve_all(store: &LocalStore, args: &[String]) -> Result<Vec<StorePath>> {
    args.iter().map(|a| resolve(store, a)).collect()
}

/// Repairs damaged paths (by building their derivers again): the paths it repaired.
pub type Repairer<'a> = &'a mut dyn FnMut(&[StorePath], &mut Shell) -> Result<BTreeSet<StorePath>>;

/// `nix-store --verify` / `ferrix store verify`: report problems, exit 1 when there are any
/// left; with a repairer (`--repair`), damaged and missing paths are repaired first.
pub fn verify(
    store: &LocalStore,
    check_contents: bool,
    repair: Option<Repairer<'_>>,
    only: Option<&[StorePath]>,
    shell: &mut Shell,
) -> Result<ExitCode> {
    if only.is_none() {
        shell.note("reading the Nix store...");
        shell.note("checking path existence...");
        if check_contents {
            shell.note("checking hashes...");
        }
    }
    let problems = ferrix_store::verify::verify_store(store, check_contents, only)?;
    let repaired: BTreeSet<StorePath> = match repair {
        Some(repair) => {
            let damaged: Vec<StorePath> = problems
                .iter()
                .filter_map(|p| match p {
                    ferrix_store::verify::Problem::Modified { path, .. }
                    | ferrix_store::verify::Problem::Missing {
                        path,
                        invalidated: false,
                    } => Some(path.clone()),
                    _ => None,
                })
                .collect();
            if damaged.is_empty() {
                BTreeSet::new()
            } else {
                repair(&damaged, shell)?
            }
        }
        None => BTreeSet::new(),
    };
    let mut bad = false;
    for p in &problems {
        let fatal = !matches!(
            p,
            ferrix_store::verify::Problem::Missing {
                invalidated: true,
                ..
            }
        );
        let path = match p {
            ferrix_store::verify::Problem::Missing { path, .. }
            | ferrix_store::verify::Problem::Modified { path, .. }
            | ferrix_store::verify::Problem::DanglingReference { path, .. } => path,
        };
        if fatal && repaired.contains(path) {
            shell.note(p.describe(store));
            shell.note(format!("repaired '{}'", store.print(path)));
        } else if fatal {
            bad = true;
            shell.error(p.describe(store));
        } else {
            shell.note(p.describe(store));
        }
    }
    Ok(if bad {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Says what an optimisation skipped, as Nix warns of it.
struct OptimiseWarnings<'a>(&'a mut Shell);

impl ferrix_store::optimise::OptimiseReporter for OptimiseWarnings<'_> {
    fn skipped(&mut self, path: &std::path::Path, why: &str) {
        self.0.warn(format!("skipping '{}': {why}", path.display()));
    }
    fn removed_corrupt_link(&mut self, link: &std::path::Path) {
        self.0.warn(format!(
            "removing corrupted link '{}'; there may be more corrupted paths: run 'nix-store --verify --check-contents --repair' to fix them all",
            link.display()
        ));
    }
}

/// `nix-store --optimise` / `ferrix store optimise`: hard-link identical files.
pub fn optimise(store: &LocalStore, shell: &mut Shell) -> Result<()> {
    let stats = ferrix_store::optimise::optimise_store(store, &mut OptimiseWarnings(shell))?;
    shell.note(format!(
        "{} freed by hard-linking {} files",
        mib(stats.bytes_freed),
        stats.files_linked
    ));
    Ok(())
}

/// `nix-store --load-db`: the `--dump-db` format (path, hash, size, deriver, count, refs).
pub fn load_db(store: &LocalStore, input: impl Read) -> Result<usize> {
    let mut lines = BufReader::new(input).lines();
    let mut next = |what: &str| -> Result<Option<String>> {
        match lines.next() {
            Some(l) => Ok(Some(l.with_context(|| format!("reading the {what}"))?)),
            None => Ok(None),
        }
    };
    let mut infos = Vec::new();
    while let Some(path) = next("path")? {
        if path.is_empty() {
            continue;
        }
        let p = store.parse_path(&path)?;
        let field = |v: Option<String>, what: &str| {
            v.with_context(|| format!("missing {what} for '{path}'"))
        };
        let hash = field(next("hash")?, "hash")?;
        let size = field(next("size")?, "size")?;
        let deriver = field(next("deriver")?, "deriver")?;
        let count: usize = field(next("reference count")?, "reference count")?
            .parse()
            .with_context(|| format!("bad reference count for '{path}'"))?;
        let mut info = ValidPathInfo::new(
            p,
            Hash::parse(&hash, Some(HashAlgo::Sha256))?,
            size.parse()
                .with_context(|| format!("bad size for '{path}'"))?,
        );
        if !deriver.is_empty() {
            info.deriver = Some(store.parse_path(&deriver)?);
        }
        for _ in 0..count {
            let r = field(next("reference")?, "reference")?;
            info.references.insert(store.parse_path(&r)?);
        }
        infos.push(info);
    }
    store.register_existing(&infos)?;
    Ok(infos.len())
}

pub fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Run a collection and print what Nix prints.
pub fn gc(
    store: &LocalStore,
    settings: &Settings,
    mut opts: GcOptions,
    shell: &mut Shell,
) -> Result<()> {
    opts.keep_outputs = settings.conf.bool("keep-outputs", false)?;
    opts.keep_derivations = settings.conf.bool("keep-derivations", true)?;
    if matches!(opts.action, GcAction::DeleteDead | GcAction::DeleteSpecific) {
        shell.note("finding garbage collector roots...");
        shell.note("deleting garbage...");
    }
    let r = collect_garbage(store, &opts)?;
    match opts.action {
        GcAction::ReturnLive | GcAction::ReturnDead => {
            for p in &r.paths {
                shell.println(store.print(p))?;
            }
        }
        GcAction::DeleteDead | GcAction::DeleteSpecific => {
            for p in &r.paths {
                shell.note(format!("deleting '{}'", store.print(p)));
            }
            shell.println(format!(
                "{} store paths deleted, {} freed",
                r.paths.len(),
                mib(r.bytes_freed)
            ))?;
        }
    }
    Ok(())
}

/// Run a collection through a daemon and print what a local one prints.
pub fn gc_through_daemon(
    d: &mut ferrix_store::worker_client::WorkerClient,
    action: ferrix_protocol::worker::GcAction,
    paths: &BTreeSet<StorePath>,
    max_freed: Option<u64>,
    shell: &mut Shell,
) -> Result<()> {
    use ferrix_protocol::worker::GcAction as A;
    let r = d.collect_garbage(action, paths, max_freed)?;
    match action {
        A::ReturnLive | A::ReturnDead => {
            for p in &r.paths {
                shell.println(p)?;
            }
        }
        A::DeleteDead | A::DeleteSpecific => {
            for p in &r.paths {
                shell.note(format!("deleting '{p}'"));
            }
            shell.println(format!(
                "{} store paths deleted, {} freed",
                r.paths.len(),
                mib(r.bytes_freed)
            ))?;
        }
    }
    Ok(())
}

/// `link -> path` for every root.
pub fn print_roots(store: &LocalStore, shell: &mut Shell) -> Result<()> {
    for (p, links) in ferrix_store::gc::find_roots(store, true)? {
        for l in links {
            shell.println(format!("{l} -> {}", store.print(&p)))?;
        }
    }
    Ok(())
}

/// `nix-store -q --tree`: the reference tree in box-drawing characters; repeats are `[...]`.
pub fn print_tree(
    store: &LocalStore,
    p: &StorePath,
    first: &str,
    tail: &str,
    done: &mut BTreeSet<StorePath>,
    shell: &mut Shell,
) -> Result<()> {
    let mut refs = |q: &StorePath| -> Result<BTreeSet<StorePath>> { Ok(store.references(q)?) };
    print_tree_with(store.store_dir(), &mut refs, p, first, tail, done, shell)
}

/// The references of a path, from wherever the store is.
pub type Refs<'a> = dyn FnMut(&StorePath) -> Result<BTreeSet<StorePath>> + 'a;

/// [`print_tree`] for a store whose references `refs` gives (a daemon's).
pub fn print_tree_with(
    sd: &ferrix_format::StoreDir,
    refs: &mut Refs<'_>,
    p: &StorePath,
    first: &str,
    tail: &str,
    done: &mut BTreeSet<StorePath>,
    shell: &mut Shell,
) -> Result<()> {
    if done.contains(p) {
        shell.println(format!("{first}{} [...]", sd.display(p)))?;
        return Ok(());
    }
    done.insert(p.clone());
    shell.println(format!("{first}{}", sd.display(p)))?;
    let mine: BTreeSet<StorePath> = refs(p)?.into_iter().filter(|r| r != p).collect();
    // Among them, each one's references, to order them (references first, as Nix does).
    let mut among = std::collections::HashMap::new();
    for r in &mine {
        let theirs: Vec<StorePath> = refs(r)?.into_iter().filter(|x| mine.contains(x)).collect();
        among.insert(r.clone(), theirs);
    }
    let mut sorted = ferrix_store::closure::topo_sort(sd, &mine, |q| {
        Ok(among.get(q).cloned().unwrap_or_default())
    })?;
    sorted.reverse();
    let n = sorted.len();
    for (i, r) in sorted.iter().enumerate() {
        let last = i + 1 == n;
        print_tree_with(
            sd,
            refs,
            r,
            &format!("{tail}{}", if last { "└───" } else { "├───" }),
            &format!("{tail}{}", if last { "    " } else { "│   " }),
            done,
            shell,
        )?;
    }
    Ok(())
}

const EDGE_COLOURS: [&str; 6] = ["black", "red", "green", "blue", "magenta", "burlywood"];

/// `nix-store -q --graph`: the closure of `roots` as a Graphviz digraph, walked and coloured
/// as Nix does (smallest pending path first).
pub fn print_graph(store: &LocalStore, roots: &[StorePath], shell: &mut Shell) -> Result<()> {
    let mut refs = |q: &StorePath| -> Result<BTreeSet<StorePath>> { Ok(store.references(q)?) };
    print_graph_with(&mut refs, roots, shell)
}

/// [`print_graph`] for a store whose references `refs` gives (a daemon's).
pub fn print_graph_with(refs: &mut Refs<'_>, roots: &[StorePath], shell: &mut Shell) -> Result<()> {
    let mut work: BTreeSet<StorePath> = roots.iter().cloned().collect();
    let mut done = BTreeSet::new();
    let mut edges = 0;
    shell.println("digraph G {")?;
    while let Some(p) = work.pop_first() {
        if !done.insert(p.clone()) {
            continue;
        }
        shell.println(format!(
            "\"{p}\" [label = \"{}\", shape = box, style = filled, fillcolor = \"#ff0000\"];",
            p.name()
        ))?;
        for r in refs(&p)? {
            if r != p {
                // Edge colours cycle through Nix's palette, so the text matches Nix's.
                let colour = EDGE_COLOURS[edges % EDGE_COLOURS.len()];
                edges += 1;
                shell.println(format!("\"{r}\" -> \"{p}\" [color = \"{colour}\"];"))?;
                work.insert(r);
            }
        }
    }
    shell.println("}")?;
    Ok(())
}

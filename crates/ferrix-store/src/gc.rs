//! Garbage collection: roots (permanent, runtime, temporary), the live set, deleting the rest.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use ferrix_format::StorePath;

use crate::error::{io_err, Result, StoreError};
use crate::fsutil::delete_path;
use crate::local::LocalStore;
use crate::lock::FileLock;

/// What a collection does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcAction {
    /// Report the live paths.
    ReturnLive,
    /// Report the dead paths.
    ReturnDead,
    /// Delete every dead path (and every store entry that is not a valid path).
    DeleteDead,
    /// Delete exactly the given paths, refusing live ones.
    DeleteSpecific,
}

/// How to collect.
#[derive(Debug, Clone)]
pub struct GcOptions {
    pub action: GcAction,
    /// For `DeleteSpecific`.
    pub paths: BTreeSet<StorePath>,
    /// Stop after freeing this many bytes.
    pub max_freed: Option<u64>,
    /// Live derivations keep their outputs alive (Nix default: false).
    pub keep_outputs: bool,
    /// Live outputs keep their derivations alive (Nix default: true).
    pub keep_derivations: bool,
    /// Ignore roots entirely (only with `DeleteSpecific`).
    pub ignore_liveness: bool,
}

impl GcOptions {
    pub fn new(action: GcAction) -> Self {
        Self {
            action,
            paths: BTreeSet::new(),
            max_freed: None,
            keep_outputs: false,
            keep_derivations: true,
            ignore_liveness: false,
        }
    }
}

/// What a collection found or did.
#[derive(Debug, Default)]
pub struct GcResults {
    /// Live, dead or deleted paths, by action.
    pub paths: Vec<StorePath>,
    pub bytes_freed: u64,
}

/// Roots: each root path with the places (links, files, processes) that hold it.
pub type Roots = BTreeMap<StorePath, BTreeSet<String>>;

/// Permanent roots under `<state>/gcroots` and `<state>/profiles`, plus runtime roots.
pub fn find_roots(store: &LocalStore, runtime: bool) -> Result<Roots> {
    let mut roots = Roots::new();
    let state = &store.config().state_dir;
    for d in [state.join("gcroots"), state.join("profiles")] {
        scan_roots(store, &d, &mut roots, 0)?;
    }
    if runtime {
        runtime_roots(store, &mut roots);
    }
    Ok(roots)
}

/// Resolve a symlink target that lies in the store to its store path.
fn store_path_in(store: &LocalStore, target: &Path) -> Option<StorePath> {
    let s = target.to_str()?;
    let sd = store.store_dir().as_str();
    let real = store.config().real_store_dir.to_str()?;
    let rest = s
        .strip_prefix(sd)
        .or_else(|| s.strip_prefix(real))?
        .strip_prefix('/')?;
    let base = rest.split('/').next()?;
    StorePath::from_base_name(base).ok()
}

fn scan_roots(store: &LocalStore, dir: &Path, roots: &mut Roots, depth: u32) -> Result<()> {
    if depth > 32 {
        return Ok(());
    }
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        // Missing or unreadable root directories are not fatal, as in Nix.
        Err(_) => return Ok(()),
    };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            scan_roots(store, &p, roots, depth + 1)?;
        } else if ft.is_symlink() {
            let Ok(target) = fs::read_link(&p) else {
                continue;
            };
            let target = if target.is_absolute() {
                target
            } else {
                dir.join(target)
            };
            if let Some(sp) = store_path_in(store, &target) {
                add_if_valid(store, roots, sp, &p)?;
            } else if let Ok(t2) = fs::read_link(&target) {
                // An indirect root: a link to a link (e.g. `result`) that points into the store.
                let t2 = if t2.is_absolute() {
                    t2
                } else {
                    target.parent().unwrap_or(Path::new("/")).join(t2)
                };
                if let Some(sp) = store_path_in(store, &t2) {
                    add_if_valid(store, roots, sp, &target)?;
                }
            } else if fs::symlink_metadata(&target).is_err()
                && p.starts_with(store.config().state_dir.join("gcroots/auto"))
            {
                // The link it stood for is gone.
                let _ = fs::remove_file(&p);
            }
        } else if ft.is_file() {
            let name = e.file_name();
            if let Ok(sp) = StorePath::from_base_name(&name.to_string_lossy()) {
                add_if_valid(store, roots, sp, &p)?;
            }
        }
    }
    Ok(())
}

fn add_if_valid(store: &LocalStore, roots: &mut Roots, sp: StorePath, from: &Path) -> Result<()> {
    if store.is_valid_path(&sp)? {
        roots
            .entry(sp)
            .or_default()
            .insert(from.display().to_string());
    }
    Ok(())
}

/// Store paths held by running processes: executables, cwd, open files, maps, environment.
fn runtime_roots(store: &LocalStore, roots: &mut Roots) {
    let Ok(procs) = fs::read_dir("/proc") else {
        return;
    };
    let sd = store.store_dir().as_str().as_bytes().to_vec();
    let real = store
        .config()
        .real_store_dir
        .as_os_str()
        .as_bytes()
        .to_vec();
    let mut found: BTreeMap<StorePath, String> = BTreeMap::new();
    for e in procs.flatten() {
        let name = e.file_name();
        if !name.as_bytes().iter().all(u8::is_ascii_digit) {
            continue;
        }
        let pdir = e.path();
        let label = format!("{{pid {}}}", name.to_string_lossy());
        let mut links: Vec<PathBuf> = vec![pdir.join("exe"), pdir.join("cwd")];
        if let Ok(fds) = fs::read_dir(pdir.join("fd")) {
            links.extend(fds.flatten().map(|f| f.path()));
        }
        for l in links {
            if let Ok(t) = fs::read_link(&l) {
                if let Some(sp) = store_path_in(store, &t) {
                    found.insert(sp, label.clone());
                }
            }
        }
        for f in ["maps", "environ"] {
            if let Ok(text) = fs::read(pdir.join(f)) {
                for prefix in [&sd, &real] {
                    for sp in scan_for_paths(&text, prefix) {
                        found.insert(sp, label.clone());
                    }
                }
            }
        }
    }
    for (sp, label) in found {
        if store.is_valid_path(&sp).unwrap_or(false) {
            roots.entry(sp).or_default().insert(label);
        }
    }
}

/// Every `<prefix>/<hash>-<name>` in a blob.
fn scan_for_paths(text: &[u8], prefix: &[u8]) -> Vec<StorePath> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(pos) = find(&text[i..], prefix) {
        let start = i + pos + prefix.len();
        i = start;
        if text.get(start) != Some(&b'/') {
            continue;
        }
        let rest = &text[start + 1..];
        let end = rest
            .iter()
            .position(|&c| !(c.is_ascii_alphanumeric() || b"+-._?=".contains(&c)))
            .unwrap_or(rest.len());
        if let Ok(s) = std::str::from_utf8(&rest[..end]) {
            if let Ok(sp) = StorePath::from_base_name(s) {
                out.push(sp);
            }
        }
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Serves `<state>/gc-socket/socket` while a collection runs: each line is a store path that
/// a process is about to create or use; its hash part joins the roots, then `1` is sent back.
/// Deletions happen with `roots` locked, so a path is either deleted before its root arrives
/// (and its user, checking validity afterwards, sees it gone) or kept.
struct RootServer {
    roots: Arc<Mutex<HashSet<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    socket: PathBuf,
}

impl RootServer {
    fn start(state: &Path) -> Result<Self> {
        let socket = state.join(crate::temproots::GC_SOCKET);
        if let Some(dir) = socket.parent() {
            fs::create_dir_all(dir).map_err(io_err("creating directory", dir))?;
        }
        let _ = fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).map_err(io_err("listening on", &socket))?;
        listener
            .set_nonblocking(true)
            .map_err(io_err("listening on", &socket))?;
        let roots: Arc<Mutex<HashSet<String>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (roots.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let r = r.clone();
                        std::thread::spawn(move || serve_roots(conn, &r));
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(1)),
                }
            }
        });
        Ok(Self {
            roots,
            stop,
            thread: Some(thread),
            socket,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.roots.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for RootServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = fs::remove_file(&self.socket);
    }
}

fn serve_roots(conn: UnixStream, roots: &Mutex<HashSet<String>>) {
    use std::io::{BufRead, BufReader, Write};
    let _ = conn.set_nonblocking(false);
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    for line in BufReader::new(conn).lines() {
        let Ok(line) = line else { return };
        let base = line.rsplit('/').next().unwrap_or("");
        if let Some(hash) = base.get(..32) {
            roots
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(hash.to_owned());
        }
        if out.write_all(b"1").is_err() {
            return;
        }
    }
}

/// Run a collection. Holds `<state>/gc.lock` exclusively throughout; processes that need a
/// temp root meanwhile send it through the collector's socket instead of waiting.
pub fn collect_garbage(store: &LocalStore, opts: &GcOptions) -> Result<GcResults> {
    let state = &store.config().state_dir;
    let _gc_lock = FileLock::acquire(&state.join("gc.lock"), false, true)?;
    let server = RootServer::start(state)?;
    let graph = store.db().reference_graph()?;

    let mut root_set: HashSet<StorePath> = HashSet::new();
    let mut root_of: HashMap<StorePath, String> = HashMap::new();
    if !opts.ignore_liveness {
        for (p, from) in find_roots(store, true)? {
            root_of.insert(p.clone(), from.into_iter().next().unwrap_or_default());
            root_set.insert(p);
        }
    }
    // Temp roots count by hash part, so a path being created keeps its lock file too.
    let mut temp_hashes: HashSet<String> = HashSet::new();
    for t in crate::temproots::read_all(state)? {
        if let Ok(p) = store.parse_path(&t) {
            temp_hashes.insert(p.hash_part().to_owned());
            if graph.contains_key(&p) && !opts.ignore_liveness {
                root_of
                    .entry(p.clone())
                    .or_insert_with(|| "{temp root}".into());
                root_set.insert(p);
            }
        }
    }

    // The live set: everything reachable from a root.
    let mut live: HashSet<StorePath> = HashSet::new();
    let mut todo: Vec<StorePath> = root_set.iter().cloned().collect();
    // Extra edges: outputs keep their derivation alive, derivations their outputs.
    let mut derivers: HashMap<StorePath, Vec<StorePath>> = HashMap::new();
    if opts.keep_derivations {
        for (p, d) in store.db().derivers()? {
            derivers.entry(p).or_default().push(d);
        }
    }
    if opts.keep_outputs {
        for p in graph.keys().filter(|p| p.is_derivation()) {
            for o in store.derivation_outputs(p)?.into_values() {
                if graph.contains_key(&o) {
                    derivers.entry(p.clone()).or_default().push(o);
                }
            }
        }
    }
    while let Some(p) = todo.pop() {
        if !live.insert(p.clone()) {
            continue;
        }
        if let Some(refs) = graph.get(&p) {
            todo.extend(refs.iter().filter(|r| !live.contains(*r)).cloned());
        }
        if let Some(extra) = derivers.get(&p) {
            todo.extend(extra.iter().filter(|r| !live.contains(*r)).cloned());
        }
    }

    let mut results = GcResults::default();
    match opts.action {
        GcAction::ReturnLive => {
            let mut v: Vec<_> = live.into_iter().collect();
            v.sort();
            results.paths = v;
            return Ok(results);
        }
        GcAction::ReturnDead => {
            let mut v: Vec<_> = graph
                .keys()
                .filter(|p| !live.contains(*p))
                .cloned()
                .collect();
            v.sort();
            results.paths = v;
            return Ok(results);
        }
        GcAction::DeleteSpecific => {
            for p in &opts.paths {
                if !graph.contains_key(p) {
                    continue;
                }
                if live.contains(p) {
                    // Name a root it is reachable from, so the user can act on it.
                    let root = root_set
                        .iter()
                        .find(|r| reaches(&graph, r, p))
                        .and_then(|r| root_of.get(r).cloned())
                        .unwrap_or_default();
                    return Err(StoreError::Alive {
                        path: store.print(p),
                        root,
                    });
                }
            }
            let set: BTreeSet<StorePath> = opts
                .paths
                .iter()
                .filter(|p| graph.contains_key(*p))
                .cloned()
                .collect();
            let order = crate::closure::referrers_first(store.store_dir(), &set, &graph)?;
            let roots = server.lock();
            if let Some(p) = order.iter().find(|p| roots.contains(p.hash_part())) {
                return Err(StoreError::Alive {
                    path: store.print(p),
                    root: "{temp root}".into(),
                });
            }
            results.bytes_freed += store.invalidate_and_delete(&order)?;
            results.paths = order;
            crate::optimise::remove_unused_links(store)?;
            return Ok(results);
        }
        GcAction::DeleteDead => {}
    }

    let dead: BTreeSet<StorePath> = graph
        .keys()
        .filter(|p| !live.contains(*p))
        .cloned()
        .collect();
    // In chunks: one transaction each, a check of --max-freed between them, and roots that
    // arrived meanwhile protecting their paths and everything those refer to.
    let order = crate::closure::referrers_first(store.store_dir(), &dead, &graph)?;
    let by_hash: HashMap<&str, &StorePath> = order.iter().map(|p| (p.hash_part(), p)).collect();
    let mut protected: HashSet<StorePath> = HashSet::new();
    let mut seen_roots: HashSet<String> = HashSet::new();
    let chunk = if opts.max_freed.is_some() { 16 } else { 512 };
    for part in order.chunks(chunk) {
        if opts.max_freed.is_some_and(|m| results.bytes_freed >= m) {
            return Ok(results);
        }
        let roots = server.lock();
        for h in roots.iter() {
            if seen_roots.insert(h.clone()) {
                if let Some(p) = by_hash.get(h.as_str()) {
                    let mut todo = vec![(*p).clone()];
                    while let Some(q) = todo.pop() {
                        if dead.contains(&q) && protected.insert(q.clone()) {
                            todo.extend(graph.get(&q).into_iter().flatten().cloned());
                        }
                    }
                }
            }
        }
        let part: Vec<StorePath> = part
            .iter()
            .filter(|p| !protected.contains(*p))
            .cloned()
            .collect();
        results.bytes_freed += store.invalidate_and_delete(&part)?;
        results.paths.extend(part);
        drop(roots);
    }
    let protected_hashes: HashSet<&str> = protected.iter().map(|p| p.hash_part()).collect();
    // Store entries that are not valid paths: leftovers and junk. Skip what a live process
    // is creating (temp roots by hash part) and our own staging area.
    let real = &store.config().real_store_dir;
    for e in fs::read_dir(real).map_err(io_err("reading directory", real))? {
        let e = e.map_err(io_err("reading directory", real))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let hash = name.get(..32).unwrap_or("");
        if temp_hashes.contains(hash) || protected_hashes.contains(hash) {
            continue;
        }
        let roots = server.lock();
        if roots.contains(hash) {
            continue;
        }
        // What is left valid now is exactly the live set (the dead were deleted above).
        if let Ok(sp) = StorePath::from_base_name(&name) {
            if live.contains(&sp) {
                continue;
            }
        }
        if opts.max_freed.is_some_and(|m| results.bytes_freed >= m) {
            break;
        }
        results.bytes_freed += delete_path(&e.path())?;
        drop(roots);
    }
    crate::optimise::remove_unused_links(store)?;
    Ok(results)
}

fn reaches(graph: &HashMap<StorePath, Vec<StorePath>>, from: &StorePath, to: &StorePath) -> bool {
    let mut seen = HashSet::new();
    let mut todo = vec![from.clone()];
    while let Some(p) = todo.pop() {
        if p == *to {
            return true;
        }
        if seen.insert(p.clone()) {
            if let Some(r) = graph.get(&p) {
                todo.extend(r.iter().cloned());
            }
        }
    }
    false
}

/// Make `link` a symlink to `p` and register it as an indirect root (`--add-root`,
/// `nix-build -o`): `<state>/gcroots/auto/<nix32(sha1(link))>` points at `link`.
pub fn add_perm_root(store: &LocalStore, p: &StorePath, link: &Path) -> Result<PathBuf> {
    let link = if link.is_absolute() {
        link.to_owned()
    } else {
        std::env::current_dir()
            .map_err(io_err("finding the current directory", "."))?
            .join(link)
    };
    if link.starts_with(&store.config().real_store_dir)
        || link.starts_with(store.store_dir().as_str())
    {
        return Err(StoreError::Format(format!(
            "creating a garbage collector root ({}) in the Nix store is forbidden",
            link.display()
        )));
    }
    match fs::symlink_metadata(&link) {
        Ok(m) if m.file_type().is_symlink() => {
            let target = fs::read_link(&link).map_err(io_err("reading", &link))?;
            if store_path_in(store, &target).is_none() {
                return Err(StoreError::Format(format!(
                    "cannot create symlink '{}'; already exists",
                    link.display()
                )));
            }
        }
        Ok(_) => {
            return Err(StoreError::Format(format!(
                "cannot create symlink '{}'; already exists",
                link.display()
            )))
        }
        Err(_) => {}
    }
    replace_symlink(Path::new(&store.print(p)), &link)?;
    add_indirect_root(store, &link)?;
    Ok(link)
}

/// Register `link`, a symlink to a store path elsewhere (a client's `result`), as an
/// indirect root: `<state>/gcroots/auto/<nix32(sha1(link))>` points at it. The link itself
/// is the client's to make.
pub fn add_indirect_root(store: &LocalStore, link: &Path) -> Result<()> {
    if !link.is_absolute() {
        return Err(StoreError::Format(format!(
            "the indirect root '{}' is not an absolute path",
            link.display()
        )));
    }
    let auto = store.config().state_dir.join("gcroots/auto");
    fs::create_dir_all(&auto).map_err(io_err("creating directory", &auto))?;
    let h = ferrix_format::Hash::of(ferrix_format::HashAlgo::Sha1, link.as_os_str().as_bytes());
    replace_symlink(link, &auto.join(h.to_nix32()))
}

/// Atomically point `link` at `target`.
fn replace_symlink(target: &Path, link: &Path) -> Result<()> {
    let tmp = link.with_file_name(format!(
        ".{}.tmp-{}",
        link.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(io_err("creating symlink", &tmp))?;
    fs::rename(&tmp, link).map_err(io_err("creating symlink", link))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_paths_in_blobs() {
        let text = b"x /nix/store/0g1savw1cf7pji42hasyx0smc4aw15nw-t.txt/bin:/nix/store/short y";
        let v = scan_for_paths(text, b"/nix/store");
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].name(), "t.txt");
    }
}

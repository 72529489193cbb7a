//! `ferrix path-info`: what the store (or, with `--store file://…|http(s)://…`, a binary
//! cache; with `--store daemon|unix://…`, a daemon) knows about paths, as text or JSON.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};
use ferrix_format::json::Json;
use ferrix_format::{NarInfo, StoreDir, StorePath};
use ferrix_store::path_info::ValidPathInfo;

use crate::ops;
use crate::settings::Settings;
use crate::shell::Shell;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the information as JSON.
    #[arg(long)]
    json: bool,
    /// Apply to the closure of the paths.
    #[arg(short = 'r', long)]
    recursive: bool,
    /// Print the NAR size of each path.
    #[arg(short = 's', long)]
    size: bool,
    /// Print the size of each path's closure.
    #[arg(short = 'S', long)]
    closure_size: bool,
    /// Show signatures.
    #[arg(long)]
    sigs: bool,
    /// All valid paths.
    #[arg(long)]
    all: bool,
    /// A `.drv` argument means the derivation itself, not its outputs.
    #[arg(long)]
    derivation: bool,
    paths: Vec<String>,
}

pub fn run(a: Args, settings: &Settings, shell: &mut Shell) -> Result<()> {
    if let Some(url) = settings.cache_url() {
        return run_on_cache(a, settings, url, shell);
    }
    if let Some((url, _)) = settings.daemon() {
        let url = url.to_owned();
        return run_on_daemon(a, settings, &url, shell);
    }
    let store = settings.open_store()?;
    let mut paths: BTreeSet<StorePath> = BTreeSet::new();
    if a.all {
        paths.extend(store.all_valid_paths()?);
    }
    for p in ops::resolve_all(&store, &a.paths)? {
        // As in Nix, a derivation stands for its outputs unless --derivation is given.
        if p.is_derivation() && !a.derivation && store.is_valid_path(&p)? {
            paths.extend(store.derivation_outputs(&p)?.into_values());
        } else {
            paths.insert(p);
        }
    }
    for p in &paths {
        if !store.is_valid_path(p)? {
            anyhow::bail!("path '{}' is not valid", store.print(p));
        }
    }
    if a.recursive {
        paths = store.closure(paths, false, false)?;
    }
    show(&a, &store, &paths, shell)
}

/// What `path-info` shows paths from: the local store, or the narinfos of a binary cache.
trait Infos {
    fn info(&self, p: &StorePath) -> Result<ValidPathInfo>;
    fn print(&self, p: &StorePath) -> String;
    fn closure(&self, p: &StorePath) -> Result<BTreeSet<StorePath>>;
    fn topo_sort(&self, paths: &BTreeSet<StorePath>) -> Result<Vec<StorePath>>;
    /// Where a cache keeps the path's NAR: (url, compression, file hash, file size).
    fn download(&self, _p: &StorePath) -> Option<&NarInfo> {
        None
    }
}

impl Infos for ferrix_store::LocalStore {
    fn info(&self, p: &StorePath) -> Result<ValidPathInfo> {
        Ok(self.path_info(p)?)
    }
    fn print(&self, p: &StorePath) -> String {
        ferrix_store::LocalStore::print(self, p)
    }
    fn closure(&self, p: &StorePath) -> Result<BTreeSet<StorePath>> {
        Ok(ferrix_store::LocalStore::closure(
            self,
            [p.clone()],
            false,
            false,
        )?)
    }
    fn topo_sort(&self, paths: &BTreeSet<StorePath>) -> Result<Vec<StorePath>> {
        Ok(ferrix_store::LocalStore::topo_sort(self, paths)?)
    }
}

/// What was read of paths elsewhere (a binary cache's narinfos, a daemon's path infos):
/// every path asked and, with `-r` or `-S`, the closures of them.
struct Fetched {
    store_dir: StoreDir,
    infos: BTreeMap<StorePath, ValidPathInfo>,
    /// A cache's narinfos, for where it keeps the NARs.
    narinfos: BTreeMap<StorePath, NarInfo>,
}

impl Fetched {
    /// Read `paths` (and with `deep` their closures) through `fetch`, which gives a path's
    /// info (and narinfo), or nothing for a path that is not valid there.
    fn read(
        store_dir: StoreDir,
        paths: &BTreeSet<StorePath>,
        deep: bool,
        mut fetch: impl FnMut(&StorePath) -> Result<Option<(ValidPathInfo, Option<NarInfo>)>>,
    ) -> Result<Fetched> {
        let mut f = Fetched {
            store_dir,
            infos: BTreeMap::new(),
            narinfos: BTreeMap::new(),
        };
        // The paths asked, then (for -r and -S) their references, round by round.
        let mut todo: Vec<StorePath> = paths.iter().cloned().collect();
        while let Some(p) = todo.pop() {
            if f.infos.contains_key(&p) {
                continue;
            }
            let Some((info, narinfo)) = fetch(&p)? else {
                anyhow::bail!("path '{}' is not valid", f.store_dir.display(&p));
            };
            if deep {
                todo.extend(info.references.iter().filter(|r| **r != p).cloned());
            }
            if let Some(n) = narinfo {
                f.narinfos.insert(p.clone(), n);
            }
            f.infos.insert(p, info);
        }
        Ok(f)
    }

    fn refs(&self, q: &StorePath) -> Vec<StorePath> {
        self.infos
            .get(q)
            .map(|i| i.references.iter().cloned().collect())
            .unwrap_or_default()
    }
}

impl Infos for Fetched {
    fn info(&self, p: &StorePath) -> Result<ValidPathInfo> {
        self.infos
            .get(p)
            .cloned()
            .with_context(|| format!("path '{}' is not valid", self.store_dir.display(p)))
    }
    fn print(&self, p: &StorePath) -> String {
        self.store_dir.display(p)
    }
    fn closure(&self, p: &StorePath) -> Result<BTreeSet<StorePath>> {
        Ok(ferrix_store::closure::closure([p.clone()], |q| {
            Ok(self.refs(q))
        })?)
    }
    fn topo_sort(&self, paths: &BTreeSet<StorePath>) -> Result<Vec<StorePath>> {
        Ok(ferrix_store::closure::topo_sort(
            &self.store_dir,
            paths,
            |q| Ok(self.refs(q)),
        )?)
    }
    fn download(&self, p: &StorePath) -> Option<&NarInfo> {
        self.narinfos.get(p)
    }
}

/// `path-info --store file://…|http(s)://…`: the cache's narinfos (believed whatever their
/// signatures, as Nix shows them), through the narinfo disk cache for HTTP.
fn run_on_cache(a: Args, settings: &Settings, url: &str, shell: &mut Shell) -> Result<()> {
    if a.all {
        anyhow::bail!("'--all' cannot list the paths of the binary cache '{url}'");
    }
    let sd = settings.store_dir().clone();
    let subst = settings.substitution()?;
    let http = url
        .starts_with("http")
        .then(|| subst.http_client(&[url]))
        .transpose()?;
    let disk = url
        .starts_with("http")
        .then(|| subst.disk_cache(shell))
        .flatten();
    let trust = ferrix_store::binary_cache::Trust {
        keys: Vec::new(),
        require_sigs: false,
    };
    let cache = ferrix_store::binary_cache::CacheSource::open(
        url,
        &sd,
        trust,
        http.as_ref(),
        disk.as_ref(),
    )
    .with_context(|| format!("opening the binary cache '{url}'"))?;
    let paths = parse_paths(&sd, &a.paths)?;
    let f = Fetched::read(sd.clone(), &paths, a.recursive || a.closure_size, |p| {
        Ok(cache.narinfo(&sd, p)?.map(|n| {
            let mut i = ValidPathInfo::new(p.clone(), n.nar_hash, n.nar_size);
            i.references = n.references.clone();
            i.deriver = n.deriver.clone();
            i.ca = n.ca;
            i.sigs = n.sigs.iter().map(|s| s.to_string()).collect();
            (i, Some(n))
        }))
    })?;
    show_fetched(&a, f, paths, shell)
}

/// `path-info --store daemon|unix://…`: what the daemon records.
fn run_on_daemon(a: Args, settings: &Settings, url: &str, shell: &mut Shell) -> Result<()> {
    if a.all {
        anyhow::bail!("'--all' is not supported through the daemon '{url}' yet");
    }
    let sd = settings.store_dir().clone();
    let mut client = crate::stores::connect_daemon(url, settings)?;
    let paths = parse_paths(&sd, &a.paths)?;
    let f = Fetched::read(sd, &paths, a.recursive || a.closure_size, |p| {
        Ok(client.query_path_info(p)?.map(|u| {
            let mut i = ValidPathInfo::new(p.clone(), u.nar_hash, u.nar_size);
            i.references = u.references;
            i.deriver = u.deriver;
            i.ca = u.ca;
            i.sigs = u.sigs;
            i.ultimate = u.ultimate;
            i.registration_time = i64::try_from(u.registration_time).unwrap_or(0);
            (i, None)
        }))
    })?;
    show_fetched(&a, f, paths, shell)
}

/// Store paths named on the command line (a path inside one stands for it).
fn parse_paths(sd: &StoreDir, args: &[String]) -> Result<BTreeSet<StorePath>> {
    args.iter()
        .map(|arg| {
            sd.parse_path_with_subpath(arg)
                .map(|(p, _)| p)
                .with_context(|| format!("'{arg}' is not a store path"))
        })
        .collect()
}

/// Show `paths` (and with `-r` their closures) from what was fetched.
fn show_fetched(
    a: &Args,
    f: Fetched,
    mut paths: BTreeSet<StorePath>,
    shell: &mut Shell,
) -> Result<()> {
    if a.recursive {
        let mut all = BTreeSet::new();
        for p in &paths {
            all.extend(f.closure(p)?);
        }
        paths = all;
    }
    show(a, &f, &paths, shell)
}

/// Print what is known of `paths`, as text or JSON.
fn show(a: &Args, store: &dyn Infos, paths: &BTreeSet<StorePath>, shell: &mut Shell) -> Result<()> {
    let closure_size = |p: &StorePath| -> Result<u64> {
        let mut n = 0;
        for q in store.closure(p)? {
            n += store.info(&q)?.nar_size;
        }
        Ok(n)
    };
    if a.json {
        let mut items = Vec::new();
        for p in paths {
            let info = store.info(p)?;
            // Nix's keys, in Nix's order.
            let mut f = vec![
                ("path".to_owned(), Json::String(store.print(p))),
                ("narHash".to_owned(), Json::String(info.nar_hash.to_sri())),
                ("narSize".to_owned(), Json::Int(info.nar_size as i64)),
                (
                    "references".to_owned(),
                    Json::Array(
                        info.references
                            .iter()
                            .map(|r| Json::String(store.print(r)))
                            .collect(),
                    ),
                ),
            ];
            if let Some(ca) = &info.ca {
                f.push(("ca".to_owned(), Json::String(ca.to_string())));
            }
            if a.closure_size {
                f.push(("closureSize".to_owned(), Json::Int(closure_size(p)? as i64)));
            }
            if let Some(d) = &info.deriver {
                f.push(("deriver".to_owned(), Json::String(store.print(d))));
            }
            if info.registration_time != 0 {
                f.push((
                    "registrationTime".to_owned(),
                    Json::Int(info.registration_time),
                ));
            }
            if info.ultimate {
                f.push(("ultimate".to_owned(), Json::Bool(true)));
            }
            if !info.sigs.is_empty() {
                f.push((
                    "signatures".to_owned(),
                    Json::Array(info.sigs.iter().map(|s| Json::String(s.clone())).collect()),
                ));
            }
            if let Some(n) = store.download(p) {
                f.push(("url".to_owned(), Json::String(n.url.clone())));
                f.push((
                    "compression".to_owned(),
                    Json::String(n.compression.clone()),
                ));
                if let Some(h) = &n.file_hash {
                    f.push(("downloadHash".to_owned(), Json::String(h.to_sri())));
                }
                if let Some(s) = n.file_size {
                    f.push(("downloadSize".to_owned(), Json::Int(s as i64)));
                }
            }
            items.push(Json::Object(f));
        }
        shell.print(Json::Array(items).compact())?;
        return Ok(());
    }
    let width = paths
        .iter()
        .map(|p| store.print(p).len())
        .max()
        .unwrap_or(0);
    // Text comes references first, as Nix lists paths; JSON stays sorted by path.
    for p in &store.topo_sort(paths)? {
        let s = store.print(p);
        let mut line = s.clone();
        if a.size || a.closure_size || a.sigs {
            line.push_str(&" ".repeat(width - s.len()));
        }
        if a.size {
            line.push_str(&format!("\t{:>11}", store.info(p)?.nar_size));
        }
        if a.closure_size {
            line.push_str(&format!("\t{:>11}", closure_size(p)?));
        }
        if a.sigs {
            let info = store.info(p)?;
            line.push('\t');
            let mut sigs: Vec<String> = Vec::new();
            if info.ultimate {
                sigs.push("ultimate".into());
            }
            if let Some(ca) = &info.ca {
                sigs.push(format!("ca:{ca}"));
            }
            sigs.extend(info.sigs.iter().cloned());
            line.push_str(&sigs.join(" "));
        }
        shell.println(line)?;
    }
    Ok(())
}

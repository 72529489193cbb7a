//! `ferrix derivation show` (and `show-derivation`): the JSON form of `.drv` files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use ferrix_format::derivation::drv_name;
use ferrix_format::json::Json;
use ferrix_format::{Derivation, StoreDir, StorePath};

use crate::settings::Settings;
use crate::shell::Shell;

#[derive(Debug, Subcommand)]
pub enum DerivationCommand {
    /// Show the contents of derivations as JSON.
    Show(ShowArgs),
    /// Add a derivation, given as JSON on standard input (the form `show` prints, one
    /// derivation's object); missing output paths are computed. Prints its store path.
    Add,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Include the input derivations, recursively.
    #[arg(short = 'r', long)]
    recursive: bool,
    /// `.drv` files, in the store or anywhere else.
    #[arg(required = true)]
    drvs: Vec<PathBuf>,
}

/// The store directory a `.drv`'s own paths live in: its first output path's directory.
fn infer_store_dir(text: &[u8]) -> Option<StoreDir> {
    let s = std::str::from_utf8(text).ok()?;
    let rest = s.strip_prefix("Derive([(\"")?;
    let (_, rest) = rest.split_once("\",\"")?;
    let (path, _) = rest.split_once('"')?;
    let (dir, _) = path.rsplit_once('/')?;
    StoreDir::new(dir).ok()
}

struct Loaded {
    key: String,
    drv: Derivation,
    store_dir: StoreDir,
}

fn load(file: &Path, settings: &Settings) -> Result<Loaded> {
    let text = std::fs::read(file).with_context(|| format!("reading '{}'", file.display()))?;
    let mut store_dir = settings.store_dir.clone();
    let drv = match Derivation::parse_aterm(&store_dir, &text) {
        Ok(d) => d,
        Err(first) => {
            // A `.drv` copied from a store with another directory still names its own paths.
            match infer_store_dir(&text)
                .filter(|d| *d != store_dir)
                .and_then(|d| Derivation::parse_aterm(&d, &text).ok().map(|drv| (d, drv)))
            {
                Some((d, drv)) => {
                    store_dir = d;
                    drv
                }
                None => {
                    return Err(first)
                        .with_context(|| format!("parsing derivation '{}'", file.display()))
                }
            }
        }
    };
    let file_name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // The key is the store path this derivation has (or would have), as Nix prints it.
    let name = match StorePath::from_base_name(&file_name) {
        Ok(p) if p.is_derivation() => drv_name(&p).to_owned(),
        _ => match drv.env.get("name") {
            Some(n) => n.clone(),
            None => file_name.trim_end_matches(".drv").to_owned(),
        },
    };
    let path = drv
        .drv_path(&store_dir, &name)
        .with_context(|| format!("computing the store path of '{}'", file.display()))?;
    Ok(Loaded {
        key: store_dir.display(&path),
        drv,
        store_dir,
    })
}

pub fn show(a: ShowArgs, settings: &Settings, shell: &mut Shell) -> Result<()> {
    let mut shown: BTreeMap<String, Json> = BTreeMap::new();
    let mut queue: Vec<PathBuf> = Vec::new();
    for f in &a.drvs {
        if f.extension().and_then(|e| e.to_str()) != Some("drv") {
            bail!(
                "'{}' is not a .drv file (evaluating installables comes with the evaluator)",
                f.display()
            );
        }
        queue.push(f.clone());
    }
    while let Some(f) = queue.pop() {
        let l = load(&f, settings)?;
        if shown.contains_key(&l.key) {
            continue;
        }
        if a.recursive {
            for input in l.drv.input_drvs.keys() {
                let p = l.store_dir.display(input);
                if !shown.contains_key(&p) {
                    queue.push(PathBuf::from(p));
                }
            }
        }
        shown.insert(l.key, l.drv.to_json(&l.store_dir));
    }
    let root = Json::Object(shown.into_iter().collect());
    shell.println(root.pretty())?;
    Ok(())
}

/// `ferrix derivation add < drv.json`.
pub fn add(settings: &Settings, shell: &mut Shell) -> Result<()> {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
        .context("reading the derivation from standard input")?;
    let parsed = Derivation::from_json(&settings.store_dir, &text)
        .context("reading the derivation from standard input")?;
    let name = parsed
        .name
        .context("the derivation has no name (neither 'name' nor 'env.name')")?;
    if let Some((url, _)) = settings.daemon() {
        // Its outputs named here, the derivation written by the daemon.
        let client = crate::stores::connect_daemon(url, settings)?;
        let store = ferrix_eval::DaemonStore::new(client, settings.store_dir.clone(), false);
        let (p, _) = ferrix_eval::EvalStore::add_derivation(&store, parsed.drv, &name)
            .with_context(|| format!("adding derivation '{name}'"))?;
        shell.println(settings.store_dir.display(&p))?;
        return Ok(());
    }
    let store = settings.open_store()?;
    let p = ferrix_store::drv::add_filled(&store, parsed.drv, &name)
        .with_context(|| format!("adding derivation '{name}'"))?;
    shell.println(store.print(&p))?;
    Ok(())
}

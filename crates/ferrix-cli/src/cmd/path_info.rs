//! `ferrix path-info`: what the store knows about paths, as text or JSON.

use std::collections::BTreeSet;

use anyhow::Result;
use ferrix_format::json::Json;
use ferrix_format::StorePath;

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
    let closure_size = |p: &StorePath| -> Result<u64> {
        let mut n = 0;
        for q in store.closure([p.clone()], false, false)? {
            n += store.path_info(&q)?.nar_size;
        }
        Ok(n)
    };
    if a.json {
        let mut items = Vec::new();
        for p in &paths {
            let info = store.path_info(p)?;
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
    for p in &store.topo_sort(&paths)? {
        let s = store.print(p);
        let mut line = s.clone();
        if a.size || a.closure_size || a.sigs {
            line.push_str(&" ".repeat(width - s.len()));
        }
        if a.size {
            line.push_str(&format!("\t{:>11}", store.path_info(p)?.nar_size));
        }
        if a.closure_size {
            line.push_str(&format!("\t{:>11}", closure_size(p)?));
        }
        if a.sigs {
            let info = store.path_info(p)?;
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

//! `nix-copy-closure [--to|--from] [user@]HOST PATHS`: Nix's classic closure copy over ssh
//! (the serve protocol), sending or fetching only what the other side lacks.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::{bail, Result};

use super::{ArgIter, Common};
use crate::shell::Shell;

const HELP: &str = "Usage: nix-copy-closure [--to | --from] [--gzip] [--include-outputs] [--use-substitutes | -s] [-v] [user@]machine paths...";

pub fn run(args: &[OsString], shell: &mut Shell) -> Result<ExitCode> {
    let mut it = ArgIter::new("nix-copy-closure", args.to_vec());
    let mut to = true;
    let mut gzip = false;
    let mut include_outputs = false;
    let mut substitute = false;
    let mut operands: Vec<String> = Vec::new();
    while let Some(a) = it.next() {
        let flag = a.to_str().unwrap_or("");
        match it.common(flag, HELP, shell)? {
            Common::Exit(code) => return Ok(code),
            Common::Consumed => continue,
            Common::Other => {}
        }
        match flag {
            "--to" => to = true,
            "--from" => to = false,
            "--gzip" => gzip = true,
            "--include-outputs" => include_outputs = true,
            // The other side fetches what it can from its own substituters.
            "--use-substitutes" | "-s" => substitute = true,
            f if f.starts_with('-') && f.len() > 1 => return Err(it.unknown(f)),
            _ => operands.push(a.to_string_lossy().into_owned()),
        }
    }
    let Some((host, paths)) = operands.split_first() else {
        bail!("no host given\n{HELP}");
    };
    let conf = crate::settings::load_conf(&[], shell)?;
    let settings = crate::settings::Settings::with_conf(None, conf)?;
    let store = settings.open_store()?;
    let uri = format!("ssh://{host}");
    let mut s = crate::remote::connect(&uri, &store, gzip)?;
    if to {
        let paths = crate::ops::resolve_all(&store, paths)?;
        ferrix_store::serve_client::copy_to(
            &store,
            &mut s.client,
            &paths,
            include_outputs,
            substitute,
        )?;
    } else {
        let paths: BTreeSet<_> = paths
            .iter()
            .map(|p| store.parse_path(p))
            .collect::<Result<_, _>>()?;
        ferrix_store::serve_client::copy_from(&store, &mut s.client, &paths, include_outputs)?;
    }
    Ok(ExitCode::SUCCESS)
}

//! `nix-copy-closure [--to|--from] [user@]HOST PATHS`: Nix's classic closure copy over ssh
//! (the serve protocol), sending or fetching only what the other side lacks.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::{bail, Result};
use ferrix_store::{AddOptions, CopyOptions};

use super::{ArgIter, Common};
use crate::shell::Shell;
use crate::stores::{self, OpenOptions, Role};

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
    let uri = format!("ssh://{host}");
    let opts = OpenOptions {
        no_check_sigs: false,
        compress: gzip,
    };
    let (from, to) = if to {
        (None, Some(uri.as_str()))
    } else {
        (Some(uri.as_str()), None)
    };
    let from = stores::open(from, Role::Source, &settings, opts, shell)?;
    let to = stores::open(to, Role::Destination, &settings, opts, shell)?;
    let paths: BTreeSet<_> = match &from.local {
        Some(local) => crate::ops::resolve_all(local, paths)?.into_iter().collect(),
        None => paths
            .iter()
            .map(|p| settings.store_dir().parse_path(p))
            .collect::<Result<_, _>>()?,
    };
    let copy = CopyOptions {
        include_outputs,
        substitute_on_destination: substitute,
        // As Nix's nix-copy-closure: the other side's paths are taken on our word.
        add: AddOptions {
            check_sigs: false,
            trust: None,
        },
    };
    ferrix_store::copy_paths(&*from.store, &*to.store, &paths, &copy)?;
    Ok(ExitCode::SUCCESS)
}

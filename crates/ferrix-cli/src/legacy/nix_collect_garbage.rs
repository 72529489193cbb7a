//! `nix-collect-garbage [-d] [--delete-older-than Nd] [--max-freed N] [--dry-run]`.

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use ferrix_store::gc::{GcAction, GcOptions};

use super::{ArgIter, Common};
use crate::ops;
use crate::settings::{CliSetting, Settings};
use crate::shell::Shell;

const HELP: &str = "Usage: nix-collect-garbage [--delete-old|-d] [--delete-older-than Nd] [--max-freed N] [--dry-run]

Delete unreachable store paths; with -d, first delete all old profile generations.";

pub fn run(args: &[OsString], shell: &mut Shell) -> Result<ExitCode> {
    let mut it = ArgIter::new("nix-collect-garbage", args.to_vec());
    let mut delete_old = false;
    let mut older_than: Option<u64> = None;
    let mut dry_run = false;
    let mut max_freed = None;
    let mut store_url = None;
    let mut options = Vec::new();
    while let Some(a) = it.next() {
        let flag = a.to_str().unwrap_or("");
        match it.common(flag, HELP, shell)? {
            Common::Exit(code) => return Ok(code),
            Common::Consumed => continue,
            Common::Other => {}
        }
        match flag {
            "--delete-old" | "-d" => delete_old = true,
            "--delete-older-than" => {
                let v = it.value(flag)?;
                let days: u64 = v
                    .strip_suffix('d')
                    .and_then(|d| d.parse().ok())
                    .with_context(|| {
                        format!(
                            "invalid number of days specifier '{v}', expected something like '14d'"
                        )
                    })?;
                older_than = Some(days);
                delete_old = true;
            }
            "--dry-run" => dry_run = true,
            "--max-freed" => {
                max_freed = Some(
                    it.value(flag)?
                        .parse::<u64>()
                        .context("--max-freed takes a number of bytes")?,
                )
            }
            "--store" => store_url = Some(it.value(flag)?),
            "--option" => {
                let name = it.value(flag)?;
                options.push(CliSetting::option(name, it.value(flag)?));
            }
            f => return Err(it.unknown(f)),
        }
    }
    let settings = Settings::load(store_url.as_deref(), &options, shell)?;
    if delete_old {
        delete_generations(
            &settings.store.state_dir.join("profiles"),
            older_than,
            dry_run,
            shell,
        )?;
    }
    if let Some((url, _)) = settings.daemon() {
        // The daemon collects; the generations above were this user's to delete.
        let mut d = crate::stores::connect_daemon(url, &settings)?;
        let action = if dry_run {
            ferrix_protocol::worker::GcAction::ReturnDead
        } else {
            ferrix_protocol::worker::GcAction::DeleteDead
        };
        ops::gc_through_daemon(&mut d, action, &Default::default(), max_freed, shell)?;
        return Ok(ExitCode::SUCCESS);
    }
    let store = settings.open_store()?;
    let mut opts = GcOptions::new(if dry_run {
        GcAction::ReturnDead
    } else {
        GcAction::DeleteDead
    });
    opts.max_freed = max_freed;
    ops::gc(&store, &settings, opts, shell)?;
    Ok(ExitCode::SUCCESS)
}

/// Profiles are symlinks `NAME -> NAME-N-link`; every other `NAME-M-link` generation (older
/// than the cut-off, when given) is removed, so what they held becomes garbage.
fn delete_generations(
    dir: &Path,
    older_than_days: Option<u64>,
    dry_run: bool,
    shell: &mut Shell,
) -> Result<()> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let entries: Vec<_> = rd.flatten().collect();
    for e in &entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(current) = std::fs::read_link(e.path()) else {
            continue;
        };
        if name.ends_with("-link") {
            continue;
        }
        let current = current
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let prefix = format!("{name}-");
        for g in &entries {
            let gname = g.file_name().to_string_lossy().into_owned();
            let Some(num) = gname
                .strip_prefix(&prefix)
                .and_then(|r| r.strip_suffix("-link"))
            else {
                continue;
            };
            if num.parse::<u64>().is_err() || gname == current {
                continue;
            }
            if let Some(days) = older_than_days {
                let age = g
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.elapsed().ok())
                    .map(|d| d.as_secs() / 86400)
                    .unwrap_or(0);
                if age < days {
                    continue;
                }
            }
            shell.note(format!(
                "removing old generations of profile {}",
                e.path().display()
            ));
            if !dry_run {
                std::fs::remove_file(g.path())
                    .with_context(|| format!("removing generation '{}'", g.path().display()))?;
            }
        }
    }
    Ok(())
}

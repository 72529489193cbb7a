//! `nix-store`: the classic store command. This version: `--dump`, `--restore`,
//! `--generate-binary-cache-key`; the store operations arrive with the local store.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use ferrix_format::nar;
use ferrix_format::signature::SecretKey;

use super::{ArgIter, Common};
use crate::cmd::check_key_name;
use crate::shell::Shell;

const HELP: &str = "Usage: nix-store OPERATION [OPTIONS...] [ARGUMENTS...]

Operations available in this version:
  --dump PATH                        write the NAR serialisation of PATH to stdout
  --restore PATH                     unpack a NAR read from stdin into PATH (must not exist)
  --generate-binary-cache-key NAME SECRET-FILE PUBLIC-FILE";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Dump,
    Restore,
    GenerateKey,
}

pub fn run(args: &[OsString], shell: &mut Shell) -> Result<ExitCode> {
    let mut it = ArgIter::new("nix-store", args.to_vec());
    let mut op: Option<Op> = None;
    let mut operands = Vec::new();
    let set = |op: &mut Option<Op>, new: Op| -> Result<()> {
        if op.is_some_and(|o| o != new) {
            bail!(
                "only one operation may be specified\nTry 'nix-store --help' for more information."
            );
        }
        *op = Some(new);
        Ok(())
    };
    while let Some(a) = it.next() {
        let flag = a.to_str().unwrap_or("");
        match it.common(flag, HELP, shell)? {
            Common::Exit(code) => return Ok(code),
            Common::Consumed => continue,
            Common::Other => {}
        }
        match flag {
            "--dump" => set(&mut op, Op::Dump)?,
            "--restore" => set(&mut op, Op::Restore)?,
            "--generate-binary-cache-key" => set(&mut op, Op::GenerateKey)?,
            "--" => operands.extend(it.by_ref()),
            f if f.starts_with('-') && f.len() > 1 => {
                bail!(
                    "'nix-store {f}' is not available in this version of ferrix yet (store operations arrive with the local store)"
                )
            }
            _ => operands.push(a),
        }
    }
    let Some(op) = op else {
        bail!("no operation specified\nTry 'nix-store --help' for more information.");
    };
    match op {
        Op::Dump => {
            let [path] = &operands[..] else {
                bail!("'--dump' requires exactly one path");
            };
            crate::cmd::dump(Path::new(path), shell)?;
        }
        Op::Restore => {
            let [path] = &operands[..] else {
                bail!("'--restore' requires exactly one path");
            };
            restore(Path::new(path))?;
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
        }
    }
    Ok(ExitCode::SUCCESS)
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

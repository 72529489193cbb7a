//! `nix-hash`: NAR (or flat) hashes of paths, and conversions between hash encodings.

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use ferrix_format::hash::{compress, hash_file};
use ferrix_format::{nar, Encoding, Hash, HashAlgo};

use super::{ArgIter, Common};
use crate::shell::Shell;

const HELP: &str = "Usage: nix-hash [--type md5|sha1|sha256|sha512] [--base16|--base32|--base64|--sri] [--flat] [--truncate] PATH...
       nix-hash [--type TYPE] --to-base16|--to-base32|--to-base64|--to-sri HASH...

Print the hash of the NAR serialisation of each PATH (md5 in base-16 by default).";

pub fn run(args: &[OsString], shell: &mut Shell) -> Result<ExitCode> {
    let mut it = ArgIter::new("nix-hash", args.to_vec());
    let mut algo = HashAlgo::Md5;
    let mut enc = Encoding::Base16;
    let mut flat = false;
    let mut truncate = false;
    let mut convert: Option<Encoding> = None;
    let mut operands = Vec::new();
    let mut options = Vec::new();
    while let Some(a) = it.next() {
        let flag = a.to_str().unwrap_or("");
        match it.common(flag, HELP, shell)? {
            Common::Exit(code) => return Ok(code),
            Common::Consumed => continue,
            Common::Other => {}
        }
        match flag {
            "--type" => algo = it.value("--type")?.parse()?,
            "--base16" => enc = Encoding::Base16,
            "--base32" => enc = Encoding::Nix32,
            "--base64" => enc = Encoding::Base64,
            "--sri" => enc = Encoding::Sri,
            "--flat" => flat = true,
            "--truncate" => truncate = true,
            "--to-base16" => convert = Some(Encoding::Base16),
            "--to-base32" => convert = Some(Encoding::Nix32),
            "--to-base64" => convert = Some(Encoding::Base64),
            "--to-sri" => convert = Some(Encoding::Sri),
            "--option" => {
                let name = it.value(flag)?;
                options.push(crate::settings::CliSetting::option(name, it.value(flag)?));
            }
            "--" => operands.extend(it.by_ref()),
            f if f.starts_with('-') && f.len() > 1 => return Err(it.unknown(f)),
            _ => operands.push(a),
        }
    }
    // Nix's nix-hash reads the settings too, and refuses bad ones.
    crate::settings::load_conf(&options, shell)?;
    if let Some(to) = convert {
        for text in &operands {
            let text = text.to_string_lossy();
            shell.println(Hash::parse(&text, Some(algo))?.encode(to))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    for p in &operands {
        let path = Path::new(p);
        let mut h = if flat {
            hash_file(path, algo).with_context(|| format!("reading file '{}'", path.display()))?
        } else {
            nar::hash_path(path, algo)?.0
        };
        if truncate && h.algo().size() > 20 {
            // Nix folds to 160 bits but keeps the algorithm's name; only the digits matter.
            let folded = compress(h.digest(), 20);
            h = Hash::from_bytes(HashAlgo::Sha1, &folded).unwrap_or(h);
        }
        shell.println(h.encode(enc))?;
    }
    Ok(ExitCode::SUCCESS)
}

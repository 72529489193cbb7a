//! `ferrix hash path|file|convert|to-*`: NAR and flat hashes, and conversions between forms.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use ferrix_format::hash::hash_file;
use ferrix_format::{nar, Encoding, Hash, HashAlgo};

use crate::shell::Shell;

#[derive(Debug, Subcommand)]
pub enum HashCommand {
    /// Print the hash of the NAR serialisation of each path.
    Path(HashArgs),
    /// Print the hash of the contents of each regular file.
    File(HashArgs),
    /// Convert hashes between encodings (`--to` base16, nix32, base64 or sri).
    Convert(ConvertArgs),
    /// Convert hashes to base-16.
    #[command(name = "to-base16")]
    ToBase16(ToArgs),
    /// Convert hashes to Nix's base-32.
    #[command(name = "to-base32")]
    ToBase32(ToArgs),
    /// Convert hashes to base-64.
    #[command(name = "to-base64")]
    ToBase64(ToArgs),
    /// Convert hashes to SRI form (`sha256-…`).
    #[command(name = "to-sri")]
    ToSri(ToArgs),
}

#[derive(Debug, Args)]
pub struct HashArgs {
    /// Hash algorithm: md5, sha1, sha256 or sha512.
    #[arg(long = "type", visible_alias = "algo", default_value = "sha256", value_parser = parse_algo)]
    algo: HashAlgo,
    #[arg(long, group = "enc")]
    base16: bool,
    /// Nix's base-32 encoding (also `--base32`).
    #[arg(long, alias = "nix32", group = "enc")]
    base32: bool,
    #[arg(long, group = "enc")]
    base64: bool,
    /// SRI form `<algo>-<base64>` (the default).
    #[arg(long, group = "enc")]
    sri: bool,
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

impl HashArgs {
    fn encoding(&self) -> Encoding {
        if self.base16 {
            Encoding::Base16
        } else if self.base32 {
            Encoding::Nix32
        } else if self.base64 {
            Encoding::Base64
        } else {
            Encoding::Sri
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Base16,
    #[value(alias = "base32")]
    Nix32,
    Base64,
    Sri,
}

impl From<Format> for Encoding {
    fn from(f: Format) -> Self {
        match f {
            Format::Base16 => Encoding::Base16,
            Format::Nix32 => Encoding::Nix32,
            Format::Base64 => Encoding::Base64,
            Format::Sri => Encoding::Sri,
        }
    }
}

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The algorithm, when the hashes do not name it.
    #[arg(long = "hash-algo", visible_alias = "algo", value_parser = parse_algo)]
    algo: Option<HashAlgo>,
    /// The encoding the hashes must be in (any when not given).
    #[arg(long, value_enum)]
    from: Option<Format>,
    /// The encoding to print.
    #[arg(long, value_enum, default_value = "sri")]
    to: Format,
    #[arg(required = true)]
    hashes: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ToArgs {
    /// The algorithm, when the hashes do not name it.
    #[arg(long = "type", visible_alias = "algo", value_parser = parse_algo)]
    algo: Option<HashAlgo>,
    #[arg(required = true)]
    hashes: Vec<String>,
}

pub fn parse_algo(s: &str) -> Result<HashAlgo, String> {
    s.parse::<HashAlgo>().map_err(|e| e.to_string())
}

/// Which encoding a hash text is written in (typed or bare), for `--from`.
fn encoding_of(text: &str, h: &Hash) -> Encoding {
    let digits = text.split_once(':').map(|(_, d)| d).unwrap_or(text);
    if text.starts_with(&format!("{}-", h.algo())) {
        Encoding::Sri
    } else if digits.len() == h.algo().base16_len() {
        Encoding::Base16
    } else if digits.len() == h.algo().nix32_len() {
        Encoding::Nix32
    } else {
        Encoding::Base64
    }
}

pub fn run(cmd: HashCommand, shell: &mut Shell) -> Result<()> {
    match cmd {
        HashCommand::Path(a) => {
            let enc = a.encoding();
            for p in &a.paths {
                let (h, _) = nar::hash_path(p, a.algo)?;
                shell.println(h.encode(enc))?;
            }
        }
        HashCommand::File(a) => {
            let enc = a.encoding();
            for p in &a.paths {
                let h = hash_file(p, a.algo)
                    .with_context(|| format!("reading file '{}'", p.display()))?;
                shell.println(h.encode(enc))?;
            }
        }
        HashCommand::Convert(a) => {
            for text in &a.hashes {
                let h = Hash::parse(text, a.algo)?;
                if let Some(from) = a.from {
                    let found = encoding_of(text, &h);
                    if found != Encoding::from(from) {
                        bail!(
                            "hash '{text}' is not in the expected encoding {} (it is {})",
                            enc_name(from.into()),
                            enc_name(found)
                        );
                    }
                }
                shell.println(h.encode(a.to.into()))?;
            }
        }
        HashCommand::ToBase16(a) => convert_to(a, Encoding::Base16, shell)?,
        HashCommand::ToBase32(a) => convert_to(a, Encoding::Nix32, shell)?,
        HashCommand::ToBase64(a) => convert_to(a, Encoding::Base64, shell)?,
        HashCommand::ToSri(a) => convert_to(a, Encoding::Sri, shell)?,
    }
    Ok(())
}

fn enc_name(e: Encoding) -> &'static str {
    match e {
        Encoding::Base16 => "base16",
        Encoding::Nix32 => "nix32",
        Encoding::Base64 => "base64",
        Encoding::Sri => "sri",
    }
}

fn convert_to(a: ToArgs, enc: Encoding, shell: &mut Shell) -> Result<()> {
    for text in &a.hashes {
        shell.println(Hash::parse(text, a.algo)?.encode(enc))?;
    }
    Ok(())
}

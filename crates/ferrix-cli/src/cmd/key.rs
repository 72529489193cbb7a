//! `ferrix key generate-secret|convert-secret-to-public`: Ed25519 keys in Nix's format.

use std::io::Read;

use anyhow::{Context, Result};
use clap::Subcommand;
use ferrix_format::signature::SecretKey;

use crate::shell::Shell;

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Print a new secret key `<name>:<base64>` on stdout.
    GenerateSecret {
        /// The key's name, e.g. `cache.example.org-1`.
        #[arg(long)]
        key_name: String,
    },
    /// Read a secret key on stdin and print its public key.
    ConvertSecretToPublic,
}

pub fn run(cmd: KeyCommand, shell: &mut Shell) -> Result<()> {
    match cmd {
        KeyCommand::GenerateSecret { key_name } => {
            check_key_name(&key_name)?;
            shell.print(SecretKey::generate(&key_name)?)?;
        }
        KeyCommand::ConvertSecretToPublic => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading the secret key from stdin")?;
            let sk: SecretKey = text.parse()?;
            shell.print(sk.to_public())?;
        }
    }
    Ok(())
}

/// A name with a `:` or whitespace would not parse back.
pub fn check_key_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains(':') || name.chars().any(char::is_whitespace) {
        anyhow::bail!("invalid key name '{name}': it must be non-empty, without ':' or spaces");
    }
    Ok(())
}

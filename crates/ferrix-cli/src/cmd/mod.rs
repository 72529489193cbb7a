//! The `ferrix` (= `nix`) command line: subcommands following Nix's `nix` CLI.

pub mod build;
mod copy;
mod derivation;
mod eval;
mod hash;
mod install_links;
mod instantiate;
mod key;
mod log;
mod machines;
mod nar;
mod path_info;
mod repl;
mod serve_cache;
mod store;

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

pub use hash::parse_algo;
pub use key::check_key_name;
pub use nar::dump;

use crate::settings::{CliSetting, Settings};
use crate::shell::Shell;

#[derive(Debug, Parser)]
#[command(
    name = "ferrix",
    version,
    about = "A purely functional package manager, compatible with Nix",
    disable_help_subcommand = true
)]
struct Cli {
    /// Accepted for compatibility with scripts written for Nix; every feature is enabled.
    #[arg(long, global = true, value_name = "FEATURES")]
    extra_experimental_features: Vec<String>,
    /// Accepted for compatibility with scripts written for Nix; every feature is enabled.
    #[arg(long, global = true, value_name = "FEATURES")]
    experimental_features: Vec<String>,
    /// The store to use: `local`, `local?root=DIR`, or a directory (a chroot store).
    #[arg(long, global = true, value_name = "URL")]
    store: Option<String>,
    /// Set a configuration option, as in nix.conf.
    #[arg(
        long,
        global = true,
        num_args = 2,
        value_names = ["NAME", "VALUE"],
        allow_hyphen_values = true
    )]
    option: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Compute and convert cryptographic hashes.
    #[command(subcommand)]
    Hash(hash::HashCommand),
    /// Create or inspect NAR files.
    #[command(subcommand)]
    Nar(nar::NarCommand),
    /// Work with derivations.
    #[command(subcommand)]
    Derivation(derivation::DerivationCommand),
    /// Show the contents of derivations (the older name of `derivation show`).
    ShowDerivation(derivation::ShowArgs),
    /// Generate and convert signing keys.
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Show information about store paths.
    PathInfo(path_info::Args),
    /// Manipulate the store: add paths, collect garbage, verify, delete.
    #[command(subcommand)]
    Store(store::StoreCommand),
    /// Build derivations and link their outputs.
    Build(build::Args),
    /// Show the build log of a derivation or of a path built by one.
    Log(log::Args),
    /// Evaluate a Nix expression and print its value.
    Eval(eval::Args),
    /// Write the derivations a Nix expression holds to the store and print their paths.
    Instantiate(instantiate::Args),
    /// Evaluate Nix expressions interactively.
    Repl(repl::Args),
    /// Copy closures to or from a machine (ssh://).
    Copy(copy::Args),
    /// List the build machines and whether they answer.
    Machines,
    /// Serve this store over the worker protocol: on the daemon's socket, for this machine's
    /// users, or on standard input and output.
    Daemon {
        /// Serve one client on standard input and output (what `ssh-ng://` runs).
        #[arg(long)]
        stdio: bool,
    },
    /// Serve this store as an HTTP binary cache.
    ServeCache(serve_cache::Args),
    /// Create the classic command names (nix-store, nix-hash, …) as links to this binary.
    InstallLinks(install_links::Args),
}

/// Parse and run; clap's usage errors exit with 1 as Nix's do.
pub fn run(args: Vec<OsString>, shell: &mut Shell) -> Result<ExitCode> {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            if e.use_stderr() {
                shell.note(e.render().to_string().trim_end());
            } else {
                shell.print(e.render())?;
            }
            return Ok(ExitCode::from(code));
        }
    };
    let options: Vec<CliSetting> = cli
        .option
        .chunks(2)
        .map(|c| CliSetting::option(&c[0], c.get(1).cloned().unwrap_or_default()))
        .collect();
    let settings = Settings::load(cli.store.as_deref(), &options, shell)?;
    match cli.command {
        Command::Hash(c) => hash::run(c, shell)?,
        Command::Nar(c) => nar::run(c, shell)?,
        Command::Derivation(derivation::DerivationCommand::Add) => {
            derivation::add(&settings, shell)?
        }
        Command::Derivation(derivation::DerivationCommand::Show(a))
        | Command::ShowDerivation(a) => derivation::show(a, &settings, shell)?,
        Command::Key(c) => key::run(c, shell)?,
        Command::InstallLinks(a) => install_links::run(a, shell)?,
        Command::PathInfo(a) => path_info::run(a, &settings, shell)?,
        Command::Store(c) => return store::run(c, &settings, shell),
        Command::Build(a) => return build::run(a, &settings, shell),
        Command::Log(a) => log::run(a, &settings, shell)?,
        Command::Eval(a) => return eval::run(a, &settings, shell),
        Command::Repl(a) => return repl::run(a, &settings, shell),
        Command::Instantiate(a) => return instantiate::run(a, &settings, shell),
        Command::Copy(a) => copy::run(a, &settings, shell)?,
        Command::Machines => machines::run(&settings, shell)?,
        Command::ServeCache(a) => serve_cache::run(a, &settings, shell)?,
        Command::Daemon { stdio } => {
            let store = std::sync::Arc::new(settings.open_store()?);
            if stdio {
                crate::daemon::serve_stdio(&settings, store)?;
            } else {
                crate::daemon::serve_socket(&settings, store)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

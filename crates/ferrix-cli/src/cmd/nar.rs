//! `ferrix nar dump-path|ls|cat`: write NARs and look inside them.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use ferrix_format::json::Json;
use ferrix_format::nar::{self, NarEntry, NarVisitor};

use crate::shell::Shell;

#[derive(Debug, Subcommand)]
pub enum NarCommand {
    /// Write the NAR serialisation of a path to stdout.
    #[command(name = "dump-path", alias = "pack")]
    DumpPath { path: PathBuf },
    /// List the contents of a NAR file.
    Ls(LsArgs),
    /// Print a regular file inside a NAR file.
    Cat { nar: PathBuf, path: String },
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Show type, permissions and size of each entry.
    #[arg(short = 'l', long)]
    long: bool,
    /// List directories recursively.
    #[arg(short = 'R', long)]
    recursive: bool,
    /// Show a directory itself rather than its contents.
    #[arg(short = 'd', long)]
    directory: bool,
    /// Print the listing as JSON.
    #[arg(long)]
    json: bool,
    nar: PathBuf,
    path: String,
}

pub fn run(cmd: NarCommand, shell: &mut Shell) -> Result<()> {
    match cmd {
        NarCommand::DumpPath { path } => dump(&path, shell),
        NarCommand::Ls(a) => {
            // Listing recurses once per level (up to MAX_LS_DEPTH), with frames larger than
            // the main thread's stack allows at that depth: a thread with room for it.
            std::thread::scope(|sc| {
                std::thread::Builder::new()
                    .stack_size(LS_STACK)
                    .spawn_scoped(sc, || ls(a))
                    .context("starting the listing thread")?
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p))
            })
            .and_then(|out| Ok(shell.print(out)?))
        }
        NarCommand::Cat { nar, path } => cat(&nar, &path, shell),
    }
}

/// Shared by `nar dump-path` and `nix-store --dump`.
pub fn dump(path: &Path, shell: &mut Shell) -> Result<()> {
    nar::dump_path(path, shell.out())?;
    Ok(())
}

fn open(nar: &Path) -> Result<BufReader<File>> {
    let f = File::open(nar).with_context(|| format!("opening NAR file '{}'", nar.display()))?;
    Ok(BufReader::with_capacity(256 * 1024, f))
}

/// What `nar ls` prints.
fn ls(a: LsArgs) -> Result<String> {
    let listing = nar::list(open(&a.nar)?)
        .with_context(|| format!("reading NAR file '{}'", a.nar.display()))?;
    let Some(node) = listing.get(a.path.as_bytes()) else {
        bail!("path '{}' does not exist in '{}'", a.path, a.nar.display());
    };
    if a.recursive {
        // Listing and JSON walk the tree on the stack; the archive itself may nest deeper.
        let depth = depth(node);
        if depth > MAX_LS_DEPTH {
            bail!(
                "'{}' in '{}' nests {depth} directories deep: 'nar ls -R' lists at most {MAX_LS_DEPTH} levels (a nesting limit of this command, not of the archive)",
                a.path,
                a.nar.display()
            );
        }
    }
    if a.json {
        return Ok(to_json(node, a.recursive, true).compact());
    }
    let mut out = String::new();
    let is_dir = matches!(node, NarEntry::Directory { .. });
    if is_dir && !a.directory {
        let mut lines = Vec::new();
        children(node, "", a.recursive, &mut lines);
        for (rel, e) in lines {
            print_entry(&mut out, &format!("./{rel}"), e, a.long);
        }
    } else {
        let shown = if is_dir {
            ".".to_owned()
        } else {
            a.path
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or("")
                .to_owned()
        };
        print_entry(&mut out, &shown, node, a.long);
    }
    Ok(out)
}

/// How deep `nar ls -R` goes: its listing and JSON recurse once per level.
const MAX_LS_DEPTH: usize = 10_000;

/// The listing thread's stack: address space reserved, pages used only as deep as needed.
const LS_STACK: usize = 512 << 20;

/// How many directories deep `node` nests, counted without recursion.
fn depth(node: &NarEntry) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(node, 0usize)];
    while let Some((e, d)) = stack.pop() {
        deepest = deepest.max(d);
        if let NarEntry::Directory { entries } = e {
            stack.extend(entries.values().map(|c| (c, d + 1)));
        }
    }
    deepest
}

/// Entries below a directory in listing order, paths relative to it.
fn children<'a>(
    node: &'a NarEntry,
    prefix: &str,
    recursive: bool,
    out: &mut Vec<(String, &'a NarEntry)>,
) {
    if let NarEntry::Directory { entries } = node {
        for (name, child) in entries {
            let rel = format!("{prefix}{}", String::from_utf8_lossy(name));
            out.push((rel.clone(), child));
            if recursive {
                children(child, &format!("{rel}/"), true, out);
            }
        }
    }
}

fn print_entry(out: &mut String, name: &str, e: &NarEntry, long: bool) {
    if !long {
        out.push_str(name);
        out.push('\n');
        return;
    }
    let (mode, size, suffix) = match e {
        NarEntry::Regular {
            executable, size, ..
        } => (
            if *executable {
                "-r-xr-xr-x"
            } else {
                "-r--r--r--"
            },
            *size,
            String::new(),
        ),
        NarEntry::Directory { .. } => ("dr-xr-xr-x", 0, String::new()),
        NarEntry::Symlink { target } => (
            "lrwxrwxrwx",
            0,
            format!(" -> {}", String::from_utf8_lossy(target)),
        ),
    };
    out.push_str(&format!("{mode} {size:20} {name}{suffix}\n"));
}

/// The `.ls` JSON form Nix uses; below the top level, directories are expanded only when
/// listing recursively.
fn to_json(e: &NarEntry, recursive: bool, top: bool) -> Json {
    let s = |v: &str| Json::String(v.to_owned());
    match e {
        NarEntry::Regular {
            executable,
            size,
            offset,
        } => {
            let mut f = vec![
                ("type".to_owned(), s("regular")),
                ("size".to_owned(), Json::Int(*size as i64)),
            ];
            if *executable {
                f.push(("executable".to_owned(), Json::Bool(true)));
            }
            f.push(("narOffset".to_owned(), Json::Int(*offset as i64)));
            Json::Object(f)
        }
        NarEntry::Symlink { target } => Json::Object(vec![
            ("type".to_owned(), s("symlink")),
            ("target".to_owned(), s(&String::from_utf8_lossy(target))),
        ]),
        NarEntry::Directory { entries } => {
            let mut f = vec![("type".to_owned(), s("directory"))];
            if top || recursive {
                let kids = entries
                    .iter()
                    .map(|(n, c)| {
                        let v = if recursive {
                            to_json(c, true, false)
                        } else {
                            Json::Object(vec![])
                        };
                        (String::from_utf8_lossy(n).into_owned(), v)
                    })
                    .collect();
                f.push(("entries".to_owned(), Json::Object(kids)));
            }
            Json::Object(f)
        }
    }
}

/// Streams one file's contents out of the archive as it is parsed.
struct Cat<'a> {
    want: Vec<u8>,
    out: &'a mut dyn Write,
    found: Option<bool>,
}

impl NarVisitor for Cat<'_> {
    fn directory(&mut self, path: &[u8]) -> io::Result<()> {
        if path == self.want {
            self.found = Some(false);
        }
        Ok(())
    }
    fn regular(
        &mut self,
        path: &[u8],
        _x: bool,
        _s: u64,
        _o: u64,
        contents: &mut dyn Read,
    ) -> io::Result<()> {
        if path == self.want {
            self.found = Some(true);
            io::copy(contents, self.out)?;
        }
        Ok(())
    }
    fn symlink(&mut self, path: &[u8], _target: &[u8]) -> io::Result<()> {
        if path == self.want {
            self.found = Some(false);
        }
        Ok(())
    }
}

fn cat(nar_file: &Path, path: &str, shell: &mut Shell) -> Result<()> {
    let want = path.trim_matches('/').as_bytes().to_vec();
    let mut v = Cat {
        want,
        out: shell.out(),
        found: None,
    };
    nar::parse_exact(open(nar_file)?, &mut v)
        .with_context(|| format!("reading NAR file '{}'", nar_file.display()))?;
    match v.found {
        Some(true) => Ok(()),
        Some(false) => bail!("path '{path}' is not a regular file"),
        None => bail!("path '{path}' does not exist in '{}'", nar_file.display()),
    }
}

//! The `ferrix` binary: Nix's `nix` command, and the classic `nix-*` commands by argv[0].

mod alloc;
mod build;
mod cmd;
mod conf;
mod daemon;
mod evaluate;
mod interrupt;
mod legacy;
mod machine;
mod ops;
mod progress;
mod remote;
mod serve;
mod settings;
mod shell;
mod stores;

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use shell::Shell;

// The evaluator allocates and frees millions of small values; mimalloc does that several
// times faster than glibc's allocator, and the store and builds lose nothing by it.
#[global_allocator]
static ALLOC: alloc::Mimalloc = alloc::Mimalloc;

/// The names this binary answers to, as real Nix's single binary does.
pub const PERSONALITIES: &[&str] = &[
    "nix",
    "nix-store",
    "nix-build",
    "nix-instantiate",
    "nix-hash",
    "nix-collect-garbage",
    "nix-copy-closure",
    "nix-daemon",
];

/// Large buffers (NAR chunks, decompression windows, restore blocks) are allocated and freed
/// for every path copied. glibc maps each large one afresh and unmaps it when freed, so every
/// path paid again for faulting in and zeroing its pages (half of the page faults and a
/// fifth of the system time of substituting 512 MiB, measured): keep them in the heap.
#[allow(unsafe_code)]
fn keep_freed_memory() {
    // SAFETY: mallopt only sets allocator parameters; called before any other thread.
    unsafe {
        // 32 MiB is the largest threshold glibc documents for 64-bit systems. The trim
        // threshold is set only with it: alone it would pin the mmap threshold at its
        // 128 KiB start, the opposite of what is wanted.
        if libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1 {
            libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let name = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "ferrix".into());
    // The build sandbox's helpers: this binary re-executed (see ferrix_build::sandbox).
    match args.get(1).and_then(|a| a.to_str()) {
        Some("__build-child") => ferrix_build::sandbox::child_main(),
        Some("__sandbox-host") => ferrix_build::sandbox_host::host_main(),
        Some("__kill-user") => ferrix_build::users::kill_user_main(),
        _ => {}
    }
    keep_freed_memory();
    let mut shell = Shell::stdio();
    let res = match name.as_str() {
        "nix-hash" => legacy::nix_hash::run(&args[1..], &mut shell),
        "nix-store" => legacy::nix_store::run(&args[1..], &mut shell),
        "nix-collect-garbage" => legacy::nix_collect_garbage::run(&args[1..], &mut shell),
        "nix-copy-closure" => legacy::nix_copy_closure::run(&args[1..], &mut shell),
        "nix-daemon" => daemon::run(&args[1..], &mut shell),
        "nix-instantiate" => legacy::nix_instantiate::run(&args[1..], &mut shell),
        "nix-build" => legacy::nix_build::run(&args[1..], &mut shell),
        _ => cmd::run(args, &mut shell),
    };
    let flushed = shell.flush();
    match res {
        Ok(code) => {
            if let Err(e) = flushed {
                // A closed pipe (e.g. `| head`) is not worth a message.
                if e.kind() != std::io::ErrorKind::BrokenPipe {
                    shell.error(format!("writing output: {e}"));
                }
                return ExitCode::FAILURE;
            }
            code
        }
        Err(e) => {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::BrokenPipe {
                    return ExitCode::FAILURE;
                }
            }
            shell.error(render(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, `outer: cause: cause`, with io errors worded as
/// Nix words them (no "(os error N)").
pub fn render(e: &(dyn std::error::Error + 'static)) -> String {
    std::iter::successors(Some(e), |c| c.source())
        .map(|c| {
            let s = c.to_string();
            match c.downcast_ref::<std::io::Error>() {
                Some(io) if io.raw_os_error().is_some() => match s.rfind(" (os error ") {
                    Some(i) => s[..i].to_owned(),
                    None => s,
                },
                _ => s,
            }
        })
        .collect::<Vec<_>>()
        .join(": ")
}

//! The sandbox helpers on their own, for programs that embed `ferrix-build` (and its
//! tests): what the `ferrix` binary runs as `ferrix __build-child` and
//! `ferrix __sandbox-host`.

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("__build-child") => ferrix_build::sandbox::child_main(),
        Some("__sandbox-host") => ferrix_build::sandbox_host::host_main(),
        _ => {}
    }
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        b"usage: ferrix-build-helper __build-child|__sandbox-host (spec on stdin)\n",
    );
    std::process::exit(1)
}

//! The sandbox helper on its own, for programs that embed `ferrix-build` (and its tests):
//! what the `ferrix` binary runs as `ferrix __build-child`.

fn main() {
    if std::env::args().nth(1).as_deref() == Some("__build-child") {
        ferrix_build::sandbox::child_main()
    }
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        b"usage: ferrix-build-helper __build-child (spec on stdin)\n",
    );
    std::process::exit(1)
}

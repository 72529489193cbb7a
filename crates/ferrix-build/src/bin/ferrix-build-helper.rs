//! The sandbox helper on its own, for programs that embed `ferrix-build` (and its tests):
//! the same two stages the `ferrix` binary runs as `ferrix __build-child|__build-init`.

fn main() {
    let stage = std::env::args().nth(1).unwrap_or_default();
    match stage.as_str() {
        "__build-child" => {
            let exe = std::env::current_exe().unwrap_or_default();
            ferrix_build::sandbox::child_main(&exe)
        }
        "__build-init" => ferrix_build::sandbox::init_main(),
        _ => {
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                b"usage: ferrix-build-helper __build-child|__build-init (spec on stdin)\n",
            );
            std::process::exit(1)
        }
    }
}

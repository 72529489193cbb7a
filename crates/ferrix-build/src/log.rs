//! Build logs where Nix keeps them: `<log dir>/drvs/<first 2 chars>/<rest of the drv name>`,
//! bzip2-compressed (`.bz2`) unless `compress-build-log` is off.

use std::io::Read;
use std::path::{Path, PathBuf};

use ferrix_format::StorePath;

/// Where the log of `drv` goes.
pub fn log_path(log_dir: &Path, drv: &StorePath, compressed: bool) -> PathBuf {
    let base = drv.to_string();
    let (a, b) = base.split_at(2);
    let mut p = log_dir.join("drvs").join(a).join(b);
    if compressed {
        p.as_mut_os_string().push(".bz2");
    }
    p
}

/// The log of `drv`, decompressed; `None` when there is none.
pub fn read_log(log_dir: &Path, drv: &StorePath) -> std::io::Result<Option<Vec<u8>>> {
    let bz = log_path(log_dir, drv, true);
    match std::fs::File::open(&bz) {
        Ok(f) => {
            let mut out = Vec::new();
            bzip2::read::MultiBzDecoder::new(f).read_to_end(&mut out)?;
            return Ok(Some(out));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    match std::fs::read(log_path(log_dir, drv, false)) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

//! Scratch directories shared by the targets that touch the file system.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// `FERRIX_FUZZ_SHOW=1`: print each input's result (to check what a seed does).
#[allow(dead_code)]
pub fn show() -> bool {
    static S: OnceLock<bool> = OnceLock::new();
    *S.get_or_init(|| std::env::var_os("FERRIX_FUZZ_SHOW").is_some())
}

/// Where scratch directories go: /dev/shm when there is one (nothing reaches a disk).
#[allow(dead_code)]
pub fn base() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    }
}

/// A fresh `<base>/ferrix-fuzz-<what>-<pid>`, after removing those of processes that are
/// gone (libFuzzer exits without running destructors, so each run leaves its own behind).
pub fn scratch_dir(base: &Path, what: &str) -> PathBuf {
    let prefix = format!("ferrix-fuzz-{what}-");
    if let Ok(entries) = fs::read_dir(base) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix(&prefix) else {
                continue;
            };
            if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = base.join(format!("{prefix}{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

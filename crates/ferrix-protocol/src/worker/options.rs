//! The client's settings (`SetOptions`, op 19), which every Nix client sends right after the
//! greeting.
//!
//! On the wire: u64 keepFailed, keepGoing, tryFallback, verbosity, maxBuildJobs, maxSilentTime,
//! an obsolete useBuildHook (clients send 1), the verbosity of build output (clients send 0,
//! `lvlError`, to see build logs and 7, `lvlVomit`, not to), an obsolete log type (0), an
//! obsolete printBuildTrace (0), buildCores, useSubstitutes, then from 1.12 on a u64 count and
//! that many (name, value) string pairs: the settings the client overrides.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use super::stderr::verbosity;
use crate::wire::{
    read_bool, read_count, read_string, read_u64, write_bool, write_str, write_u64, Limits,
    WireError,
};
use crate::Version;

/// `SetOptions` carries the overridden settings from this version on.
pub const OVERRIDES_SINCE: Version = Version::new(1, 12);

/// What `SetOptions` carries. The obsolete fields are kept as sent, so that a message reads
/// back to the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    pub keep_failed: bool,
    pub keep_going: bool,
    pub try_fallback: bool,
    /// A [`verbosity`] level.
    pub verbosity: u64,
    pub max_build_jobs: u64,
    /// Seconds; 0 = no limit.
    pub max_silent_time: u64,
    /// Obsolete `useBuildHook` (Nix clients send 1).
    pub obsolete_use_build_hook: u64,
    /// The level build output is logged at: [`verbosity::ERROR`] when the client wants build
    /// logs ("verbose build"), [`verbosity::VOMIT`] when not. See
    /// [`ClientOptions::verbose_build`].
    pub build_verbosity: u64,
    /// Obsolete log type (Nix clients send 0).
    pub obsolete_log_type: u64,
    /// Obsolete `printBuildTrace` (Nix clients send 0).
    pub obsolete_print_build_trace: u64,
    /// 0 = all cores.
    pub build_cores: u64,
    pub use_substitutes: bool,
    /// [≥ 1.12] The settings the client overrides, by name (as in `nix.conf`).
    pub overrides: BTreeMap<String, String>,
}

impl Default for ClientOptions {
    /// What a Nix client with default settings sends (apart from the overrides).
    fn default() -> Self {
        Self {
            keep_failed: false,
            keep_going: false,
            try_fallback: false,
            verbosity: verbosity::INFO,
            max_build_jobs: 1,
            max_silent_time: 0,
            obsolete_use_build_hook: 1,
            build_verbosity: verbosity::ERROR,
            obsolete_log_type: 0,
            obsolete_print_build_trace: 0,
            build_cores: 0,
            use_substitutes: true,
            overrides: BTreeMap::new(),
        }
    }
}

impl ClientOptions {
    /// Whether the client wants build logs (what Nix's daemon makes of `build_verbosity`).
    pub fn verbose_build(&self) -> bool {
        self.build_verbosity == verbosity::ERROR
    }

    /// Read for the negotiated `version` (the op number already read). A setting overridden
    /// twice is refused (Nix clients send a map).
    pub fn read<R: Read + ?Sized>(
        r: &mut R,
        version: Version,
        limits: &Limits,
    ) -> Result<Self, WireError> {
        let mut o = Self {
            keep_failed: read_bool(r, "keepFailed of SetOptions")?,
            keep_going: read_bool(r, "keepGoing of SetOptions")?,
            try_fallback: read_bool(r, "tryFallback of SetOptions")?,
            verbosity: read_u64(r, "verbosity of SetOptions")?,
            max_build_jobs: read_u64(r, "maxBuildJobs of SetOptions")?,
            max_silent_time: read_u64(r, "maxSilentTime of SetOptions")?,
            obsolete_use_build_hook: read_u64(r, "useBuildHook of SetOptions")?,
            build_verbosity: read_u64(r, "build verbosity of SetOptions")?,
            obsolete_log_type: read_u64(r, "logType of SetOptions")?,
            obsolete_print_build_trace: read_u64(r, "printBuildTrace of SetOptions")?,
            build_cores: read_u64(r, "buildCores of SetOptions")?,
            use_substitutes: read_bool(r, "useSubstitutes of SetOptions")?,
            overrides: BTreeMap::new(),
        };
        if version >= OVERRIDES_SINCE {
            let n = read_count(r, limits, "overrides of SetOptions")?;
            for _ in 0..n {
                let name = read_string(r, limits, "name of an overridden setting")?;
                let value = read_string(r, limits, "value of an overridden setting")?;
                if o.overrides.contains_key(&name) {
                    return Err(WireError::unexpected(
                        "name of an overridden setting (sent twice)",
                        name,
                    ));
                }
                o.overrides.insert(name, value);
            }
        }
        Ok(o)
    }

    /// Write for the negotiated `version` (without the op number).
    pub fn write<W: Write + ?Sized>(&self, w: &mut W, version: Version) -> io::Result<()> {
        write_bool(w, self.keep_failed)?;
        write_bool(w, self.keep_going)?;
        write_bool(w, self.try_fallback)?;
        write_u64(w, self.verbosity)?;
        write_u64(w, self.max_build_jobs)?;
        write_u64(w, self.max_silent_time)?;
        write_u64(w, self.obsolete_use_build_hook)?;
        write_u64(w, self.build_verbosity)?;
        write_u64(w, self.obsolete_log_type)?;
        write_u64(w, self.obsolete_print_build_trace)?;
        write_u64(w, self.build_cores)?;
        write_bool(w, self.use_substitutes)?;
        if version >= OVERRIDES_SINCE {
            write_u64(w, self.overrides.len() as u64)?;
            for (k, v) in &self.overrides {
                write_str(w, k)?;
                write_str(w, v)?;
            }
        }
        Ok(())
    }

    /// What an untrusted client may override, as Nix's daemon decides (trusted clients may
    /// override anything but `experimental-features`; `ssh-auth-sock` is obsolete and ignored
    /// for everyone):
    ///
    /// - `timeout`, `repeat`, `connect-timeout`, and `builders` set to `""`: applied;
    /// - `substituters` (and its alias `binary-caches`): kept here, for the store to keep only
    ///   the substituters it trusts (listed in its own `substituters` or
    ///   `trusted-substituters`);
    /// - everything else: dropped.
    ///
    /// The overrides that remain, by name.
    pub fn allowed_overrides(&self, trusted: bool) -> BTreeMap<String, String> {
        self.overrides
            .iter()
            .filter(|(name, value)| match name.as_str() {
                "experimental-features" | "ssh-auth-sock" => false,
                _ if trusted => true,
                "timeout"
                | "repeat"
                | "connect-timeout"
                | "substituters"
                | "binary-caches"
                | "extra-substituters"
                | "extra-binary-caches" => true,
                "builders" => value.is_empty(),
                _ => false,
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

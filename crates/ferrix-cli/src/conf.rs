//! `nix.conf`: `name = value` lines, `#` comments, `include`/`!include`, later lines winning,
//! `extra-NAME` appending to a list. Every setting Nix 2.8 knows is in [`KNOWN`] with its type;
//! a value is checked and typed when it is set, so that a bad one is an error naming where it
//! came from (`FILE:LINE`, `NIX_CONFIG:LINE`, `--option NAME`), whatever the command; a name
//! nobody knows is remembered for a warning, as Nix does.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The type of a setting, deciding which values it takes (as Nix 2.8 parses them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `true`, `yes`, `1` or `false`, `no`, `0`.
    Bool,
    /// A non-negative integer below 2^32 (C's `unsigned int`).
    U32,
    /// A non-negative integer below 2^64.
    U64,
    /// A signed 64-bit integer (`time_t`, `off_t`).
    I64,
    /// `auto` or a [`Kind::U32`].
    MaxJobs,
    /// `true`, `false` or `relaxed`.
    Sandbox,
    /// Any text.
    Str,
    /// An absolute path, or nothing.
    Path,
    /// Words separated by white space; `extra-NAME` appends.
    List,
}

/// `max-jobs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxJobs {
    /// As many as the machine has CPUs.
    Auto,
    N(u32),
}

/// `sandbox`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxMode {
    On,
    Off,
    /// On, but derivations with `__noChroot` may build outside.
    Relaxed,
}

/// A setting's value, typed by its [`Kind`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Bool(bool),
    UInt(u64),
    Int(i64),
    MaxJobs(MaxJobs),
    Sandbox(SandboxMode),
    /// [`Kind::Str`] and [`Kind::Path`].
    Str(String),
    List(Vec<String>),
}

/// A known setting: its name, its type, and the old names Nix still accepts for it.
#[derive(Debug)]
pub struct Known {
    pub name: &'static str,
    pub kind: Kind,
    pub aliases: &'static [&'static str],
}

const fn k(name: &'static str, kind: Kind) -> Known {
    Known {
        name,
        kind,
        aliases: &[],
    }
}

const fn ka(name: &'static str, kind: Kind, aliases: &'static [&'static str]) -> Known {
    Known {
        name,
        kind,
        aliases,
    }
}

/// Every setting of Nix 2.8's `nix show-config` on Linux, with its type and aliases (the
/// types checked against real Nix: which values it refuses). Ferrix uses some of them; the
/// others are checked by type, so that a `nix.conf` written for Nix works unchanged here.
pub const KNOWN: &[Known] = {
    use Kind::*;
    &[
        // Newer than 2.8: `builtins.warn` aborts the evaluation.
        k("abort-on-warn", Bool),
        k("accept-flake-config", Bool),
        k("access-tokens", List),
        k("allow-dirty", Bool),
        k("allow-import-from-derivation", Bool),
        k("allow-new-privileges", Bool),
        k("allow-symlinked-store", Bool),
        k("always-allow-substitutes", Bool),
        k("allow-unsafe-native-code-during-evaluation", Bool),
        k("allowed-impure-host-deps", List),
        k("allowed-uris", List),
        k("allowed-users", List),
        k("auto-optimise-store", Bool),
        k("bash-prompt", Str),
        k("bash-prompt-suffix", Str),
        k("build-hook", Path),
        k("build-poll-interval", U32),
        k("build-users-group", Str),
        k("builders", Str),
        k("builders-use-substitutes", Bool),
        k("commit-lockfile-summary", Str),
        ka("compress-build-log", Bool, &["build-compress-log"]),
        k("connect-timeout", U64),
        ka("cores", U32, &["build-cores"]),
        k("diff-hook", Path),
        k("download-attempts", U32),
        k("enforce-determinism", Bool),
        k("eval-cache", Bool),
        k("experimental-features", List),
        k("extra-platforms", List),
        ka("fallback", Bool, &["build-fallback"]),
        k("filter-syscalls", Bool),
        k("flake-registry", Str),
        k("fsync-metadata", Bool),
        k("gc-reserved-space", I64),
        k("hashed-mirrors", List),
        ka(
            "http-connections",
            U64,
            &["binary-caches-parallel-connections"],
        ),
        k("http2", Bool),
        k("ignored-acls", List),
        ka(
            "impersonate-linux-26",
            Bool,
            &["build-impersonate-linux-26"],
        ),
        ka("keep-build-log", Bool, &["build-keep-log"]),
        ka("keep-derivations", Bool, &["gc-keep-derivations"]),
        ka("keep-env-derivations", Bool, &["env-keep-derivations"]),
        k("keep-failed", Bool),
        k("keep-going", Bool),
        ka("keep-outputs", Bool, &["gc-keep-outputs"]),
        k("log-lines", U64),
        ka("max-build-log-size", U64, &["build-max-log-size"]),
        k("max-free", U64),
        ka("max-jobs", MaxJobs, &["build-max-jobs"]),
        ka("max-silent-time", I64, &["build-max-silent-time"]),
        // Newer Nix's: substitutions at once, besides builds.
        k("max-substitution-jobs", U64),
        k("min-free", U64),
        k("min-free-check-interval", U64),
        k("nar-buffer-size", U64),
        k("narinfo-cache-meta-ttl", U32),
        k("narinfo-cache-negative-ttl", U32),
        k("narinfo-cache-positive-ttl", U32),
        k("netrc-file", Str),
        k("nix-path", List),
        k("plugin-files", List),
        k("post-build-hook", Str),
        k("pre-build-hook", Str),
        k("preallocate-contents", Bool),
        k("print-missing", Bool),
        k("pure-eval", Bool),
        ka("repeat", U64, &["build-repeat"]),
        k("require-sigs", Bool),
        k("restrict-eval", Bool),
        k("run-diff-hook", Bool),
        ka(
            "sandbox",
            Sandbox,
            &["build-use-chroot", "build-use-sandbox"],
        ),
        k("sandbox-build-dir", Str),
        k("sandbox-dev-shm-size", Str),
        k("sandbox-fallback", Bool),
        ka(
            "sandbox-paths",
            List,
            &["build-chroot-dirs", "build-sandbox-paths"],
        ),
        k("secret-key-files", List),
        k("show-trace", Bool),
        k("ssl-cert-file", Str),
        k("stalled-download-timeout", U64),
        k("store", Str),
        ka("substitute", Bool, &["build-use-substitutes"]),
        ka("substituters", List, &["binary-caches"]),
        k("sync-before-registering", Bool),
        k("system", Str),
        k("system-features", List),
        k("tarball-ttl", U32),
        ka("timeout", I64, &["build-timeout"]),
        k("trace-function-calls", Bool),
        ka("trusted-public-keys", List, &["binary-cache-public-keys"]),
        ka("trusted-substituters", List, &["trusted-binary-caches"]),
        k("trusted-users", List),
        k("use-case-hack", Bool),
        k("use-registries", Bool),
        k("use-sqlite-wal", Bool),
        k("user-agent-suffix", Str),
        k("warn-dirty", Bool),
    ]
};

/// The known setting called `name` (or one of its aliases).
pub fn known(name: &str) -> Option<&'static Known> {
    KNOWN
        .iter()
        .find(|s| s.name == name || s.aliases.contains(&name))
}

/// `value` as a value of `s`, or what is wrong with it (worded as Nix words it, with what
/// was expected).
fn parse_value(s: &Known, value: &str) -> std::result::Result<Value, String> {
    let name = s.name;
    let int_error = |expected: &str| {
        let out_of_range = value.parse::<i128>().is_ok();
        if out_of_range {
            format!("setting '{name}' has invalid value '{value}' (out of range: {expected})")
        } else {
            format!("setting '{name}' has invalid value '{value}' (expected {expected})")
        }
    };
    Ok(match s.kind {
        Kind::Bool => Value::Bool(match value {
            "true" | "yes" | "1" => true,
            "false" | "no" | "0" => false,
            _ => {
                return Err(format!(
                    "Boolean setting '{name}' has invalid value '{value}' (expected 'true' or 'false')"
                ))
            }
        }),
        Kind::U32 => Value::UInt(
            value
                .parse::<u32>()
                .map_err(|_| int_error("an integer from 0 to 4294967295"))?
                .into(),
        ),
        Kind::U64 => Value::UInt(
            value
                .parse::<u64>()
                .map_err(|_| int_error("an integer from 0 to 18446744073709551615"))?,
        ),
        Kind::I64 => Value::Int(value.parse::<i64>().map_err(|_| int_error("an integer"))?),
        Kind::MaxJobs => Value::MaxJobs(match value {
            "auto" => MaxJobs::Auto,
            _ => MaxJobs::N(value.parse::<u32>().map_err(|_| {
                format!("configuration setting '{name}' should be 'auto' or an integer, not '{value}'")
            })?),
        }),
        Kind::Sandbox => Value::Sandbox(match value {
            "true" => SandboxMode::On,
            "false" => SandboxMode::Off,
            "relaxed" => SandboxMode::Relaxed,
            _ => {
                return Err(format!(
                    "option '{name}' has invalid value '{value}' (expected 'true', 'false' or 'relaxed')"
                ))
            }
        }),
        Kind::Str => Value::Str(value.to_owned()),
        Kind::Path => {
            if !value.is_empty() && !value.starts_with('/') {
                return Err(format!(
                    "setting '{name}' has invalid value '{value}' (expected an absolute path)"
                ));
            }
            Value::Str(value.to_owned())
        }
        Kind::List => Value::List(value.split_ascii_whitespace().map(str::to_owned).collect()),
    })
}

#[derive(Debug, Clone)]
struct Entry {
    /// As given (lists: their words joined by one space).
    raw: String,
    value: Value,
}

/// Settings read from configuration files, the environment and flags, typed, by name.
#[derive(Debug, Clone, Default)]
pub struct NixConf {
    values: BTreeMap<&'static str, Entry>,
    unknown: BTreeSet<String>,
}

impl NixConf {
    /// Read `file` if it exists (a missing file is an empty configuration).
    pub fn load(&mut self, file: &Path) -> Result<()> {
        self.load_inner(file, true, 0)
    }

    fn load_inner(&mut self, file: &Path, optional: bool, depth: u32) -> Result<()> {
        if depth > 16 {
            bail!("'{}': includes nest too deeply", file.display());
        }
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("reading '{}'", file.display())),
        };
        let dir = file.parent().unwrap_or(Path::new("."));
        self.parse(&text, &file.display().to_string(), dir, depth)
    }

    /// `nix.conf` text from somewhere other than a file (`NIX_CONFIG`): `source` names it in
    /// errors, and relative includes are relative to the current directory.
    pub fn apply_text(&mut self, text: &str, source: &str) -> Result<()> {
        self.parse(text, source, Path::new("."), 0)
    }

    fn parse(&mut self, text: &str, source: &str, dir: &Path, depth: u32) -> Result<()> {
        for (i, raw) in text.lines().enumerate() {
            let at = format!("{source}:{}", i + 1);
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            if matches!(words[0], "include" | "!include") {
                if words.len() != 2 {
                    bail!("{at}: syntax error in configuration line '{raw}'");
                }
                let inc = PathBuf::from(words[1]);
                let inc = if inc.is_absolute() {
                    inc
                } else {
                    dir.join(inc)
                };
                self.load_inner(&inc, words[0] == "!include", depth + 1)
                    .with_context(|| format!("{at}: included here"))?;
                continue;
            }
            let Some((name, value)) = line.split_once('=') else {
                bail!("{at}: syntax error in configuration line '{raw}'");
            };
            let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
            self.set(name.trim(), &value, &at)?;
        }
        Ok(())
    }

    /// Set `name` (or, for `extra-NAME` of a list, append to it) from `value`, which must
    /// be of the setting's type; `origin` says where it came from (`FILE:LINE`,
    /// `--option NAME`, a flag), for the error. An unknown name is remembered for a warning.
    pub fn set(&mut self, name: &str, value: &str, origin: &str) -> Result<()> {
        let (setting, append) = match known(name) {
            Some(s) => (s, false),
            None => match name.strip_prefix("extra-").and_then(known) {
                Some(s) if s.kind == Kind::List => (s, true),
                _ => {
                    self.unknown.insert(name.to_owned());
                    return Ok(());
                }
            },
        };
        let parsed = parse_value(setting, value).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        if let (true, Value::List(more)) = (append, &parsed) {
            if let Some(Entry {
                raw,
                value: Value::List(words),
            }) = self.values.get_mut(setting.name)
            {
                words.extend(more.iter().cloned());
                *raw = words.join(" ");
                return Ok(());
            }
        }
        let raw = match &parsed {
            Value::List(words) => words.join(" "),
            _ => value.to_owned(),
        };
        self.values
            .insert(setting.name, Entry { raw, value: parsed });
        Ok(())
    }

    /// The names set that no known setting has, sorted, each once: for `warning: unknown
    /// setting 'NAME'`.
    pub fn unknown(&self) -> impl Iterator<Item = &str> {
        self.unknown.iter().map(String::as_str)
    }

    /// The value of `name` (or of the setting it is an alias of), if it was set.
    pub fn value(&self, name: &str) -> Option<&Value> {
        let s = known(name)?;
        self.values.get(s.name).map(|e| &e.value)
    }

    /// The value of `name` as text (a list: its words joined by one space), if it was set.
    pub fn get(&self, name: &str) -> Option<&str> {
        let s = known(name)?;
        self.values.get(s.name).map(|e| e.raw.as_str())
    }

    /// A boolean setting, or `default`.
    pub fn bool(&self, name: &str, default: bool) -> Result<bool> {
        match self.value(name) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => bail!("setting '{name}' is not a Boolean but {v:?}"),
        }
    }

    /// An unsigned integer setting, if set.
    pub fn uint(&self, name: &str) -> Option<u64> {
        match self.value(name) {
            Some(Value::UInt(n)) => Some(*n),
            _ => None,
        }
    }

    /// A signed integer setting, if set.
    pub fn int(&self, name: &str) -> Option<i64> {
        match self.value(name) {
            Some(Value::Int(n)) => Some(*n),
            _ => None,
        }
    }

    /// A list setting (empty if unset).
    pub fn list(&self, name: &str) -> &[String] {
        match self.value(name) {
            Some(Value::List(words)) => words,
            _ => &[],
        }
    }

    /// `max-jobs`, if set.
    pub fn max_jobs(&self) -> Option<MaxJobs> {
        match self.value("max-jobs") {
            Some(Value::MaxJobs(m)) => Some(*m),
            _ => None,
        }
    }

    /// `sandbox`, if set.
    pub fn sandbox(&self) -> Option<SandboxMode> {
        match self.value("sandbox") {
            Some(Value::Sandbox(m)) => Some(*m),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_nix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("extra.conf"), "keep-outputs = true\n").unwrap();
        let main = dir.path().join("nix.conf");
        std::fs::write(
            &main,
            "# comment\nsandbox = false  # trailing\nsubstituters =\ninclude extra.conf\n!include missing.conf\nextra-substituters = a\nextra-substituters = b\n",
        )
        .unwrap();
        let mut c = NixConf::default();
        c.load(&main).unwrap();
        assert_eq!(c.get("sandbox"), Some("false"));
        assert_eq!(c.sandbox(), Some(SandboxMode::Off));
        assert_eq!(c.get("substituters"), Some("a b"));
        assert_eq!(c.list("substituters"), ["a", "b"]);
        assert!(c.bool("keep-outputs", false).unwrap());
        assert!(c.bool("keep-derivations", true).unwrap());
        assert_eq!(c.unknown().count(), 0);
        std::fs::write(&main, "include missing.conf\n").unwrap();
        assert!(NixConf::default().load(&main).is_err());
        std::fs::write(&main, "what\n").unwrap();
        let e = NixConf::default().load(&main).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}:1: syntax error in configuration line 'what'",
                main.display()
            )
        );
    }

    fn error(text: &str) -> String {
        let mut c = NixConf::default();
        format!("{:#}", c.apply_text(text, "nix.conf").unwrap_err())
    }

    #[test]
    fn bad_values_name_file_and_line() {
        assert_eq!(
            error("sandbox = false\n\nmax-jobs = -3\n"),
            "nix.conf:3: configuration setting 'max-jobs' should be 'auto' or an integer, not '-3'"
        );
        assert_eq!(
            error("# c\ncores = abc\n"),
            "nix.conf:2: setting 'cores' has invalid value 'abc' (expected an integer from 0 to 4294967295)"
        );
        assert_eq!(
            error("cores = 4294967296\n"),
            "nix.conf:1: setting 'cores' has invalid value '4294967296' (out of range: an integer from 0 to 4294967295)"
        );
        assert_eq!(
            error("keep-outputs = maybe\n"),
            "nix.conf:1: Boolean setting 'keep-outputs' has invalid value 'maybe' (expected 'true' or 'false')"
        );
        assert_eq!(
            error("sandbox = on\n"),
            "nix.conf:1: option 'sandbox' has invalid value 'on' (expected 'true', 'false' or 'relaxed')"
        );
        assert_eq!(
            error("timeout = 1.5\n"),
            "nix.conf:1: setting 'timeout' has invalid value '1.5' (expected an integer)"
        );
        assert_eq!(
            error("diff-hook = bin/diff\n"),
            "nix.conf:1: setting 'diff-hook' has invalid value 'bin/diff' (expected an absolute path)"
        );
        // An alias is reported under the setting's name, as Nix does; two words are one value.
        assert_eq!(
            error("build-max-jobs = 3 4\n"),
            "nix.conf:1: configuration setting 'max-jobs' should be 'auto' or an integer, not '3 4'"
        );
        // Unused settings are checked by type too.
        assert!(error("narinfo-cache-negative-ttl = -1\n").contains("'narinfo-cache-negative-ttl'"));
        assert!(error("http2 = maybe\n").contains("'http2'"));
    }

    #[test]
    fn an_included_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("inc.conf"), "\nmax-jobs = x\n").unwrap();
        let main = dir.path().join("nix.conf");
        std::fs::write(&main, "include inc.conf\n").unwrap();
        let e = format!("{:#}", NixConf::default().load(&main).unwrap_err());
        assert_eq!(
            e,
            format!(
                "{}:1: included here: {}:2: configuration setting 'max-jobs' should be 'auto' or an integer, not 'x'",
                main.display(),
                dir.path().join("inc.conf").display()
            )
        );
    }

    #[test]
    fn typed_values_as_nix_takes_them() {
        let mut c = NixConf::default();
        c.apply_text(
            "keep-outputs = yes\nkeep-derivations = 0\nmax-jobs = auto\ncores = +4\nmax-silent-time = -1\nsandbox = relaxed\nbuild-hook =\nstore = local?root=/x  \nmin-free = 18446744073709551615\n",
            "t",
        )
        .unwrap();
        assert!(c.bool("keep-outputs", false).unwrap());
        assert!(!c.bool("gc-keep-derivations", true).unwrap());
        assert_eq!(c.max_jobs(), Some(MaxJobs::Auto));
        assert_eq!(c.uint("cores"), Some(4));
        assert_eq!(c.uint("build-cores"), Some(4));
        assert_eq!(c.int("max-silent-time"), Some(-1));
        assert_eq!(c.sandbox(), Some(SandboxMode::Relaxed));
        assert_eq!(c.get("build-hook"), Some(""));
        assert_eq!(c.get("store"), Some("local?root=/x"));
        assert_eq!(c.uint("min-free"), Some(u64::MAX));
        assert_eq!(c.get("timeout"), None);
        c.set("max-jobs", "0", "--option max-jobs").unwrap();
        assert_eq!(c.max_jobs(), Some(MaxJobs::N(0)));
        let e = c.set("max-jobs", "-3", "--option max-jobs").unwrap_err();
        assert_eq!(
            e.to_string(),
            "--option max-jobs: configuration setting 'max-jobs' should be 'auto' or an integer, not '-3'"
        );
        // A refused value leaves the old one.
        assert_eq!(c.max_jobs(), Some(MaxJobs::N(0)));
    }

    #[test]
    fn extra_appends_and_unknown_names_are_kept_once() {
        let mut c = NixConf::default();
        c.apply_text(
            "foo = 1\nfoo = 2\nbar-x = 1\nextra-foo = 3\nextra-cores = 3\nsandbox-paths = /a\nextra-build-sandbox-paths = /b /c\nextra-platforms = i686-linux\nextra-extra-platforms = x\n",
            "t",
        )
        .unwrap();
        c.set("extra-sandbox-paths", "/d", "--option extra-sandbox-paths")
            .unwrap();
        assert_eq!(c.list("sandbox-paths"), ["/a", "/b", "/c", "/d"]);
        assert_eq!(c.get("sandbox-paths"), Some("/a /b /c /d"));
        assert_eq!(c.list("extra-platforms"), ["i686-linux", "x"]);
        // `extra-` of a list that was never set starts it; a plain set replaces.
        c.set("extra-trusted-users", "alice", "t").unwrap();
        assert_eq!(c.list("trusted-users"), ["alice"]);
        c.set("sandbox-paths", "/e", "t").unwrap();
        assert_eq!(c.list("sandbox-paths"), ["/e"]);
        // Not a list: `extra-cores` is unknown, as in Nix.
        assert_eq!(c.uint("cores"), None);
        c.set("foo", "again", "--option foo").unwrap();
        assert_eq!(
            c.unknown().collect::<Vec<_>>(),
            ["bar-x", "extra-cores", "extra-foo", "foo"]
        );
        assert_eq!(c.get("foo"), None);
    }

    #[test]
    fn the_table_is_consistent() {
        let mut names = BTreeSet::new();
        for s in KNOWN {
            for n in std::iter::once(&s.name).chain(s.aliases) {
                assert!(names.insert(*n), "'{n}' is in the table twice");
            }
        }
        assert!(KNOWN.len() >= 91, "every setting of Nix 2.8's show-config");
    }
}

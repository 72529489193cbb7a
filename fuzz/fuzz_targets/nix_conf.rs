//! Text into the `nix.conf` reader of the `ferrix` binary, compiled in from its source file
//! (it needs only std and anyhow), so that crates/ferrix-cli is not changed.
//!
//! The input is written to `self.conf` in a scratch directory and read with `NixConf::load`,
//! so includes are followed for real, relative to that directory, which also holds
//! `a.conf`, `bad.conf` (a bad value) and `loop.conf` (includes itself); `include self.conf`
//! includes the input itself. Inputs that would include any other file (a `/` in the path,
//! or another name) are skipped, so that nothing outside the directory is ever read.
//!
//! Properties:
//! * an error names the file and a line of the input (`…/self.conf:N: …`);
//! * every setting that was set holds a value of its declared type (aliases give the same
//!   value), and its text (`get`) set again on a fresh configuration, directly or as a
//!   `name = text` line, gives the same typed value and text;
//! * unknown names are remembered, each once, sorted, and none of them is a known setting;
//! * without includes, `apply_text` (`NIX_CONFIG`) gives the same result as the file.
#![no_main]

mod common;

#[allow(dead_code)]
#[path = "../../crates/ferrix-cli/src/conf.rs"]
mod conf;

use std::path::PathBuf;
use std::sync::OnceLock;

use conf::{Kind, NixConf, Value, KNOWN};
use libfuzzer_sys::fuzz_target;

const INCLUDABLE: &[&str] = &[
    "a.conf",
    "bad.conf",
    "loop.conf",
    "self.conf",
    "missing.conf",
];

/// The input's file in the scratch directory.
fn input_file() -> &'static PathBuf {
    static S: OnceLock<PathBuf> = OnceLock::new();
    S.get_or_init(|| {
        let dir = common::scratch_dir(&common::base(), "conf");
        std::fs::write(
            dir.join("a.conf"),
            "cores = 3\nextra-substituters = https://a\n",
        )
        .unwrap();
        std::fs::write(dir.join("bad.conf"), "\nmax-jobs = lots\n").unwrap();
        std::fs::write(
            dir.join("loop.conf"),
            "sandbox = relaxed\ninclude loop.conf\n",
        )
        .unwrap();
        dir.join("self.conf")
    })
}

/// The words of each line that is an include, as the reader splits them.
fn includes(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines().filter_map(|raw| {
        let line = raw.split('#').next().unwrap_or("").trim();
        let words: Vec<&str> = line.split_whitespace().collect();
        matches!(words.first(), Some(&("include" | "!include"))).then_some(words)
    })
}

fn check_type(kind: Kind, v: &Value) {
    let ok = match (kind, v) {
        (Kind::Bool, Value::Bool(_)) => true,
        (Kind::U32, Value::UInt(n)) => *n <= u64::from(u32::MAX),
        (Kind::U64, Value::UInt(_)) => true,
        (Kind::I64, Value::Int(_)) => true,
        (Kind::MaxJobs, Value::MaxJobs(_)) => true,
        (Kind::Sandbox, Value::Sandbox(_)) => true,
        (Kind::Str, Value::Str(_)) => true,
        (Kind::Path, Value::Str(s)) => s.is_empty() || s.starts_with('/'),
        (Kind::List, Value::List(words)) => words
            .iter()
            .all(|w| !w.is_empty() && !w.contains(|c: char| c.is_ascii_whitespace())),
        _ => false,
    };
    assert!(ok, "{kind:?} setting holds {v:?}");
}

/// Everything a configuration says, for comparisons.
fn summary(
    c: &NixConf,
) -> (
    Vec<(&'static str, Option<Value>, Option<String>)>,
    Vec<String>,
) {
    let values = KNOWN
        .iter()
        .map(|k| {
            (
                k.name,
                c.value(k.name).cloned(),
                c.get(k.name).map(str::to_owned),
            )
        })
        .collect();
    (values, c.unknown().map(str::to_owned).collect())
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut has_includes = false;
    for words in includes(text) {
        has_includes = true;
        if words.len() == 2 && !INCLUDABLE.contains(&words[1]) {
            return;
        }
    }
    let file = input_file();
    std::fs::write(file, data).unwrap();
    let mut c = NixConf::default();
    let result = c.load(file);
    if common::show() {
        eprintln!("load: {:?}", result.as_ref().map_err(|e| format!("{e:#}")));
    }
    if let Err(e) = &result {
        let msg = e.to_string();
        let rest = msg
            .strip_prefix(&format!("{}:", file.display()))
            .unwrap_or_else(|| panic!("error does not name its file: {msg}"));
        let n: usize = rest
            .split(':')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("error does not name its line: {msg}"));
        let lines = text.lines().count();
        assert!(n >= 1 && n <= lines, "line {n} of {lines}: {msg}");
    }
    // Whatever was set (an error keeps what came before it) is typed and round trips.
    for k in KNOWN {
        let Some(v) = c.value(k.name) else {
            assert!(c.get(k.name).is_none());
            continue;
        };
        check_type(k.kind, v);
        for alias in k.aliases {
            assert_eq!(c.value(alias), Some(v));
        }
        let raw = c.get(k.name).expect("a value without its text");
        let mut fresh = NixConf::default();
        fresh
            .set(k.name, raw, "again")
            .unwrap_or_else(|e| panic!("'{} = {raw}' no longer parses: {e}", k.name));
        assert_eq!(fresh.value(k.name), Some(v), "'{} = {raw}'", k.name);
        assert_eq!(fresh.get(k.name), Some(raw));
        let mut fresh = NixConf::default();
        fresh
            .apply_text(&format!("{} = {raw}\n", k.name), "again")
            .unwrap_or_else(|e| panic!("'{} = {raw}' no longer parses as a line: {e}", k.name));
        assert_eq!(fresh.value(k.name), Some(v), "'{} = {raw}'", k.name);
        assert_eq!(fresh.get(k.name), Some(raw));
    }
    let unknown: Vec<&str> = c.unknown().collect();
    let mut sorted = unknown.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(unknown, sorted);
    for u in unknown {
        assert!(
            conf::known(u).is_none(),
            "known setting '{u}' reported unknown"
        );
    }
    // NIX_CONFIG reads the same text the same way.
    if !has_includes {
        let mut env = NixConf::default();
        let r = env.apply_text(text, "NIX_CONFIG");
        assert_eq!(r.is_ok(), result.is_ok());
        if let (Err(a), Err(b)) = (&r, &result) {
            let strip = |m: String, p: &str| m.strip_prefix(p).map(str::to_owned);
            assert_eq!(
                strip(a.to_string(), "NIX_CONFIG"),
                strip(b.to_string(), &file.display().to_string())
            );
        }
        assert_eq!(summary(&env), summary(&c));
    }
});

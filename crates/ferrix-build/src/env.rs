//! The builder's environment, exactly as Nix 2.8 sets it up (`initEnv`, `initTmpDir`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use ferrix_format::{Derivation, Encoding, Hash};
use serde_json::{Map, Value};

use crate::attrs::{attrs_sh, rewrite, Attrs};

/// What the environment depends on besides the derivation.
#[derive(Debug, Clone)]
pub struct EnvContext<'a> {
    pub store_dir: &'a str,
    /// The build directory as the builder sees it.
    pub build_top: &'a str,
    pub cores: usize,
    /// Values for `impureEnvVars`, passed only to fixed-output derivations.
    pub impure: &'a BTreeMap<String, String>,
    /// Output placeholders and the paths they stand for.
    pub rewrites: &'a [(String, String)],
}

/// Files to write into the build directory before the builder starts (`passAsFile`,
/// `.attrs.json`, `.attrs.sh`).
pub type ExtraFiles = Vec<(String, Vec<u8>)>;

/// The environment and the files for the build directory, in Nix's order: defaults, then
/// the derivation's variables (which may override `PATH` and `HOME`; with structured
/// attributes, none: `structured` holds them, as prepared for `.attrs.json`), then the
/// build-directory variables, the fixed-output extras, `NIX_LOG_FD` and `TERM`. Output
/// placeholders are replaced everywhere by the paths they stand for.
pub fn builder_env(
    drv: &Derivation,
    attrs: &Attrs<'_>,
    structured: Option<&Map<String, Value>>,
    cx: &EnvContext<'_>,
) -> Result<(BTreeMap<String, String>, ExtraFiles), String> {
    let mut env = BTreeMap::new();
    let mut files = Vec::new();
    env.insert("PATH".into(), "/path-not-set".into());
    env.insert("HOME".into(), "/homeless-shelter".into());
    env.insert("NIX_STORE".into(), cx.store_dir.into());
    env.insert("NIX_BUILD_CORES".into(), cx.cores.to_string());
    match structured {
        None => {
            let pass_as_file: BTreeSet<&str> = drv
                .env
                .get("passAsFile")
                .map(|v| v.split_ascii_whitespace().collect())
                .unwrap_or_default();
            for (k, v) in &drv.env {
                if pass_as_file.contains(k.as_str()) {
                    let fname = format!(
                        ".attr-{}",
                        Hash::sha256(k.as_bytes()).encode(Encoding::Nix32)
                    );
                    env.insert(format!("{k}Path"), format!("{}/{fname}", cx.build_top));
                    files.push((fname, rewrite(v, cx.rewrites).into_bytes()));
                } else {
                    env.insert(k.clone(), v.clone());
                }
            }
        }
        Some(json) => {
            let json_text = serde_json::to_string(json).map_err(|e| e.to_string())?;
            files.push((
                ".attrs.json".into(),
                rewrite(&json_text, cx.rewrites).into_bytes(),
            ));
            files.push((
                ".attrs.sh".into(),
                rewrite(&attrs_sh(json), cx.rewrites).into_bytes(),
            ));
            // Nix 2.8 gives the host's path here even in the sandbox; later Nix fixed that.
            let top = cx.build_top;
            env.insert("NIX_ATTRS_JSON_FILE".into(), format!("{top}/.attrs.json"));
            env.insert("NIX_ATTRS_SH_FILE".into(), format!("{top}/.attrs.sh"));
        }
    }
    for k in ["NIX_BUILD_TOP", "TMPDIR", "TEMPDIR", "TMP", "TEMP", "PWD"] {
        env.insert(k.into(), cx.build_top.into());
    }
    if drv.fixed_output().is_some() {
        env.insert("NIX_OUTPUT_CHECKED".into(), "1".into());
        for n in attrs.strings("impureEnvVars")?.unwrap_or_default() {
            let v = cx.impure.get(&n).cloned().unwrap_or_default();
            env.insert(n, v);
        }
    }
    env.insert("NIX_LOG_FD".into(), "2".into());
    env.insert("TERM".into(), "xterm-256color".into());
    for v in env.values_mut() {
        *v = rewrite(v, cx.rewrites);
    }
    Ok((env, files))
}

/// `nix-build-<drv name>-<n>` under `base`: the first free name.
pub fn build_dir_name(base: &Path, drv_name: &str, n: u64) -> std::path::PathBuf {
    base.join(format!("nix-build-{drv_name}-{n}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_as_file_and_overrides() {
        let mut drv = Derivation {
            outputs: Default::default(),
            input_drvs: Default::default(),
            input_srcs: Default::default(),
            platform: "x86_64-linux".into(),
            builder: "/bin/sh".into(),
            args: vec![],
            env: BTreeMap::new(),
        };
        drv.env.insert("passAsFile".into(), "big".into());
        drv.env.insert("big".into(), "lots".into());
        drv.env.insert("PATH".into(), "/mine".into());
        drv.env.insert("TMPDIR".into(), "/not-allowed".into());
        let impure = BTreeMap::new();
        let cx = EnvContext {
            store_dir: "/nix/store",
            build_top: "/build",
            cores: 3,
            impure: &impure,
            rewrites: &[],
        };
        let (env, files) = builder_env(&drv, &Attrs::of(&drv).unwrap(), None, &cx).unwrap();
        assert_eq!(env["PATH"], "/mine");
        assert_eq!(env["TMPDIR"], "/build");
        assert_eq!(env["NIX_BUILD_CORES"], "3");
        assert!(!env.contains_key("big"));
        let name = &files[0].0;
        assert_eq!(env["bigPath"], format!("/build/{name}"));
        assert_eq!(files[0].1, b"lots");
        assert!(!env.contains_key("NIX_OUTPUT_CHECKED"));
    }
}

//! Hashing derivations modulo fixed-output inputs, and the output paths that follow.

use std::collections::{BTreeMap, BTreeSet};

use thiserror::Error;

use super::{drv_name, Derivation, DerivationOutput};
use crate::hash::Hash;
use crate::store_path::{
    fixed_inner_fingerprint, output_path_name, StoreDir, StorePath, StorePathError,
};

/// The hash that stands in for a derivation when others depend on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrvHash {
    /// One hash for every output (input-addressed derivations).
    Regular(Hash),
    /// Fixed-output derivations: the hash of `fixed:out:<algo>:<hash>:<path>` per output, so
    /// that changing how a fixed output is fetched does not change its dependants.
    Fixed(BTreeMap<String, Hash>),
}

/// Why a derivation could not be hashed or its outputs computed.
#[derive(Debug, Error)]
pub enum DrvHashError<E: std::error::Error + 'static> {
    #[error("looking up input derivation '{drv}'")]
    Input {
        drv: String,
        #[source]
        source: E,
    },
    #[error("input derivation '{drv}' has no output '{output}'")]
    MissingOutput { drv: String, output: String },
    #[error("{0}")]
    StorePath(#[from] StorePathError),
}

impl Derivation {
    /// Nix's `hashDerivationModulo`. `input_hash` gives the (unmasked) hash of each input
    /// derivation; callers memoise it, since inputs are shared across a graph.
    pub fn hash_modulo<E, F>(
        &self,
        store_dir: &StoreDir,
        mask_outputs: bool,
        mut input_hash: F,
    ) -> Result<DrvHash, DrvHashError<E>>
    where
        E: std::error::Error + 'static,
        F: FnMut(&StorePath) -> Result<DrvHash, E>,
    {
        if let Some((method, hash, path)) = self.fixed_output() {
            let text = format!(
                "{}{}",
                fixed_inner_fingerprint(method, hash),
                store_dir.display(path)
            );
            let mut m = BTreeMap::new();
            m.insert("out".to_owned(), Hash::sha256(text.as_bytes()));
            return Ok(DrvHash::Fixed(m));
        }
        let mut replaced: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (drv, outputs) in &self.input_drvs {
            let h = input_hash(drv).map_err(|source| DrvHashError::Input {
                drv: store_dir.display(drv),
                source,
            })?;
            match h {
                DrvHash::Regular(h) => {
                    replaced
                        .entry(h.to_base16())
                        .or_default()
                        .extend(outputs.iter().cloned());
                }
                DrvHash::Fixed(per_output) => {
                    for o in outputs {
                        let h = per_output
                            .get(o)
                            .ok_or_else(|| DrvHashError::MissingOutput {
                                drv: store_dir.display(drv),
                                output: o.clone(),
                            })?;
                        replaced.entry(h.to_base16()).or_default().insert(o.clone());
                    }
                }
            }
        }
        let inputs: Vec<(String, &BTreeSet<String>)> =
            replaced.iter().map(|(k, v)| (k.clone(), v)).collect();
        let text = self.write_aterm(store_dir, &inputs, mask_outputs);
        Ok(DrvHash::Regular(Hash::sha256(text.as_bytes())))
    }

    /// Fill in the paths of input-addressed outputs (and their env variables), as evaluation
    /// does: mask, hash modulo, then `output:<name>` paths. Fixed outputs are left alone.
    pub fn fill_input_addressed_outputs<E, F>(
        &mut self,
        store_dir: &StoreDir,
        name: &str,
        input_hash: F,
    ) -> Result<(), DrvHashError<E>>
    where
        E: std::error::Error + 'static,
        F: FnMut(&StorePath) -> Result<DrvHash, E>,
    {
        if self.fixed_output().is_some() {
            return Ok(());
        }
        let DrvHash::Regular(h) = self.hash_modulo(store_dir, true, input_hash)? else {
            return Ok(());
        };
        let names: Vec<String> = self.outputs.keys().cloned().collect();
        for o in names {
            let p = store_dir.make_output_path(&o, &h, name)?;
            self.env.insert(o.clone(), store_dir.display(&p));
            self.outputs.insert(o, DerivationOutput::InputAddressed(p));
        }
        Ok(())
    }

    /// Check that this derivation, at `drv_path`, is one Nix would accept: at least one
    /// output, its kinds of output not mixed, and every output path (and the environment
    /// variable naming it) the one computed from its contents. This is how a `.drv` from
    /// elsewhere is checked before it is registered or built: a forged one could otherwise
    /// claim another derivation's output path.
    pub fn check_outputs<E, F>(
        &self,
        store_dir: &StoreDir,
        drv_path: &StorePath,
        input_hash: F,
    ) -> Result<(), DrvCheckError<E>>
    where
        E: std::error::Error + 'static,
        F: FnMut(&StorePath) -> Result<DrvHash, E>,
    {
        let drv = store_dir.display(drv_path);
        let bad = |kind| DrvCheckError::Invalid {
            drv: drv.clone(),
            kind,
        };
        if self.outputs.is_empty() {
            return Err(bad(DrvCheckErrorKind::NoOutputs));
        }
        let fixed = self
            .outputs
            .values()
            .filter(|o| matches!(o, DerivationOutput::CaFixed { .. }))
            .count();
        if fixed > 0 && self.fixed_output().is_none() {
            return Err(bad(DrvCheckErrorKind::FixedNotAlone));
        }
        let input_addressed = self
            .outputs
            .values()
            .filter(|o| matches!(o, DerivationOutput::InputAddressed(_)))
            .count();
        // One kind of output throughout (input-addressed, floating, deferred or impure), as
        // Nix's "can't mix derivation output types".
        let first = self.outputs.values().next().map(std::mem::discriminant);
        if self
            .outputs
            .values()
            .any(|o| Some(std::mem::discriminant(o)) != first)
        {
            return Err(bad(DrvCheckErrorKind::MixedOutputs));
        }
        let name = drv_name(drv_path);
        let masked = if input_addressed > 0 {
            match self.hash_modulo(store_dir, true, input_hash) {
                Ok(DrvHash::Regular(h)) => Some(h),
                Ok(DrvHash::Fixed(_)) => None,
                Err(source) => {
                    return Err(DrvCheckError::Hash {
                        drv,
                        source: Box::new(source),
                    })
                }
            }
        } else {
            None
        };
        for (o, kind) in &self.outputs {
            let (found, expected) = match (kind, &masked) {
                (DerivationOutput::InputAddressed(p), Some(h)) => {
                    (p, store_dir.make_output_path(o, h, name))
                }
                (DerivationOutput::CaFixed { method, hash, path }, _) => (
                    path,
                    store_dir.make_fixed_output_path(
                        &output_path_name(name, o),
                        *method,
                        hash,
                        [],
                        false,
                    ),
                ),
                _ => continue,
            };
            let expected = expected.map_err(|e| {
                bad(DrvCheckErrorKind::BadOutputName {
                    output: o.clone(),
                    source: e,
                })
            })?;
            if *found != expected {
                return Err(bad(DrvCheckErrorKind::WrongOutputPath {
                    output: o.clone(),
                    found: store_dir.display(found),
                    expected: store_dir.display(&expected),
                }));
            }
            let expected = store_dir.display(&expected);
            if self.env.get(o) != Some(&expected) {
                return Err(bad(DrvCheckErrorKind::WrongEnv {
                    var: o.clone(),
                    expected,
                }));
            }
        }
        Ok(())
    }
}

/// Why a derivation is not one Nix would accept.
#[derive(Debug, Error)]
pub enum DrvCheckError<E: std::error::Error + 'static> {
    #[error("derivation '{drv}' {kind}")]
    Invalid {
        drv: String,
        kind: DrvCheckErrorKind,
    },
    #[error("computing the output paths of derivation '{drv}'")]
    Hash {
        drv: String,
        #[source]
        source: Box<DrvHashError<E>>,
    },
}

/// What is wrong with a derivation's outputs.
#[derive(Debug, Error)]
pub enum DrvCheckErrorKind {
    #[error("has no outputs")]
    NoOutputs,
    #[error("has a fixed output among others: a fixed-output derivation has one output, 'out'")]
    FixedNotAlone,
    #[error("mixes outputs of different kinds (input-addressed, floating, deferred, impure)")]
    MixedOutputs,
    #[error("has incorrect output '{found}', should be '{expected}' (output '{output}')")]
    WrongOutputPath {
        output: String,
        found: String,
        expected: String,
    },
    #[error("has incorrect environment variable '{var}', should be '{expected}'")]
    WrongEnv { var: String, expected: String },
    #[error("has an output named '{output}' that cannot be part of a store path")]
    BadOutputName {
        output: String,
        #[source]
        source: StorePathError,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content_address::FileIngestionMethod;

    type Never = std::convert::Infallible;

    fn no_inputs(_: &StorePath) -> Result<DrvHash, Never> {
        unreachable!("these derivations have no inputs")
    }

    /// An input-addressed derivation named `name` with `outputs`, its paths filled in.
    fn drv(name: &str, outputs: &[&str]) -> (Derivation, StorePath) {
        let sd = StoreDir::default();
        let mut d = Derivation {
            outputs: outputs
                .iter()
                .map(|o| ((*o).to_owned(), DerivationOutput::Deferred))
                .collect(),
            input_drvs: BTreeMap::new(),
            input_srcs: BTreeSet::new(),
            platform: "x86_64-linux".into(),
            builder: "/bin/sh".into(),
            args: vec!["-c".into(), "echo hi > $out".into()],
            env: outputs
                .iter()
                .map(|o| ((*o).to_owned(), String::new()))
                .collect(),
        };
        d.fill_input_addressed_outputs(&sd, name, no_inputs)
            .unwrap();
        let p = d.drv_path(&sd, name).unwrap();
        (d, p)
    }

    fn kind(e: DrvCheckError<Never>) -> DrvCheckErrorKind {
        match e {
            DrvCheckError::Invalid { kind, .. } => kind,
            DrvCheckError::Hash { .. } => panic!("no inputs to hash"),
        }
    }

    #[test]
    fn computed_outputs_pass() {
        let sd = StoreDir::default();
        for outs in [&["out"][..], &["out", "dev", "lib"][..]] {
            let (d, p) = drv("x", outs);
            d.check_outputs(&sd, &p, no_inputs).unwrap();
        }
    }

    #[test]
    fn a_changed_builder_keeps_wrong_paths() {
        let sd = StoreDir::default();
        let (mut d, p) = drv("x", &["out", "dev"]);
        d.args[1] = "echo forged > $out".into();
        let e = d.check_outputs(&sd, &p, no_inputs).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("has incorrect output"), "{msg}");
        assert!(msg.contains(&sd.display(&p)), "{msg}");
        assert!(matches!(
            kind(e),
            DrvCheckErrorKind::WrongOutputPath { output, .. } if output == "dev"
        ));
    }

    #[test]
    fn the_name_in_the_drv_path_counts() {
        // The same text stored under another name claims outputs that are not its own.
        let sd = StoreDir::default();
        let (d, _) = drv("victim", &["out"]);
        let other = d.drv_path(&sd, "forged").unwrap();
        assert!(matches!(
            kind(d.check_outputs(&sd, &other, no_inputs).unwrap_err()),
            DrvCheckErrorKind::WrongOutputPath { .. }
        ));
    }

    #[test]
    fn env_must_name_the_output() {
        let sd = StoreDir::default();
        let (mut d, p) = drv("x", &["out"]);
        d.env.insert("out".into(), "/tmp/elsewhere".into());
        assert!(matches!(
            kind(d.check_outputs(&sd, &p, no_inputs).unwrap_err()),
            DrvCheckErrorKind::WrongEnv { var, .. } if var == "out"
        ));
        // Without the variable the text hashes differently: the path is wrong first.
        d.env.remove("out");
        assert!(matches!(
            kind(d.check_outputs(&sd, &p, no_inputs).unwrap_err()),
            DrvCheckErrorKind::WrongOutputPath { .. }
        ));
    }

    #[test]
    fn no_outputs_and_mixed_kinds_are_refused() {
        let sd = StoreDir::default();
        let (mut d, p) = drv("x", &["out"]);
        d.outputs.clear();
        assert!(matches!(
            kind(d.check_outputs(&sd, &p, no_inputs).unwrap_err()),
            DrvCheckErrorKind::NoOutputs
        ));

        let (mut d, p) = drv("x", &["out", "dev"]);
        d.outputs.insert("dev".into(), DerivationOutput::Deferred);
        assert!(matches!(
            kind(d.check_outputs(&sd, &p, no_inputs).unwrap_err()),
            DrvCheckErrorKind::MixedOutputs
        ));

        let (mut d, p) = drv("x", &["out", "dev"]);
        let floating = DerivationOutput::CaFloating {
            method: FileIngestionMethod::Recursive,
            algo: crate::hash::HashAlgo::Sha256,
        };
        d.outputs.insert("out".into(), floating.clone());
        d.outputs.insert("dev".into(), DerivationOutput::Deferred);
        assert!(matches!(
            kind(d.check_outputs(&sd, &p, no_inputs).unwrap_err()),
            DrvCheckErrorKind::MixedOutputs
        ));
        // All floating is one kind: nothing to check before the build.
        d.outputs.insert("dev".into(), floating);
        d.check_outputs(&sd, &p, no_inputs).unwrap();

        let hash = Hash::sha256(b"contents");
        let fixed = sd
            .make_fixed_output_path("x", FileIngestionMethod::Flat, &hash, [], false)
            .unwrap();
        let (mut d, p) = drv("x", &["out", "dev"]);
        d.outputs.insert(
            "out".into(),
            DerivationOutput::CaFixed {
                method: FileIngestionMethod::Flat,
                hash,
                path: fixed,
            },
        );
        assert!(matches!(
            kind(d.check_outputs(&sd, &p, no_inputs).unwrap_err()),
            DrvCheckErrorKind::FixedNotAlone
        ));
    }

    #[test]
    fn fixed_outputs_follow_their_hash() {
        let sd = StoreDir::default();
        let hash = Hash::sha256(b"contents");
        let path = sd
            .make_fixed_output_path("src", FileIngestionMethod::Flat, &hash, [], false)
            .unwrap();
        let (mut d, _) = drv("src", &["out"]);
        d.outputs.insert(
            "out".into(),
            DerivationOutput::CaFixed {
                method: FileIngestionMethod::Flat,
                hash,
                path: path.clone(),
            },
        );
        d.env.insert("out".into(), sd.display(&path));
        let p = d.drv_path(&sd, "src").unwrap();
        d.check_outputs(&sd, &p, no_inputs).unwrap();
        // Another claimed hash with the same path: the path no longer follows.
        d.outputs.insert(
            "out".into(),
            DerivationOutput::CaFixed {
                method: FileIngestionMethod::Flat,
                hash: Hash::sha256(b"other"),
                path,
            },
        );
        assert!(matches!(
            kind(d.check_outputs(&sd, &p, no_inputs).unwrap_err()),
            DrvCheckErrorKind::WrongOutputPath { .. }
        ));
    }
}

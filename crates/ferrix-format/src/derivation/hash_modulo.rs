//! Hashing derivations modulo fixed-output inputs, and the output paths that follow.

use std::collections::{BTreeMap, BTreeSet};

use thiserror::Error;

use super::{drv_name, Derivation, DerivationOutput};
use crate::hash::Hash;
use crate::store_path::{fixed_inner_fingerprint, StoreDir, StorePath, StorePathError};

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

    /// The output paths this derivation must have, recomputed from its contents. Comparing
    /// them with the recorded ones is how a `.drv` from elsewhere is checked.
    pub fn expected_output_paths<E, F>(
        &self,
        store_dir: &StoreDir,
        drv_path: &StorePath,
        input_hash: F,
    ) -> Result<BTreeMap<String, Option<StorePath>>, DrvHashError<E>>
    where
        E: std::error::Error + 'static,
        F: FnMut(&StorePath) -> Result<DrvHash, E>,
    {
        let name = drv_name(drv_path);
        let mut out = BTreeMap::new();
        let mut masked: Option<Hash> = None;
        let mut input_hash = Some(input_hash);
        for (o, kind) in &self.outputs {
            let p = match kind {
                DerivationOutput::CaFixed { method, hash, .. } => {
                    Some(store_dir.make_fixed_output_path(name, *method, hash, [], false)?)
                }
                DerivationOutput::InputAddressed(_) => {
                    if masked.is_none() {
                        if let Some(f) = input_hash.take() {
                            if let DrvHash::Regular(h) = self.hash_modulo(store_dir, true, f)? {
                                masked = Some(h);
                            }
                        }
                    }
                    match &masked {
                        Some(h) => Some(store_dir.make_output_path(o, h, name)?),
                        None => None,
                    }
                }
                _ => None,
            };
            out.insert(o.clone(), p);
        }
        Ok(out)
    }
}

//! Derivations kept in the store: reading them back, their hashes modulo (which the output
//! paths of their dependants are computed from), and adding one with its outputs filled in.

use std::collections::HashMap;

use ferrix_format::derivation::{DrvHash, DrvParseError};
use ferrix_format::{Derivation, DerivationOutput, StorePath};

use crate::error::{Result, StoreError};
use crate::LocalStore;

/// Read and parse the `.drv` at `p`, which must be valid.
pub fn read_derivation(store: &LocalStore, p: &StorePath) -> Result<Derivation> {
    if !store.is_valid_path(p)? {
        return Err(StoreError::NotValid(store.print(p)));
    }
    let real = store.real_path(p);
    let text = std::fs::read(&real).map_err(crate::error::io_err("reading", &real))?;
    Derivation::parse_aterm(store.store_dir(), &text).map_err(|source: DrvParseError| {
        StoreError::BadDerivation {
            path: store.print(p),
            source,
        }
    })
}

/// Hashes modulo of derivations in a store, memoised (inputs are shared across a graph).
#[derive(Debug)]
pub struct DrvHashes<'a> {
    store: &'a LocalStore,
    memo: HashMap<StorePath, DrvHash>,
}

impl<'a> DrvHashes<'a> {
    pub fn new(store: &'a LocalStore) -> Self {
        Self {
            store,
            memo: HashMap::new(),
        }
    }

    /// The hash of `drv` (not masked): inputs first, depth first, each once.
    pub fn hash_of(&mut self, p: &StorePath) -> Result<DrvHash> {
        if let Some(h) = self.memo.get(p) {
            return Ok(h.clone());
        }
        let drv = read_derivation(self.store, p)?;
        self.hash_inputs(&drv)?;
        let h = self.hash_modulo(&drv, false)?;
        self.memo.insert(p.clone(), h.clone());
        Ok(h)
    }

    fn hash_inputs(&mut self, drv: &Derivation) -> Result<()> {
        for i in drv.input_drvs.keys() {
            self.hash_of(i)?;
        }
        Ok(())
    }

    fn hash_modulo(&self, drv: &Derivation, mask: bool) -> Result<DrvHash> {
        drv.hash_modulo(self.store.store_dir(), mask, |i| {
            self.memo
                .get(i)
                .cloned()
                .ok_or_else(|| StoreError::NotValid(self.store.print(i)))
        })
        .map_err(|e| StoreError::Format(e.to_string()))
    }

    /// Fill in the paths of `drv`'s input-addressed outputs (deferred ones, and their
    /// variables in the environment), check the ones it gives, and add it to the store as
    /// `<name>.drv`, as `nix derivation add` does.
    pub fn add(&mut self, mut drv: Derivation, name: &str) -> Result<StorePath> {
        self.hash_inputs(&drv)?;
        let given = drv.clone();
        let memo = &self.memo;
        let store_dir = self.store.store_dir();
        if drv.fixed_output().is_none() {
            for o in drv.outputs.values_mut() {
                if matches!(o, DerivationOutput::InputAddressed(_)) {
                    *o = DerivationOutput::Deferred;
                }
            }
            drv.fill_input_addressed_outputs(store_dir, name, |i| {
                memo.get(i)
                    .cloned()
                    .ok_or_else(|| StoreError::NotValid(store_dir.display(i)))
            })
            .map_err(|e| StoreError::Format(e.to_string()))?;
            for (o, out) in &given.outputs {
                if let DerivationOutput::InputAddressed(p) = out {
                    if drv.outputs[o].path() != Some(p) {
                        return Err(StoreError::Format(format!(
                            "derivation '{name}' has incorrect output '{}', should be '{}'",
                            store_dir.display(p),
                            drv.outputs[o]
                                .path()
                                .map(|p| store_dir.display(p))
                                .unwrap_or_default()
                        )));
                    }
                }
            }
        }
        self.store.add_derivation(&drv, name)
    }
}

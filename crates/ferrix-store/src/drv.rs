//! Derivations kept in the store: reading them back, their hashes modulo (which the output
//! paths of their dependants are computed from), and adding one with its outputs filled in.

use std::collections::{BTreeMap, HashMap, HashSet};

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

/// Add a derivation as `<name>.drv`, as `nix derivation add` does: the paths of its
/// input-addressed outputs (deferred ones, and their variables in the environment) are
/// filled in; given ones must be the ones computed (the store checks them on the way in).
pub fn add_filled(store: &LocalStore, drv: Derivation, name: &str) -> Result<StorePath> {
    fill_and_add(store, drv, name).map(|(p, _)| p)
}

/// [`add_filled`], also returning the derivation as written (its output paths filled in):
/// what evaluation needs to name the outputs.
pub fn fill_and_add(
    store: &LocalStore,
    drv: Derivation,
    name: &str,
) -> Result<(StorePath, Derivation)> {
    let drv = fill(store, drv, name, &mut HashMap::new())?;
    let p = store.add_derivation(&drv, name)?;
    Ok((p, drv))
}

/// `drv` with its input-addressed output paths filled in, as [`fill_and_add`] writes it,
/// without writing anything. Its input derivations are in the store or have their hashes
/// modulo in `memo` (derivations computed but not written yet, kept there from one call to
/// the next by [`remember_hash`]).
pub fn fill(
    store: &LocalStore,
    mut drv: Derivation,
    name: &str,
    memo: &mut HashMap<StorePath, DrvHash>,
) -> Result<Derivation> {
    if drv.fixed_output().is_some() {
        return Ok(drv);
    }
    let given = drv.clone();
    for i in drv.input_drvs.keys() {
        store.drv_hash(i, Pending::None, memo)?;
    }
    for o in drv.outputs.values_mut() {
        if matches!(o, DerivationOutput::InputAddressed(_)) {
            *o = DerivationOutput::Deferred;
        }
    }
    let shared = store.drv_hashes.lock().unwrap_or_else(|e| e.into_inner());
    drv.fill_input_addressed_outputs(store.store_dir(), name, |i| lookup(&shared, memo, i, store))
        .map_err(|e| StoreError::DrvHash {
            path: format!("{name}.drv"),
            source: Box::new(e),
        })?;
    for (o, out) in given.outputs {
        if let DerivationOutput::InputAddressed(_) = out {
            if let Some(v) = given.env.get(&o).filter(|v| !v.is_empty()) {
                drv.env.insert(o.clone(), v.clone());
            }
            drv.outputs.insert(o, out);
        }
    }
    Ok(drv)
}

/// Keep the hash modulo of `drv`, just filled in by [`fill`] and to be found at `p`, in
/// `memo`, so that derivations depending on it never read it back from the store (as Nix
/// keeps the hash of each derivation it instantiates). Its inputs' hashes are known: `fill`
/// needed them.
pub fn remember_hash(
    store: &LocalStore,
    p: &StorePath,
    drv: &Derivation,
    memo: &mut HashMap<StorePath, DrvHash>,
) -> Result<()> {
    if memo.contains_key(p) {
        return Ok(());
    }
    let h = {
        let shared = store.drv_hashes.lock().unwrap_or_else(|e| e.into_inner());
        drv.hash_modulo(store.store_dir(), false, |i| {
            lookup(&shared, memo, i, store)
        })
        .map_err(|e| StoreError::DrvHash {
            path: store.print(p),
            source: Box::new(e),
        })?
    };
    memo.insert(p.clone(), h);
    Ok(())
}

/// A derivation is checked before it is registered (by any door) or built: it parses
/// strictly, and its output paths are the ones computed from it.
impl LocalStore {
    /// Check `.drv` files about to be registered together (`None`: contents that are not a
    /// regular file) and return the outputs each declares, for `DerivationOutputs`. Input
    /// derivations must be valid or among them.
    pub(crate) fn check_new_derivations<'a>(
        &self,
        items: impl IntoIterator<Item = (&'a StorePath, Option<Vec<u8>>)>,
    ) -> Result<BTreeMap<StorePath, BTreeMap<String, StorePath>>> {
        let texts = items
            .into_iter()
            .map(|(p, text)| {
                text.map(|t| (p, t))
                    .ok_or_else(|| StoreError::DrvNotFile(self.print(p)))
            })
            .collect::<Result<Vec<_>>>()?;
        // Kept as texts, each parsed when it is checked: a batch of a thousand parsed at
        // once took several times the memory of the texts.
        let pending: HashMap<&StorePath, &[u8]> =
            texts.iter().map(|(p, t)| (*p, t.as_slice())).collect();
        let pending = Pending::Texts(&pending);
        let mut memo = HashMap::new();
        let mut outs = BTreeMap::new();
        for (p, text) in &texts {
            let drv = self.parse_new(p, text)?;
            self.check_outputs(p, &drv, pending, &mut memo)?;
            // Its hash, for those in the batch that need it (inputs come first, as a
            // rule), so that they do not parse it again.
            remember_hash(self, p, &drv, &mut memo)?;
            outs.insert(
                (*p).clone(),
                drv.outputs
                    .iter()
                    .filter_map(|(o, out)| out.path().map(|x| (o.clone(), x.clone())))
                    .collect(),
            );
        }
        Ok(outs)
    }

    fn parse_new(&self, p: &StorePath, text: &[u8]) -> Result<Derivation> {
        Derivation::parse_aterm(self.store_dir(), text).map_err(|source| {
            StoreError::BadDerivation {
                path: self.print(p),
                source,
            }
        })
    }

    /// Check a valid derivation before building it: one registered by an older version, or
    /// by hand, may not have been checked on its way in.
    pub fn check_derivation(&self, drv_path: &StorePath, drv: &Derivation) -> Result<()> {
        self.check_outputs(drv_path, drv, Pending::None, &mut HashMap::new())
    }

    fn check_outputs(
        &self,
        drv_path: &StorePath,
        drv: &Derivation,
        pending: Pending<'_>,
        memo: &mut HashMap<StorePath, DrvHash>,
    ) -> Result<()> {
        for i in drv.input_drvs.keys() {
            self.drv_hash(i, pending, memo)?;
        }
        let known = self.drv_hashes.lock().unwrap_or_else(|p| p.into_inner());
        drv.check_outputs(self.store_dir(), drv_path, |i| {
            lookup(&known, memo, i, self)
        })
        .map_err(|e| StoreError::BadDrvOutputs(Box::new(e)))
    }

    /// The hash modulo of derivation `root` (valid, or in `pending`), its inputs first,
    /// without recursion: chains of derivations can be many thousands long.
    fn drv_hash(
        &self,
        root: &StorePath,
        pending: Pending<'_>,
        memo: &mut HashMap<StorePath, DrvHash>,
    ) -> Result<()> {
        let known = |memo: &HashMap<StorePath, DrvHash>, p: &StorePath| {
            memo.contains_key(p)
                || self
                    .drv_hashes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains_key(p)
        };
        if known(memo, root) {
            return Ok(());
        }
        let mut read: HashMap<StorePath, Derivation> = HashMap::new();
        let mut stack = vec![root.clone()];
        // Derivations whose inputs are being hashed: the chain from the root to the top of
        // the stack. Only these make a cycle; an input merely waiting further down the stack
        // (a sibling's, in a diamond) is pushed again and found known when its turn comes.
        let mut expanding: HashSet<StorePath> = HashSet::new();
        while let Some(top) = stack.last().cloned() {
            if known(memo, &top) {
                stack.pop();
                continue;
            }
            if !read.contains_key(&top) {
                let d = match pending.text(&top) {
                    Some(text) => self.parse_new(&top, text)?,
                    None => read_derivation(self, &top)?,
                };
                read.insert(top.clone(), d);
            }
            let drv = &read[&top];
            let missing: Vec<StorePath> = drv
                .input_drvs
                .keys()
                .filter(|i| !known(memo, i))
                .cloned()
                .collect();
            if missing.is_empty() {
                let h = {
                    let shared = self.drv_hashes.lock().unwrap_or_else(|e| e.into_inner());
                    drv.hash_modulo(self.store_dir(), false, |i| lookup(&shared, memo, i, self))
                        .map_err(|e| StoreError::DrvHash {
                            path: self.print(&top),
                            source: Box::new(e),
                        })?
                };
                if pending.contains(&top) {
                    memo.insert(top.clone(), h);
                } else {
                    self.drv_hashes
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(top.clone(), h);
                }
                read.remove(&top);
                expanding.remove(&top);
                stack.pop();
                continue;
            }
            // Back at an expanded derivation whose inputs are still not all known: only an
            // input that is its own ancestor can have stayed unknown.
            if !expanding.insert(top.clone()) {
                return Err(StoreError::Cycle {
                    path: self.print(&missing[0]),
                    from: self.print(&top),
                });
            }
            for m in missing {
                if expanding.contains(&m) {
                    return Err(StoreError::Cycle {
                        path: self.print(&m),
                        from: self.print(&top),
                    });
                }
                stack.push(m);
            }
        }
        Ok(())
    }
}

/// Derivations not in the store yet whose hashes others may need.
#[derive(Clone, Copy)]
enum Pending<'a> {
    None,
    /// As texts, parsed when needed.
    Texts(&'a HashMap<&'a StorePath, &'a [u8]>),
}

impl Pending<'_> {
    fn contains(&self, p: &StorePath) -> bool {
        match self {
            Pending::None => false,
            Pending::Texts(m) => m.contains_key(p),
        }
    }

    fn text(&self, p: &StorePath) -> Option<&[u8]> {
        match self {
            Pending::Texts(m) => m.get(p).copied(),
            _ => None,
        }
    }
}

/// A computed hash modulo, from this check's own derivations or the store's memo.
fn lookup(
    shared: &HashMap<StorePath, DrvHash>,
    memo: &HashMap<StorePath, DrvHash>,
    i: &StorePath,
    store: &LocalStore,
) -> Result<DrvHash> {
    memo.get(i)
        .or_else(|| shared.get(i))
        .cloned()
        .ok_or_else(|| StoreError::NotValid(store.print(i)))
}

//! Copying closures between any two stores: one routine for `ferrix copy`, `nix-copy-closure`
//! and whatever else moves paths, whichever kinds of store are at either end.

use std::collections::{BTreeMap, BTreeSet};

use ferrix_format::StorePath;

use crate::path_info::ValidPathInfo;
use crate::store::{AddOptions, CopyError, Store};

/// What to copy besides the closure itself, and how.
#[derive(Debug, Clone, Default)]
pub struct CopyOptions {
    /// Also the outputs of the derivations in the closure (that are valid at the source).
    pub include_outputs: bool,
    /// Let the destination first fetch what it can from its own substituters.
    pub substitute_on_destination: bool,
    pub add: AddOptions,
}

/// Copy the closure of `paths` from `from` to `to`: the closure asked of the source level by
/// level (or at once where it can), the destination asked once which of it it has, and the
/// rest added there references first, in as few commits or streams as the destination
/// allows. Returns the paths copied, in that order.
pub fn copy_paths(
    from: &dyn Store,
    to: &dyn Store,
    paths: &BTreeSet<StorePath>,
    opts: &CopyOptions,
) -> Result<Vec<StorePath>, CopyError> {
    if from.store_dir() != to.store_dir() {
        return Err(CopyError::StoreDirs {
            from: from.uri(),
            to: to.uri(),
            from_dir: from.store_dir().to_string(),
            to_dir: to.store_dir().to_string(),
        });
    }
    let missing = if from.closure_is_cheap() {
        let closure = from.query_closure(paths, opts.include_outputs)?;
        let all: BTreeSet<StorePath> = closure.keys().cloned().collect();
        let have = to.query_valid(&all, opts.substitute_on_destination)?;
        closure
            .into_iter()
            .filter(|(p, _)| !have.contains(p))
            .collect()
    } else {
        missing_by_level(from, to, paths, opts)?
    };
    let keys: BTreeSet<StorePath> = missing.keys().cloned().collect();
    let order = crate::closure::topo_sort(from.store_dir(), &keys, |p| {
        Ok(missing[p].references.iter().cloned().collect())
    })
    .map_err(|source| CopyError::Cycle {
        store: from.uri(),
        source,
    })?;
    let infos: Vec<ValidPathInfo> = order.iter().map(|p| missing[p].clone()).collect();
    if !infos.is_empty() {
        to.add_many(&infos, from, &opts.add)?;
    }
    Ok(order)
}

/// What of the closure of `paths` in `from` the destination lacks, found a level of
/// references at a time: the destination says which of a level it has, and only the rest
/// (and what they refer to) is asked of the source.
fn missing_by_level(
    from: &dyn Store,
    to: &dyn Store,
    paths: &BTreeSet<StorePath>,
    opts: &CopyOptions,
) -> Result<BTreeMap<StorePath, ValidPathInfo>, CopyError> {
    if opts.include_outputs {
        return Err(CopyError::Unsupported {
            store: from.uri(),
            what: "include the outputs of derivations in a closure",
        });
    }
    let mut missing = BTreeMap::new();
    let mut level = paths.clone();
    while !level.is_empty() {
        let have = to.query_valid(&level, opts.substitute_on_destination)?;
        let ask: BTreeSet<StorePath> = level.difference(&have).cloned().collect();
        let got = from.query_infos(&ask)?;
        if let Some(p) = ask.iter().find(|p| !got.contains_key(*p)) {
            return Err(CopyError::Missing {
                store: from.uri(),
                path: from.store_dir().display(p),
            });
        }
        level = got
            .values()
            .flat_map(|i| &i.references)
            .filter(|r| !missing.contains_key(*r) && !got.contains_key(*r))
            .cloned()
            .collect();
        missing.extend(got);
    }
    Ok(missing)
}

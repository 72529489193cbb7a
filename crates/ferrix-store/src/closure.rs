//! Closures over the reference graph and topological order.

use std::collections::{BTreeSet, HashMap};

use ferrix_format::{StoreDir, StorePath};

use crate::error::{Result, StoreError};
use crate::path_info::ValidPathInfo;

/// All paths reachable from `start` through `edges` (which yields a node's successors).
pub fn closure<F>(
    start: impl IntoIterator<Item = StorePath>,
    mut edges: F,
) -> Result<BTreeSet<StorePath>>
where
    F: FnMut(&StorePath) -> Result<Vec<StorePath>>,
{
    let mut seen: BTreeSet<StorePath> = BTreeSet::new();
    let mut todo: Vec<StorePath> = start.into_iter().collect();
    while let Some(p) = todo.pop() {
        if seen.contains(&p) {
            continue;
        }
        for q in edges(&p)? {
            if !seen.contains(&q) {
                todo.push(q);
            }
        }
        seen.insert(p);
    }
    Ok(seen)
}

/// Order `paths` so that every path comes after the paths it refers to (references first).
/// `refs` gives a path's references; those outside `paths` are ignored. Self-references are
/// allowed; any other cycle is an error naming it.
pub fn topo_sort<F>(
    store_dir: &StoreDir,
    paths: &BTreeSet<StorePath>,
    mut refs: F,
) -> Result<Vec<StorePath>>
where
    F: FnMut(&StorePath) -> Result<Vec<StorePath>>,
{
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Active,
        Done,
    }
    let mut marks: HashMap<StorePath, Mark> = HashMap::new();
    let mut out = Vec::with_capacity(paths.len());
    for root in paths {
        if marks.contains_key(root) {
            continue;
        }
        // Iterative DFS: (node, its pending references).
        let mut stack: Vec<(StorePath, Vec<StorePath>)> = Vec::new();
        marks.insert(root.clone(), Mark::Active);
        // Reversed so that popping visits references in ascending order, as Nix does.
        let mut r = refs(root)?;
        r.sort();
        r.reverse();
        stack.push((root.clone(), r));
        while let Some((node, pending)) = stack.last_mut() {
            match pending.pop() {
                Some(next) => {
                    if next == *node || !paths.contains(&next) {
                        continue;
                    }
                    match marks.get(&next) {
                        Some(Mark::Done) => {}
                        Some(Mark::Active) => {
                            return Err(StoreError::Cycle {
                                path: store_dir.display(&next),
                                from: store_dir.display(node),
                            })
                        }
                        None => {
                            marks.insert(next.clone(), Mark::Active);
                            let mut r = refs(&next)?;
                            r.sort();
                            r.reverse();
                            stack.push((next, r));
                        }
                    }
                }
                None => {
                    let (done, _) = stack.pop().unwrap_or_else(|| unreachable!());
                    marks.insert(done.clone(), Mark::Done);
                    out.push(done);
                }
            }
        }
    }
    Ok(out)
}

/// Topological order of path infos about to be registered (references first).
pub(crate) fn topo_sort_infos(
    store_dir: &StoreDir,
    infos: &[ValidPathInfo],
) -> Result<Vec<StorePath>> {
    let by_path: HashMap<&StorePath, &ValidPathInfo> = infos.iter().map(|i| (&i.path, i)).collect();
    let set: BTreeSet<StorePath> = infos.iter().map(|i| i.path.clone()).collect();
    topo_sort(store_dir, &set, |p| {
        Ok(by_path
            .get(p)
            .map(|i| i.references.iter().cloned().collect())
            .unwrap_or_default())
    })
}

/// Paths in `set` in reverse topological order (referrers before their references): the order
/// deletion must follow.
pub fn referrers_first(
    store_dir: &StoreDir,
    set: &BTreeSet<StorePath>,
    graph: &HashMap<StorePath, Vec<StorePath>>,
) -> Result<Vec<StorePath>> {
    let mut order = topo_sort(store_dir, set, |p| {
        Ok(graph.get(p).cloned().unwrap_or_default())
    })?;
    order.reverse();
    Ok(order)
}

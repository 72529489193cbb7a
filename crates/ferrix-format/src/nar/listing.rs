//! An in-memory listing of a NAR (types, sizes, offsets), for `nar ls` and `.ls` files.

use std::collections::BTreeMap;
use std::io::{self, Read};

use super::parse::{parse_exact, NarError, NarVisitor};

/// One node of a listed archive. Dropping one never recurses, whatever its depth; `Clone`,
/// `==` and `Debug` take a stack frame per level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NarEntry {
    Regular {
        executable: bool,
        size: u64,
        /// Where the contents start in the archive.
        offset: u64,
    },
    Symlink {
        target: Vec<u8>,
    },
    Directory {
        entries: BTreeMap<Vec<u8>, NarEntry>,
    },
}

/// Dropped without recursion: a listing may be nested as deep as its archive.
impl Drop for NarEntry {
    fn drop(&mut self) {
        let NarEntry::Directory { entries } = self else {
            return;
        };
        if entries
            .values()
            .all(|e| !matches!(e, NarEntry::Directory { .. }))
        {
            return;
        }
        let mut todo = vec![std::mem::take(entries)];
        while let Some(dir) = todo.pop() {
            for (_, mut e) in dir {
                if let NarEntry::Directory { entries } = &mut e {
                    if !entries.is_empty() {
                        todo.push(std::mem::take(entries));
                    }
                }
            }
        }
    }
}

/// The tree of an archive, without contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarListing {
    pub root: NarEntry,
    pub nar_size: u64,
}

impl NarListing {
    /// The node at a `/`-separated path (`""` or `/` is the root). Symlinks are not followed.
    pub fn get(&self, path: &[u8]) -> Option<&NarEntry> {
        let mut cur = &self.root;
        for comp in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            match cur {
                NarEntry::Directory { entries } => cur = entries.get(comp)?,
                _ => return None,
            }
        }
        Some(cur)
    }
}

#[derive(Default)]
struct Lister {
    /// The entries seen so far of each open directory, innermost last.
    stack: Vec<BTreeMap<Vec<u8>, NarEntry>>,
    root: Option<NarEntry>,
}

impl Lister {
    fn put(&mut self, path: &[u8], e: NarEntry) {
        match self.stack.last_mut() {
            None => self.root = Some(e),
            Some(entries) => {
                let name = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
                entries.insert(name.to_vec(), e);
            }
        }
    }
}

impl NarVisitor for Lister {
    fn directory(&mut self, _path: &[u8]) -> io::Result<()> {
        self.stack.push(BTreeMap::new());
        Ok(())
    }
    fn end_directory(&mut self, path: &[u8]) -> io::Result<()> {
        if let Some(entries) = self.stack.pop() {
            self.put(path, NarEntry::Directory { entries });
        }
        Ok(())
    }
    fn regular(
        &mut self,
        path: &[u8],
        executable: bool,
        size: u64,
        offset: u64,
        _contents: &mut dyn Read,
    ) -> io::Result<()> {
        self.put(
            path,
            NarEntry::Regular {
                executable,
                size,
                offset,
            },
        );
        Ok(())
    }
    fn symlink(&mut self, path: &[u8], target: &[u8]) -> io::Result<()> {
        self.put(
            path,
            NarEntry::Symlink {
                target: target.to_vec(),
            },
        );
        Ok(())
    }
}

/// List a whole archive.
pub fn list<R: Read>(input: R) -> Result<NarListing, NarError> {
    let mut l = Lister::default();
    let nar_size = parse_exact(input, &mut l)?;
    // A successful parse always yields a root node.
    let root = l.root.unwrap_or(NarEntry::Directory {
        entries: BTreeMap::new(),
    });
    Ok(NarListing { root, nar_size })
}

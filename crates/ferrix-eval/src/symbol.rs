//! Interned names: attribute names and variables compare and sort as small integers.

use std::cell::RefCell;
use std::fmt;
use std::hash::BuildHasher;

use compact_str::CompactString;

/// A name, interned for the thread (an evaluation runs on one thread).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sym(u32);

/// Each name once, by number, and the numbers by the names' hashes. A name is inline up to
/// 24 bytes and the table holds only numbers, so a symbol costs about 30 bytes: a set of
/// 200,000 new names (`listToAttrs`) makes as many symbols.
#[derive(Default)]
struct Interner {
    names: Vec<CompactString>,
    ids: hashbrown::HashTable<u32>,
    hasher: hashbrown::DefaultHashBuilder,
}

thread_local! {
    static INTERNER: RefCell<Interner> = RefCell::default();
}

impl Interner {
    fn intern(&mut self, name: &str) -> Sym {
        let hash = self.hasher.hash_one(name);
        let names = &self.names;
        if let Some(&id) = self.ids.find(hash, |&id| names[id as usize] == name) {
            return Sym(id);
        }
        let id = self.names.len() as u32;
        self.names.push(name.into());
        let (names, hasher) = (&self.names, &self.hasher);
        self.ids
            .insert_unique(hash, id, |&id| hasher.hash_one(names[id as usize].as_str()));
        Sym(id)
    }
}

impl Sym {
    pub fn intern(name: &str) -> Sym {
        INTERNER.with(|i| i.borrow_mut().intern(name))
    }

    /// The name itself (a copy, without an allocation unless it is longer than 24 bytes).
    pub fn name(self) -> CompactString {
        INTERNER.with(|i| i.borrow().names[self.0 as usize].clone())
    }
}

impl fmt::Display for Sym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl fmt::Debug for Sym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_interned_once_and_read_back() {
        let names: Vec<String> = (0..5000).map(|i| format!("name-{i}")).collect();
        let syms: Vec<Sym> = names.iter().map(|n| Sym::intern(n)).collect();
        for (n, s) in names.iter().zip(&syms) {
            assert_eq!(Sym::intern(n), *s);
            assert_eq!(&*s.name(), n.as_str());
        }
        let long = "a name longer than twenty-four bytes, kept on the heap";
        assert_eq!(&*Sym::intern(long).name(), long);
        assert_ne!(Sym::intern("a"), Sym::intern("b"));
    }
}

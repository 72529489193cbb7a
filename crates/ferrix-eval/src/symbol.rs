//! Interned names: attribute names and variables compare and sort as small integers.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;

/// A name, interned for the thread (an evaluation runs on one thread).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sym(u32);

#[derive(Default)]
struct Interner {
    names: Vec<Rc<str>>,
    ids: HashMap<Rc<str>, u32>,
}

thread_local! {
    static INTERNER: RefCell<Interner> = RefCell::default();
}

impl Sym {
    pub fn intern(name: &str) -> Sym {
        INTERNER.with(|i| {
            let mut i = i.borrow_mut();
            if let Some(&id) = i.ids.get(name) {
                return Sym(id);
            }
            let id = i.names.len() as u32;
            let rc: Rc<str> = name.into();
            i.names.push(rc.clone());
            i.ids.insert(rc, id);
            Sym(id)
        })
    }

    /// The name itself.
    pub fn name(self) -> Rc<str> {
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

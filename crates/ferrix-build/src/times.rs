//! Build times remembered across runs, by derivation name, so that the scheduler can start
//! the longest chains of work first. A small SQLite file of our own (its schema is
//! versioned); losing it only costs scheduling quality.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

const VERSION: i64 = 1;

/// Remembered durations, keyed by derivation name (the `.drv` name without hash and suffix,
/// which stays the same across versions of a package's inputs).
#[derive(Debug)]
pub struct BuildTimes {
    conn: Option<Connection>,
    /// Measurements not written yet: they go in one transaction at the end (or when many
    /// have gathered), not one per build while builds wait.
    unsaved: RefCell<Vec<(String, f64)>>,
    /// What each name asked for so far came to, this run's measurements folded in: the
    /// scheduler asks again about every waiting build whenever one ends, and a query of
    /// the file each time cost more than the trivial builds it was scheduling.
    known: RefCell<HashMap<String, Option<f64>>>,
}

/// Measurements kept in memory before they are written anyway.
const SAVE_EVERY: usize = 1024;

/// The running average: recent builds weigh as much as all before them.
fn fold(old: Option<f64>, seconds: f64) -> f64 {
    old.map_or(seconds, |s| 0.5 * s + 0.5 * seconds)
}

impl BuildTimes {
    /// Open (or create) the file; any problem leaves an empty, forgetful table rather than
    /// failing a build over a cache.
    pub fn open(path: &Path) -> Self {
        let conn = Self::try_open(path).ok().or_else(|| {
            // Not a database (or a broken one): start afresh.
            let _ = std::fs::remove_file(path);
            Self::try_open(path).ok()
        });
        Self {
            conn,
            unsaved: Default::default(),
            known: Default::default(),
        }
    }

    fn try_open(path: &Path) -> rusqlite::Result<Connection> {
        (|| -> rusqlite::Result<Connection> {
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let conn = Connection::open(path)?;
            conn.busy_timeout(std::time::Duration::from_secs(2))?;
            // A cache: a commit per build must not cost a sync (a rollback journal took
            // four); after a power loss the last few times may be gone, or the file
            // unreadable, which `open` answers by starting afresh.
            conn.execute_batch("pragma journal_mode = wal; pragma synchronous = off;")?;
            let v: i64 = conn.query_row("pragma user_version", [], |r| r.get(0))?;
            if v != VERSION {
                conn.execute_batch(&format!(
                    "drop table if exists Times;
                     create table Times (name text primary key, seconds real not null, runs integer not null);
                     pragma user_version = {VERSION};"
                ))?;
            }
            Ok(conn)
        })()
    }

    /// Nothing remembered, nothing kept.
    pub fn none() -> Self {
        Self {
            conn: None,
            unsaved: Default::default(),
            known: Default::default(),
        }
    }

    pub fn get(&self, name: &str) -> Option<f64> {
        if let Some(&t) = self.known.borrow().get(name) {
            return t;
        }
        let t = self.stored(name);
        self.known.borrow_mut().insert(name.to_owned(), t);
        t
    }

    fn stored(&self, name: &str) -> Option<f64> {
        self.conn
            .as_ref()?
            .prepare_cached("select seconds from Times where name = ?")
            .and_then(|mut s| s.query_row([name], |r| r.get(0)).optional())
            .ok()
            .flatten()
    }

    /// Fold a new measurement in (an average that favours recent builds).
    pub fn record(&self, name: &str, seconds: f64) {
        if self.conn.is_none() {
            return;
        }
        let old = self.get(name);
        self.known
            .borrow_mut()
            .insert(name.to_owned(), Some(fold(old, seconds)));
        let full = {
            let mut unsaved = self.unsaved.borrow_mut();
            unsaved.push((name.to_owned(), seconds));
            unsaved.len() >= SAVE_EVERY
        };
        if full {
            self.save();
        }
    }

    /// Write what was recorded.
    pub fn save(&self) {
        let unsaved = std::mem::take(&mut *self.unsaved.borrow_mut());
        let Some(c) = &self.conn else { return };
        if unsaved.is_empty() {
            return;
        }
        let _ = (|| -> rusqlite::Result<()> {
            let tx = c.unchecked_transaction()?;
            {
                let mut st = tx.prepare_cached(
                    "insert into Times (name, seconds, runs) values (?1, ?2, 1)
                     on conflict(name) do update set seconds = 0.5 * seconds + 0.5 * ?2, runs = runs + 1",
                )?;
                for (name, seconds) in &unsaved {
                    st.execute(params![name, seconds])?;
                }
            }
            tx.commit()
        })();
    }
}

impl Drop for BuildTimes {
    fn drop(&mut self) {
        self.save();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_and_averages() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t/times.sqlite");
        let t = BuildTimes::open(&p);
        assert_eq!(t.get("hello"), None);
        t.record("hello", 2.0);
        t.record("hello", 4.0);
        // This run's measurements count at once, before they are written.
        assert_eq!(t.get("hello"), Some(3.0));
        drop(t);
        let t = BuildTimes::open(&p);
        assert_eq!(t.get("hello"), Some(3.0));
        // A file that is not a database is replaced: nothing worse than forgetting.
        std::fs::write(&p, b"junk").unwrap();
        let t = BuildTimes::open(&p);
        assert_eq!(t.get("hello"), None);
        t.record("x", 1.0);
        assert_eq!(t.get("x"), Some(1.0));
    }
}

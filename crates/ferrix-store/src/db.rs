//! The SQLite database in Nix's schema (version 10): valid paths, references, drv outputs.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferrix_format::{ContentAddress, Hash, StoreDir, StorePath};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::error::{io_err, Result, StoreError};
use crate::path_info::ValidPathInfo;

/// The schema version Nix 2.8 writes to `<state>/db/schema`.
pub const SCHEMA_VERSION: u32 = 10;

/// Nix's tables, indexes and trigger. Kept textually close to what Nix creates so that either
/// program can open a database the other made.
const SCHEMA: &str = "
create table if not exists ValidPaths (
    id               integer primary key autoincrement not null,
    path             text unique not null,
    hash             text not null,
    registrationTime integer not null,
    deriver          text,
    narSize          integer,
    ultimate         integer,
    sigs             text,
    ca               text
);
create table if not exists Refs (
    referrer  integer not null,
    reference integer not null,
    primary key (referrer, reference),
    foreign key (referrer) references ValidPaths(id) on delete cascade,
    foreign key (reference) references ValidPaths(id) on delete restrict
);
create index if not exists IndexReferrer on Refs(referrer);
create index if not exists IndexReference on Refs(reference);
-- A self-reference would make deleting its row violate `on delete restrict`.
create trigger if not exists DeleteSelfRefs before delete on ValidPaths
  begin
    delete from Refs where referrer = old.id and reference = old.id;
  end;
create table if not exists DerivationOutputs (
    drv  integer not null,
    id   text not null,
    path text not null,
    primary key (drv, id),
    foreign key (drv) references ValidPaths(id) on delete cascade
);
create index if not exists IndexDerivationOutputs on DerivationOutputs(path);
";

/// One connection to a store database.
#[derive(Debug)]
pub struct Db {
    conn: Connection,
    path: PathBuf,
    store_dir: StoreDir,
}

impl Db {
    /// Open (creating when missing) `<db_dir>/db.sqlite`, checking `<db_dir>/schema`.
    pub fn open(db_dir: &Path, store_dir: &StoreDir, cache_kib: Option<u32>) -> Result<Self> {
        let path = db_dir.join("db.sqlite");
        let schema_file = db_dir.join("schema");
        let existing = match std::fs::read_to_string(&schema_file) {
            Ok(t) => Some(
                t.trim()
                    .parse::<u32>()
                    .map_err(|_| StoreError::SchemaCorrupt {
                        path: schema_file.clone(),
                        text: t.clone(),
                    })?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err("reading", &schema_file)(e)),
        };
        match existing {
            Some(v) if v > SCHEMA_VERSION => {
                return Err(StoreError::SchemaTooNew {
                    path: path.clone(),
                    found: v,
                    supported: SCHEMA_VERSION,
                })
            }
            Some(v) if v < SCHEMA_VERSION => {
                return Err(StoreError::SchemaTooOld {
                    path: path.clone(),
                    found: v,
                    supported: SCHEMA_VERSION,
                })
            }
            _ => {}
        }
        let db_err = |source| StoreError::Db {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(db_err)?;
        // Concurrent processes wait for each other rather than fail; Nix waits up to an hour.
        conn.busy_timeout(Duration::from_secs(3600))
            .map_err(db_err)?;
        conn.pragma_update(None, "foreign_keys", 1)
            .map_err(db_err)?;
        conn.pragma_update(None, "synchronous", "normal")
            .map_err(db_err)?;
        if let Some(kib) = cache_kib {
            // A negative size is in KiB rather than pages.
            conn.pragma_update(None, "cache_size", -i64::from(kib))
                .map_err(db_err)?;
        }
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .map_err(db_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            conn.pragma_update(None, "journal_mode", "wal")
                .map_err(db_err)?;
        }
        conn.pragma_update(None, "wal_autocheckpoint", 40000)
            .map_err(db_err)?;
        if existing.is_none() {
            conn.execute_batch(SCHEMA).map_err(db_err)?;
            write_atomically(&schema_file, SCHEMA_VERSION.to_string().as_bytes())?;
        }
        Ok(Self {
            conn,
            path,
            store_dir: store_dir.clone(),
        })
    }

    /// Another connection to the database `Db::open` opened, for queries only (writing
    /// nothing but its own temporary tables): it reads beside the writer, the database being
    /// in WAL mode.
    pub fn open_reader(db_dir: &Path, store_dir: &StoreDir) -> Result<Self> {
        let path = db_dir.join("db.sqlite");
        let db_err = |source| StoreError::Db {
            path: path.clone(),
            source,
        };
        let conn = Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(db_err)?;
        conn.busy_timeout(Duration::from_secs(3600))
            .map_err(db_err)?;
        Ok(Self {
            conn,
            path,
            store_dir: store_dir.clone(),
        })
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Db {
            path: self.path.clone(),
            source,
        }
    }

    fn full(&self, p: &StorePath) -> String {
        self.store_dir.display(p)
    }

    fn parse(&self, s: &str) -> Result<StorePath> {
        self.store_dir
            .parse_path(s)
            .map_err(|source| StoreError::BadName {
                path: s.to_owned(),
                source,
            })
    }

    pub fn is_valid(&self, p: &StorePath) -> Result<bool> {
        self.id_of(p).map(|id| id.is_some())
    }

    /// Which of `paths` are valid, read in one transaction (one lock of the database rather
    /// than one per path).
    pub fn valid_among<'a>(
        &self,
        paths: impl IntoIterator<Item = &'a StorePath>,
    ) -> Result<HashSet<StorePath>> {
        let tx = self.conn.unchecked_transaction().map_err(self.err())?;
        let mut valid = HashSet::new();
        {
            let mut stmt = tx
                .prepare_cached("select 1 from ValidPaths where path = ?")
                .map_err(self.err())?;
            for p in paths {
                if stmt.exists([self.full(p)]).map_err(self.err())? {
                    valid.insert(p.clone());
                }
            }
        }
        tx.commit().map_err(self.err())?;
        Ok(valid)
    }

    fn id_of(&self, p: &StorePath) -> Result<Option<i64>> {
        self.conn
            .prepare_cached("select id from ValidPaths where path = ?")
            .and_then(|mut s| s.query_row([self.full(p)], |r| r.get(0)).optional())
            .map_err(self.err())
    }

    /// Everything recorded about a valid path.
    pub fn path_info(&self, p: &StorePath) -> Result<Option<ValidPathInfo>> {
        let row = self
            .conn
            .prepare_cached(
                "select id, hash, registrationTime, deriver, narSize, ultimate, sigs, ca from ValidPaths where path = ?",
            )
            .and_then(|mut s| {
                s.query_row([self.full(p)], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, Option<i64>>(4)?,
                        r.get::<_, Option<i64>>(5)?,
                        r.get::<_, Option<String>>(6)?,
                        r.get::<_, Option<String>>(7)?,
                    ))
                })
                .optional()
            })
            .map_err(self.err())?;
        let Some((id, hash, time, deriver, nar_size, ultimate, sigs, ca)) = row else {
            return Ok(None);
        };
        let bad = |what: &str| {
            StoreError::Format(format!(
                "database '{}': path '{}' has an invalid {what}",
                self.path.display(),
                self.full(p)
            ))
        };
        let nar_hash = Hash::parse(&hash, None).map_err(|_| bad("hash"))?;
        let deriver = match deriver.filter(|d| !d.is_empty()) {
            Some(d) => Some(self.parse(&d)?),
            None => None,
        };
        let ca = match ca.filter(|c| !c.is_empty()) {
            Some(c) => Some(
                c.parse::<ContentAddress>()
                    .map_err(|_| bad("content address"))?,
            ),
            None => None,
        };
        Ok(Some(ValidPathInfo {
            path: p.clone(),
            deriver,
            nar_hash,
            references: self.references_of(id)?,
            registration_time: time,
            nar_size: nar_size.unwrap_or(0) as u64,
            ultimate: ultimate.unwrap_or(0) != 0,
            sigs: sigs
                .unwrap_or_default()
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            ca,
        }))
    }

    fn references_of(&self, id: i64) -> Result<BTreeSet<StorePath>> {
        self.paths_query(
            "select path from Refs join ValidPaths on reference = id where referrer = ?",
            id,
        )
    }

    pub fn references(&self, p: &StorePath) -> Result<BTreeSet<StorePath>> {
        match self.id_of(p)? {
            Some(id) => self.references_of(id),
            None => Err(StoreError::NotValid(self.full(p))),
        }
    }

    /// The full paths a one-parameter query returns, as store paths.
    fn paths_query(&self, sql: &str, param: impl rusqlite::ToSql) -> Result<BTreeSet<StorePath>> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(self.err())?;
        let rows = stmt
            .query_map([param], |r| r.get::<_, String>(0))
            .map_err(self.err())?;
        let mut out = BTreeSet::new();
        for r in rows {
            out.insert(self.parse(&r.map_err(self.err())?)?);
        }
        Ok(out)
    }

    /// The valid path whose hash part is `hash_part` (Nix's `queryPathFromHashPart`).
    pub fn path_from_hash_part(&self, hash_part: &str) -> Result<Option<StorePath>> {
        let prefix = format!("{}/{hash_part}", self.store_dir.as_str());
        let mut stmt = self
            .conn
            .prepare_cached("select path from ValidPaths where path >= ? limit 1")
            .map_err(self.err())?;
        let found: Option<String> = stmt
            .query_row([&prefix], |r| r.get(0))
            .optional()
            .map_err(self.err())?;
        match found {
            Some(f) if f.starts_with(&format!("{prefix}-")) => Ok(Some(self.parse(&f)?)),
            _ => Ok(None),
        }
    }

    pub fn referrers(&self, p: &StorePath) -> Result<BTreeSet<StorePath>> {
        self.paths_query(
            "select path from Refs join ValidPaths on referrer = id where reference = (select id from ValidPaths where path = ?)",
            self.full(p),
        )
    }

    /// Valid derivations that list `p` as an output.
    pub fn valid_derivers(&self, p: &StorePath) -> Result<BTreeSet<StorePath>> {
        self.paths_query(
            "select v.path from DerivationOutputs d join ValidPaths v on d.drv = v.id where d.path = ?",
            self.full(p),
        )
    }

    /// The outputs recorded for a valid derivation (output name → path).
    pub fn derivation_outputs(&self, drv: &StorePath) -> Result<BTreeMap<String, StorePath>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "select d.id, d.path from DerivationOutputs d join ValidPaths v on d.drv = v.id where v.path = ?",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map([self.full(drv)], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(self.err())?;
        let mut out = BTreeMap::new();
        for r in rows {
            let (name, path) = r.map_err(self.err())?;
            out.insert(name, self.parse(&path)?);
        }
        Ok(out)
    }

    /// Every valid path.
    pub fn all_valid(&self) -> Result<Vec<StorePath>> {
        let mut stmt = self
            .conn
            .prepare_cached("select path from ValidPaths")
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(self.err())?;
        let mut out = Vec::new();
        for r in rows {
            out.push(self.parse(&r.map_err(self.err())?)?);
        }
        Ok(out)
    }

    /// The whole reference graph at once (path → references), for closure walks over many
    /// paths without a query per path.
    pub fn reference_graph(&self) -> Result<HashMap<StorePath, Vec<StorePath>>> {
        let mut ids: HashMap<i64, StorePath> = HashMap::new();
        {
            let mut stmt = self
                .conn
                .prepare_cached("select id, path from ValidPaths")
                .map_err(self.err())?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
                .map_err(self.err())?;
            for r in rows {
                let (id, p) = r.map_err(self.err())?;
                ids.insert(id, self.parse(&p)?);
            }
        }
        let mut graph: HashMap<StorePath, Vec<StorePath>> =
            ids.values().map(|p| (p.clone(), Vec::new())).collect();
        let mut stmt = self
            .conn
            .prepare_cached("select referrer, reference from Refs")
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
            .map_err(self.err())?;
        for r in rows {
            let (a, b) = r.map_err(self.err())?;
            if let (Some(pa), Some(pb)) = (ids.get(&a), ids.get(&b)) {
                if let Some(v) = graph.get_mut(pa) {
                    v.push(pb.clone());
                }
            }
        }
        Ok(graph)
    }

    /// Register paths in one transaction: rows, derivation outputs, references. References
    /// outside `infos` must already be valid. `drv_outputs` gives the outputs of `.drv` paths.
    pub fn register(
        &mut self,
        infos: &[ValidPathInfo],
        drv_outputs: &BTreeMap<StorePath, BTreeMap<String, StorePath>>,
    ) -> Result<()> {
        let path = self.path.clone();
        let store_dir = self.store_dir.clone();
        let err = |source| StoreError::Db {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        {
            let mut update = tx
                .prepare_cached(
                    "update ValidPaths set narSize = ?, hash = ?, ultimate = ?, sigs = ?, ca = ? where path = ?",
                )
                .map_err(err)?;
            let mut insert = tx
                .prepare_cached(
                    "insert into ValidPaths (path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca) values (?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .map_err(err)?;
            let mut exists = tx
                .prepare_cached("select id from ValidPaths where path = ?")
                .map_err(err)?;
            let mut ids: HashMap<&StorePath, i64> = HashMap::new();
            for info in infos {
                let full = store_dir.display(&info.path);
                let hash = info.nar_hash.encode_typed(ferrix_format::Encoding::Base16);
                let size = (info.nar_size != 0).then_some(info.nar_size as i64);
                let ultimate = info.ultimate.then_some(1i64);
                let sigs = (!info.sigs.is_empty())
                    .then(|| info.sigs.iter().cloned().collect::<Vec<_>>().join(" "));
                let ca = info.ca.map(|c| c.to_string());
                let id: Option<i64> = exists
                    .query_row([&full], |r| r.get(0))
                    .optional()
                    .map_err(err)?;
                let id = match id {
                    Some(id) => {
                        update
                            .execute(params![size, hash, ultimate, sigs, ca, full])
                            .map_err(err)?;
                        id
                    }
                    None => {
                        insert
                            .execute(params![
                                full,
                                hash,
                                info.registration_time,
                                info.deriver.as_ref().map(|d| store_dir.display(d)),
                                size,
                                ultimate,
                                sigs,
                                ca
                            ])
                            .map_err(err)?;
                        tx.last_insert_rowid()
                    }
                };
                ids.insert(&info.path, id);
                if let Some(outs) = drv_outputs.get(&info.path) {
                    let mut ins = tx
                        .prepare_cached("insert or replace into DerivationOutputs (drv, id, path) values (?, ?, ?)")
                        .map_err(err)?;
                    for (name, out) in outs {
                        ins.execute(params![id, name, store_dir.display(out)])
                            .map_err(err)?;
                    }
                }
            }
            let mut add_ref = tx
                .prepare_cached("insert or replace into Refs (referrer, reference) values (?, ?)")
                .map_err(err)?;
            for info in infos {
                let id = ids[&info.path];
                for r in &info.references {
                    let rid = match ids.get(r) {
                        Some(rid) => *rid,
                        None => exists
                            .query_row([store_dir.display(r)], |row| row.get(0))
                            .optional()
                            .map_err(err)?
                            .ok_or_else(|| StoreError::ReferenceNotValid {
                                path: store_dir.display(&info.path),
                                reference: store_dir.display(r),
                            })?,
                    };
                    add_ref.execute(params![id, rid]).map_err(err)?;
                }
            }
        }
        // Refuse reference cycles among the new paths (self-references are fine).
        crate::closure::topo_sort_infos(&store_dir, infos)?;
        tx.commit().map_err(err)
    }

    /// Remove a path's row (and by cascade its references and drv outputs). Fails while other
    /// valid paths still refer to it.
    /// Record `sigs` as the signatures of valid path `p` (space-separated, as Nix keeps
    /// them).
    pub fn set_sigs(&mut self, p: &StorePath, sigs: &BTreeSet<String>) -> Result<()> {
        let full = self.full(p);
        let text = (!sigs.is_empty()).then(|| sigs.iter().cloned().collect::<Vec<_>>().join(" "));
        let n = self
            .conn
            .execute(
                "update ValidPaths set sigs = ? where path = ?",
                rusqlite::params![text, full],
            )
            .map_err(self.err())?;
        if n == 0 {
            return Err(StoreError::NotValid(full));
        }
        Ok(())
    }

    pub fn invalidate(&mut self, p: &StorePath) -> Result<()> {
        let full = self.full(p);
        let referrers: Vec<StorePath> = self.referrers(p)?.into_iter().filter(|r| r != p).collect();
        if let Some(by) = referrers.first() {
            return Err(StoreError::InUse {
                path: full,
                by: self.full(by),
            });
        }
        self.conn
            .execute("delete from ValidPaths where path = ?", [&full])
            .map_err(self.err())?;
        Ok(())
    }

    /// Remove many rows in one transaction, in the given order (referrers first). Fails,
    /// changing nothing, if a path still has a referrer outside the set.
    pub fn invalidate_batch(&mut self, paths: &[StorePath]) -> Result<()> {
        let path = self.path.clone();
        let err = |source| StoreError::Db {
            path: path.clone(),
            source,
        };
        let store_dir = self.store_dir.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        {
            let mut referrer = tx
                .prepare_cached(
                    "select v.path from Refs r join ValidPaths v on r.referrer = v.id \
                     where r.reference = (select id from ValidPaths where path = ?1) and r.referrer != r.reference limit 1",
                )
                .map_err(err)?;
            let mut del = tx
                .prepare_cached("delete from ValidPaths where path = ?")
                .map_err(err)?;
            for p in paths {
                let full = store_dir.display(p);
                del.execute([&full]).map_err(|e| match e {
                    rusqlite::Error::SqliteFailure(..) => StoreError::InUse {
                        path: full.clone(),
                        by: referrer
                            .query_row([&full], |r| r.get::<_, String>(0))
                            .unwrap_or_default(),
                    },
                    e => err(e),
                })?;
            }
        }
        tx.commit().map_err(err)
    }

    /// Each valid path's deriver, where it is recorded and itself valid.
    pub fn derivers(&self) -> Result<HashMap<StorePath, StorePath>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "select a.path, a.deriver from ValidPaths a join ValidPaths b on a.deriver = b.path",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(self.err())?;
        let mut out = HashMap::new();
        for r in rows {
            let (p, d) = r.map_err(self.err())?;
            out.insert(self.parse(&p)?, self.parse(&d)?);
        }
        Ok(out)
    }

    /// The closure of `roots` (or, without `recursive`, just `roots`) with each member's
    /// references, in one query rather than one per path.
    pub fn closure_graph(
        &self,
        roots: &[StorePath],
        recursive: bool,
    ) -> Result<HashMap<StorePath, Vec<StorePath>>> {
        self.conn
            .execute_batch("create temp table if not exists ClosureRoots (path text primary key); delete from ClosureRoots;")
            .map_err(self.err())?;
        {
            // One transaction for all the inserts, not one each.
            let tx = self.conn.unchecked_transaction().map_err(self.err())?;
            {
                let mut ins = tx
                    .prepare_cached("insert or ignore into ClosureRoots (path) values (?)")
                    .map_err(self.err())?;
                for r in roots {
                    ins.execute([self.full(r)]).map_err(self.err())?;
                }
            }
            tx.commit().map_err(self.err())?;
        }
        let members = if recursive {
            "with recursive c(id) as ( \
               select v.id from ValidPaths v join ClosureRoots r on v.path = r.path \
               union select f.reference from Refs f join c on f.referrer = c.id) "
        } else {
            "with c(id) as (select v.id from ValidPaths v join ClosureRoots r on v.path = r.path) "
        };
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "{members}select a.path, b.path from c join ValidPaths a on a.id = c.id \
                   left join Refs f on f.referrer = c.id left join ValidPaths b on b.id = f.reference"
            ))
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
            })
            .map_err(self.err())?;
        let mut out: HashMap<StorePath, Vec<StorePath>> = HashMap::new();
        for r in rows {
            let (a, b) = r.map_err(self.err())?;
            let e = out.entry(self.parse(&a)?).or_default();
            if let Some(b) = b {
                e.push(self.parse(&b)?);
            }
        }
        Ok(out)
    }

    /// `PRAGMA integrity_check` — "ok" when the file is sound.
    pub fn integrity_check(&self) -> Result<String> {
        self.conn
            .query_row("pragma integrity_check", [], |r| r.get(0))
            .map_err(self.err())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Write a small file whole or not at all.
pub(crate) fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    res.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err("writing", path)(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache_size(db: &Db) -> i64 {
        db.conn
            .pragma_query_value(None, "cache_size", |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn the_page_cache_is_sqlites_default_unless_sized() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StoreDir::default();
        let default = Db::open(dir.path(), &sd, None).unwrap();
        assert_eq!(cache_size(&default), -2000, "SQLite's default, 2000 KiB");
        let small = Db::open(dir.path(), &sd, Some(256)).unwrap();
        assert_eq!(cache_size(&small), -256);
        // Only the connection asked for it: another one keeps the default.
        assert_eq!(
            cache_size(&Db::open_reader(dir.path(), &sd).unwrap()),
            -2000
        );
    }
}

//! The narinfo disk cache: what HTTP caches said about their paths (and about themselves),
//! kept between runs in Nix's own `binary-cache-v6.sqlite`, so Ferrix and Nix share it and
//! a repeated query does not go to the network.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferrix_format::{NarInfo, StoreDir, StorePath};
use rusqlite::{params, Connection, OptionalExtension};

use super::CacheError;

/// Nix 2.8's schema, word for word in meaning: the file is shared with it.
const SCHEMA: &str = "
create table if not exists BinaryCaches (
    id        integer primary key autoincrement not null,
    url       text unique not null,
    timestamp integer not null,
    storeDir  text not null,
    wantMassQuery integer not null,
    priority  integer not null
);
create table if not exists NARs (
    cache            integer not null,
    hashPart         text not null,
    namePart         text,
    url              text,
    compression      text,
    fileHash         text,
    fileSize         integer,
    narHash          text,
    narSize          integer,
    refs             text,
    deriver          text,
    sigs             text,
    ca               text,
    timestamp        integer not null,
    present          integer not null,
    primary key (cache, hashPart),
    foreign key (cache) references BinaryCaches(id) on delete cascade
);
create table if not exists Realisations (
    cache integer not null,
    outputId text not null,
    content blob,
    timestamp        integer not null,
    primary key (cache, outputId),
    foreign key (cache) references BinaryCaches(id) on delete cascade
);
create table if not exists LastPurge (
    dummy            text primary key,
    value            integer
);
";

/// Expired rows are deleted at most this often, as Nix does.
const PURGE_INTERVAL: i64 = 24 * 3600;

/// How long what the disk cache holds is believed (`narinfo-cache-positive-ttl`,
/// `narinfo-cache-negative-ttl`, `narinfo-cache-meta-ttl`).
#[derive(Debug, Clone, Copy)]
pub struct DiskCacheTtl {
    pub positive: Duration,
    pub negative: Duration,
    /// For a cache's own `nix-cache-info` (Nix 2.8 keeps it forever; current Nix 7 days).
    pub meta: Duration,
}

impl Default for DiskCacheTtl {
    fn default() -> Self {
        Self {
            positive: Duration::from_secs(30 * 24 * 3600),
            negative: Duration::from_secs(3600),
            meta: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// What a cache said of itself, as remembered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedInfo {
    /// The cache's row, which its narinfos refer to.
    pub id: i64,
    pub store_dir: String,
    pub want_mass_query: bool,
    pub priority: u64,
}

/// What is remembered of one path in one cache.
#[derive(Debug)]
pub enum Remembered {
    /// Nothing still believed: ask the cache.
    Unknown,
    /// The cache did not have it.
    Missing,
    Present(Box<NarInfo>),
}

/// The disk cache, opened.
#[derive(Debug)]
pub struct NarInfoDiskCache {
    file: PathBuf,
    conn: Mutex<Connection>,
    ttl: DiskCacheTtl,
}

impl NarInfoDiskCache {
    /// Open (making it and its directory if need be) the disk cache at `file`, and delete
    /// rows expired long since when that was last done over a day ago.
    pub fn open(file: &Path, ttl: DiskCacheTtl) -> Result<Self, CacheError> {
        let e = |source| CacheError::DiskCache {
            file: file.to_owned(),
            source,
        };
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).map_err(|source| CacheError::Io {
                what: "create the directory",
                path: dir.to_owned(),
                source,
            })?;
        }
        let conn = Connection::open(file).map_err(e)?;
        conn.busy_timeout(Duration::from_secs(60)).map_err(e)?;
        // As Nix opens it: losing it costs only queries.
        conn.pragma_update(None, "synchronous", "off").map_err(e)?;
        conn.pragma_update(None, "journal_mode", "truncate")
            .map_err(e)?;
        conn.execute_batch(SCHEMA).map_err(e)?;
        let me = Self {
            file: file.to_owned(),
            conn: Mutex::new(conn),
            ttl,
        };
        me.purge().map_err(e)?;
        Ok(me)
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn err(&self, source: rusqlite::Error) -> CacheError {
        CacheError::DiskCache {
            file: self.file.clone(),
            source,
        }
    }

    fn purge(&self) -> rusqlite::Result<()> {
        let now = now();
        let conn = self.conn();
        let last: Option<i64> = conn
            .query_row("select value from LastPurge", [], |r| r.get(0))
            .optional()?;
        if last.is_some_and(|l| l >= now - PURGE_INTERVAL) {
            return Ok(());
        }
        // Never less than Nix's defaults, so a short TTL for one run does not empty it.
        let neg = secs(self.ttl.negative).max(3600);
        let pos = secs(self.ttl.positive).max(30 * 24 * 3600);
        conn.execute(
            "delete from NARs where ((present = 0 and timestamp < ?1) or (present = 1 and timestamp < ?2))",
            params![now - neg, now - pos],
        )?;
        conn.execute(
            "insert or replace into LastPurge(dummy, value) values ('', ?1)",
            params![now],
        )?;
        Ok(())
    }

    /// What `url` said of itself, if that is recent enough to believe.
    pub fn cache_info(&self, url: &str) -> Result<Option<CachedInfo>, CacheError> {
        let since = now() - secs(self.ttl.meta);
        self.conn()
            .query_row(
                "select id, storeDir, wantMassQuery, priority from BinaryCaches where url = ?1 and timestamp > ?2",
                params![url, since],
                |r| {
                    Ok(CachedInfo {
                        id: r.get(0)?,
                        store_dir: r.get(1)?,
                        want_mass_query: r.get::<_, i64>(2)? != 0,
                        priority: r.get::<_, i64>(3)?.max(0) as u64,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Remember what `url` said of itself: its row.
    pub fn remember_cache(
        &self,
        url: &str,
        store_dir: &str,
        want_mass_query: bool,
        priority: u64,
    ) -> Result<i64, CacheError> {
        let conn = self.conn();
        // An update keeps the row's id, and with it the narinfos remembered under it
        // (replacing the row would delete them, by the foreign key, where that is on).
        let changed = conn
            .execute(
                "update BinaryCaches set timestamp = ?2, storeDir = ?3, wantMassQuery = ?4, priority = ?5 where url = ?1",
                params![url, now(), store_dir, want_mass_query as i64, priority as i64],
            )
            .map_err(|e| self.err(e))?;
        if changed == 0 {
            conn.execute(
                "insert into BinaryCaches(url, timestamp, storeDir, wantMassQuery, priority) values (?1, ?2, ?3, ?4, ?5)",
                params![url, now(), store_dir, want_mass_query as i64, priority as i64],
            )
            .map_err(|e| self.err(e))?;
        }
        conn.query_row(
            "select id from BinaryCaches where url = ?1",
            params![url],
            |r| r.get(0),
        )
        .map_err(|e| self.err(e))
    }

    /// What is remembered of `p` in the cache `id`. A row that does not make a sound
    /// narinfo (or names another path) counts as unknown: the cache is asked again.
    pub fn lookup(
        &self,
        id: i64,
        store_dir: &StoreDir,
        p: &StorePath,
    ) -> Result<Remembered, CacheError> {
        type Row = (
            i64,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<String>,
            Option<i64>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let now = now();
        let row: Option<Row> = self
            .conn()
            .query_row(
                "select present, namePart, url, compression, fileHash, fileSize, narHash, narSize, refs, deriver, sigs, ca from NARs where cache = ?1 and hashPart = ?2 and ((present = 0 and timestamp > ?3) or (present = 1 and timestamp > ?4))",
                params![
                    id,
                    p.hash_part(),
                    now - secs(self.ttl.negative),
                    now - secs(self.ttl.positive)
                ],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                        r.get(8)?,
                        r.get(9)?,
                        r.get(10)?,
                        r.get(11)?,
                    ))
                },
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let Some((present, name, url, compression, fh, fs, nh, ns, refs, deriver, sigs, ca)) = row
        else {
            return Ok(Remembered::Unknown);
        };
        if present == 0 {
            return Ok(Remembered::Missing);
        }
        // The row as the narinfo it came from, parsed as strictly as one fetched.
        let mut text = format!(
            "StorePath: {}/{}-{}\nURL: {}\nCompression: {}\n",
            store_dir.as_str(),
            p.hash_part(),
            name.unwrap_or_default(),
            url.unwrap_or_default(),
            compression.unwrap_or_default(),
        );
        if let Some(h) = fh.filter(|h| !h.is_empty()) {
            text.push_str(&format!("FileHash: {h}\n"));
        }
        if let Some(n) = fs.filter(|n| *n > 0) {
            text.push_str(&format!("FileSize: {n}\n"));
        }
        text.push_str(&format!(
            "NarHash: {}\nNarSize: {}\nReferences: {}\n",
            nh.unwrap_or_default(),
            ns.unwrap_or_default(),
            refs.unwrap_or_default()
        ));
        if let Some(d) = deriver.filter(|d| !d.is_empty()) {
            text.push_str(&format!("Deriver: {d}\n"));
        }
        for s in sigs
            .unwrap_or_default()
            .split(' ')
            .filter(|s| !s.is_empty())
        {
            text.push_str(&format!("Sig: {s}\n"));
        }
        if let Some(ca) = ca.filter(|c| !c.is_empty()) {
            text.push_str(&format!("CA: {ca}\n"));
        }
        Ok(match NarInfo::parse(store_dir, &text) {
            Ok(info) if info.store_path == *p => Remembered::Present(Box::new(info)),
            _ => Remembered::Unknown,
        })
    }

    /// Remember `info` for the path it describes in the cache `id`.
    pub fn remember(&self, id: i64, info: &NarInfo) -> Result<(), CacheError> {
        let refs: Vec<String> = info.references.iter().map(|r| r.to_string()).collect();
        let sigs: Vec<String> = info.sigs.iter().map(|s| s.to_string()).collect();
        self.conn()
            .execute(
                "insert or replace into NARs(cache, hashPart, namePart, url, compression, fileHash, fileSize, narHash, narSize, refs, deriver, sigs, ca, timestamp, present) values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, 1)",
                params![
                    id,
                    info.store_path.hash_part(),
                    info.store_path.name(),
                    info.url,
                    info.compression,
                    info.file_hash.as_ref().map(|h| h.to_string()),
                    info.file_size.map(|n| n as i64),
                    info.nar_hash.to_string(),
                    info.nar_size as i64,
                    refs.join(" "),
                    info.deriver.as_ref().map(|d| d.to_string()),
                    sigs.join(" "),
                    info.ca.as_ref().map(|c| c.to_string()).unwrap_or_default(),
                    now(),
                ],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Remember that the cache `id` does not have `p`.
    pub fn remember_missing(&self, id: i64, p: &StorePath) -> Result<(), CacheError> {
        self.conn()
            .execute(
                "insert or replace into NARs(cache, hashPart, timestamp, present) values (?1, ?2, ?3, 0)",
                params![id, p.hash_part(), now()],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Forget what is remembered of `p` in the cache `id` (its NAR turned out missing or
    /// not as described, or it is not trusted): the next run asks the cache again.
    pub fn forget(&self, id: i64, p: &StorePath) -> Result<(), CacheError> {
        self.conn()
            .execute(
                "delete from NARs where cache = ?1 and hashPart = ?2",
                params![id, p.hash_part()],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_dir() -> StoreDir {
        StoreDir::new("/nix/store").unwrap()
    }

    const NARINFO: &str = include_str!(
        "../../../../tests/vectors/narinfo/cache-xz/g2w4dy6v3kifcpnwmx4lk6xhvs7pxkjg.narinfo"
    );
    /// With a content address and no deriver.
    const CA_NARINFO: &str = include_str!(
        "../../../../tests/vectors/narinfo/cache-xz/fsggx1xj7cgwgjhr6151i8bwj84sh5h9.narinfo"
    );

    fn open(dir: &Path, ttl: DiskCacheTtl) -> NarInfoDiskCache {
        NarInfoDiskCache::open(&dir.join("nix/binary-cache-v6.sqlite"), ttl).unwrap()
    }

    #[test]
    fn a_narinfo_comes_back_as_it_went_in() {
        let d = tempfile::tempdir().unwrap();
        let c = open(d.path(), DiskCacheTtl::default());
        let sd = store_dir();
        let info = NarInfo::parse(&sd, NARINFO).unwrap();
        let id = c
            .remember_cache("https://cache.example", "/nix/store", true, 40)
            .unwrap();
        assert!(matches!(
            c.lookup(id, &sd, &info.store_path).unwrap(),
            Remembered::Unknown
        ));
        c.remember(id, &info).unwrap();
        let Remembered::Present(back) = c.lookup(id, &sd, &info.store_path).unwrap() else {
            panic!("not remembered")
        };
        assert_eq!(back.to_text(&sd), NARINFO);
        let ca = NarInfo::parse(&sd, CA_NARINFO).unwrap();
        c.remember(id, &ca).unwrap();
        let Remembered::Present(back) = c.lookup(id, &sd, &ca.store_path).unwrap() else {
            panic!("not remembered")
        };
        assert_eq!(back.to_text(&sd), CA_NARINFO);
        // Another cache has its own rows.
        let other = c
            .remember_cache("https://other.example", "/nix/store", false, 50)
            .unwrap();
        assert_ne!(other, id);
        assert!(matches!(
            c.lookup(other, &sd, &info.store_path).unwrap(),
            Remembered::Unknown
        ));
        c.remember_missing(other, &info.store_path).unwrap();
        assert!(matches!(
            c.lookup(other, &sd, &info.store_path).unwrap(),
            Remembered::Missing
        ));
        // Remembering a cache again keeps its id and its narinfos.
        assert_eq!(
            c.remember_cache("https://cache.example", "/nix/store", true, 41)
                .unwrap(),
            id
        );
        assert_eq!(
            c.cache_info("https://cache.example").unwrap(),
            Some(CachedInfo {
                id,
                store_dir: "/nix/store".into(),
                want_mass_query: true,
                priority: 41
            })
        );
        assert!(matches!(
            c.lookup(id, &sd, &info.store_path).unwrap(),
            Remembered::Present(_)
        ));
        c.forget(id, &info.store_path).unwrap();
        assert!(matches!(
            c.lookup(id, &sd, &info.store_path).unwrap(),
            Remembered::Unknown
        ));
    }

    #[test]
    fn rows_older_than_their_ttl_are_not_believed() {
        let d = tempfile::tempdir().unwrap();
        let sd = store_dir();
        let info = NarInfo::parse(&sd, NARINFO).unwrap();
        let missing = "00000000000000000000000000000000-gone"
            .parse::<StorePath>()
            .unwrap();
        let c = open(d.path(), DiskCacheTtl::default());
        let id = c
            .remember_cache("https://cache.example", "/nix/store", false, 40)
            .unwrap();
        c.remember(id, &info).unwrap();
        c.remember_missing(id, &missing).unwrap();
        // Rows written in the past second, read with a TTL of zero.
        drop(c);
        let zero = DiskCacheTtl {
            positive: Duration::ZERO,
            negative: Duration::ZERO,
            meta: Duration::ZERO,
        };
        let c = open(d.path(), zero);
        std::thread::sleep(Duration::from_millis(1100));
        assert!(matches!(
            c.lookup(id, &sd, &info.store_path).unwrap(),
            Remembered::Unknown
        ));
        assert!(matches!(
            c.lookup(id, &sd, &missing).unwrap(),
            Remembered::Unknown
        ));
        assert_eq!(c.cache_info("https://cache.example").unwrap(), None);
        // The rows are still there for a reader with longer TTLs.
        let c = open(d.path(), DiskCacheTtl::default());
        assert!(matches!(
            c.lookup(id, &sd, &missing).unwrap(),
            Remembered::Missing
        ));
    }

    #[test]
    fn a_row_that_is_not_a_sound_narinfo_is_asked_again() {
        let d = tempfile::tempdir().unwrap();
        let sd = store_dir();
        let info = NarInfo::parse(&sd, NARINFO).unwrap();
        let c = open(d.path(), DiskCacheTtl::default());
        let id = c
            .remember_cache("https://cache.example", "/nix/store", false, 40)
            .unwrap();
        c.remember(id, &info).unwrap();
        c.conn()
            .execute("update NARs set narHash = 'sha256:nonsense'", [])
            .unwrap();
        assert!(matches!(
            c.lookup(id, &sd, &info.store_path).unwrap(),
            Remembered::Unknown
        ));
    }
}

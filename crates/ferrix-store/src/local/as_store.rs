//! The local store as a [`Store`]: queries from the database, NARs dumped from the files, and
//! paths added several NARs at a time and committed in batches.

use super::*;
use crate::store::{copying, parallel_map, with_nar, AddOptions, CopyError, Store};

/// Paths staged before each commit when copying in.
const COPY_BATCH: usize = 64;

impl Store for LocalStore {
    fn uri(&self) -> String {
        if self.config.real_store_dir == Path::new(self.config.store_dir.as_str()) {
            "local".to_owned()
        } else {
            // A chroot store: named by where its files are.
            self.config.real_store_dir.display().to_string()
        }
    }

    fn store_dir(&self) -> &StoreDir {
        LocalStore::store_dir(self)
    }

    fn query_valid(
        &self,
        paths: &BTreeSet<StorePath>,
        _substitute: bool,
    ) -> std::result::Result<BTreeSet<StorePath>, CopyError> {
        Ok(self.valid_among(paths.iter())?.into_iter().collect())
    }

    fn query_infos(
        &self,
        paths: &BTreeSet<StorePath>,
    ) -> std::result::Result<BTreeMap<StorePath, ValidPathInfo>, CopyError> {
        let db = self.reader()?;
        let mut out = BTreeMap::new();
        for p in paths {
            if let Some(i) = db.path_info(p)? {
                out.insert(p.clone(), i);
            }
        }
        Ok(out)
    }

    fn query_closure(
        &self,
        paths: &BTreeSet<StorePath>,
        include_outputs: bool,
    ) -> std::result::Result<BTreeMap<StorePath, ValidPathInfo>, CopyError> {
        let all = self.closure(paths.iter().cloned(), include_outputs, false)?;
        let infos = self.query_infos(&all)?;
        // A path collected meanwhile is missing, not silently left out.
        if let Some(p) = all.iter().find(|p| !infos.contains_key(*p)) {
            return Err(StoreError::NotValid(self.print(p)).into());
        }
        Ok(infos)
    }

    fn nar_streams(&self) -> usize {
        crate::store::cores().max(2)
    }

    fn nar_into(
        &self,
        info: &ValidPathInfo,
        out: &mut dyn Write,
    ) -> std::result::Result<(), CopyError> {
        Ok(self.nar_from_path(&info.path, out)?)
    }

    fn add_many(
        &self,
        infos: &[ValidPathInfo],
        from: &dyn Store,
        opts: &AddOptions,
    ) -> std::result::Result<(), CopyError> {
        // Every path is checked before anything is added: all or nothing.
        if let (true, Some(trust)) = (opts.check_sigs, &opts.trust) {
            if let Some(i) = infos
                .iter()
                .find(|i| !crate::store::trusted(self.store_dir(), i, trust))
            {
                return Err(CopyError::Unsigned {
                    path: self.print(&i.path),
                    from: from.uri(),
                });
            }
        }
        let threads = from.nar_streams().min(crate::store::cores().max(2));
        for batch in infos.chunks(COPY_BATCH) {
            let staged = parallel_map(batch, threads, |info| {
                with_nar(from, info, |r| Ok(self.stage_nar(info, r)?)).map_err(copying(from, info))
            })?;
            self.commit_batch(staged.into_iter().flatten().collect())?;
        }
        Ok(())
    }
}

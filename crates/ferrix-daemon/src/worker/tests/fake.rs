//! An in-memory store the scripted sessions run against.

use super::*;
use crate::export_record::{read_record, write_record, ExportRecord};

#[derive(Debug, Error)]
pub(super) enum FakeError {
    #[error("path '{0}' is not valid")]
    NotValid(StorePath),
    #[error("the client asked for an error")]
    Asked,
    #[error("NAR hash mismatch for '{0}'")]
    HashMismatch(StorePath),
    #[error("bad stream of paths")]
    Wire(#[from] WireError),
    #[error("reading data")]
    Io(#[from] io::Error),
    #[error("bad export record")]
    Record(#[from] crate::export_record::RecordError),
}

#[derive(Debug, Default)]
pub(super) struct Fake {
    pub(super) paths: BTreeMap<StorePath, (UnkeyedPathInfo, Vec<u8>)>,
    /// Derivations the store knows, with their outputs.
    pub(super) drvs: BTreeMap<StorePath, BTreeMap<String, Option<StorePath>>>,
    pub(super) options: Option<ClientOptions>,
    pub(super) roots: Vec<String>,
    /// What `find_roots` answers: link, path.
    pub(super) gc_roots: Vec<(String, StorePath)>,
    pub(super) logs: BTreeMap<StorePath, Vec<u8>>,
    /// What each call saw, in order.
    pub(super) calls: Vec<String>,
    /// How much of a NAR `add_to_store_nar` reads before it stops (all when `None`), and
    /// whether it then fails.
    pub(super) nar_read: Option<usize>,
    pub(super) nar_fail: bool,
}

impl Fake {
    pub(super) fn with_paths() -> (Self, StorePath, StorePath) {
        let a = sp("a", 1);
        let b = sp("b", 2);
        let mut f = Fake::default();
        let nar_a = nar_of_text("a");
        let nar_b = nar_of_text("b refers to a");
        f.paths
            .insert(a.clone(), (info_of(&a, &nar_a, &[]).info, nar_a));
        let mut ib = info_of(&b, &nar_b, &[&a]).info;
        ib.sigs.insert("k:sig".into());
        ib.ca = Some(ContentAddress::Fixed {
            method: FileIngestionMethod::Recursive,
            hash: Hash::sha256(b"b"),
        });
        ib.deriver = Some(sp("b.drv", 3));
        f.paths.insert(b.clone(), (ib, nar_b));
        f.drvs.insert(
            sp("b.drv", 3),
            [
                ("out".to_owned(), Some(b.clone())),
                ("dev".to_owned(), None),
            ]
            .into(),
        );
        (f, a, b)
    }

    pub(super) fn read_nar(&self, nar: &mut dyn Read) -> Result<Vec<u8>, FakeError> {
        let mut bytes = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            if self.nar_read.is_some_and(|n| bytes.len() >= n) {
                break;
            }
            let n = nar.read(&mut buf)?;
            if n == 0 {
                break;
            }
            bytes.extend_from_slice(&buf[..n]);
        }
        if let Some(n) = self.nar_read {
            bytes.truncate(n);
        }
        Ok(bytes)
    }

    pub(super) fn add(&mut self, info: &PathInfo, bytes: Vec<u8>) -> Result<(), FakeError> {
        if Hash::sha256(&bytes) != info.info.nar_hash {
            return Err(FakeError::HashMismatch(info.path.clone()));
        }
        self.paths
            .insert(info.path.clone(), (info.info.clone(), bytes));
        Ok(())
    }
}

pub(super) fn build_log(log: &mut dyn Logger) {
    let _ = log.log(StderrMsg::StartActivity {
        id: 1,
        level: verbosity::INFO,
        kind: activity::BUILD,
        text: "building".into(),
        fields: vec![Field::Str("x".into())],
        parent: 0,
    });
    let _ = log.log(StderrMsg::Result {
        id: 1,
        kind: result_type::BUILD_LOG_LINE,
        fields: vec![Field::Str("hi".into())],
    });
    let _ = log.log(StderrMsg::StopActivity(1));
}

impl WorkerHandler for Fake {
    type Error = FakeError;

    fn set_options(
        &mut self,
        options: &ClientOptions,
        _log: &mut dyn Logger,
    ) -> Result<(), FakeError> {
        self.calls.push("options".into());
        self.options = Some(options.clone());
        Ok(())
    }

    fn is_valid_path(&mut self, path: &StorePath) -> Result<bool, FakeError> {
        self.calls.push(format!("valid {path}"));
        Ok(self.paths.contains_key(path))
    }

    fn query_valid_paths(
        &mut self,
        paths: &BTreeSet<StorePath>,
        substitute: bool,
        log: &mut dyn Logger,
    ) -> Result<BTreeSet<StorePath>, FakeError> {
        self.calls
            .push(format!("valid-paths substitute={substitute}"));
        if substitute {
            let _ = log.log(StderrMsg::Next("substituting nothing\n".into()));
        }
        Ok(paths
            .iter()
            .filter(|p| self.paths.contains_key(p))
            .cloned()
            .collect())
    }

    fn query_path_info(&mut self, path: &StorePath) -> Result<Option<UnkeyedPathInfo>, FakeError> {
        self.calls.push(format!("info {path}"));
        Ok(self.paths.get(path).map(|(i, _)| i.clone()))
    }

    fn query_referrers(&mut self, path: &StorePath) -> Result<BTreeSet<StorePath>, FakeError> {
        Ok(self
            .paths
            .iter()
            .filter(|(_, (i, _))| i.references.contains(path))
            .map(|(p, _)| p.clone())
            .collect())
    }

    fn query_all_valid_paths(&mut self) -> Result<BTreeSet<StorePath>, FakeError> {
        Ok(self.paths.keys().cloned().collect())
    }

    fn query_path_from_hash_part(
        &mut self,
        hash_part: &str,
    ) -> Result<Option<StorePath>, FakeError> {
        Ok(self
            .paths
            .keys()
            .find(|p| p.hash_part() == hash_part)
            .cloned())
    }

    fn query_derivation_output_map(
        &mut self,
        drv_path: &StorePath,
    ) -> Result<BTreeMap<String, Option<StorePath>>, FakeError> {
        self.drvs
            .get(drv_path)
            .cloned()
            .ok_or_else(|| FakeError::NotValid(drv_path.clone()))
    }

    fn query_missing(&mut self, targets: &[DerivedPath]) -> Result<Missing, FakeError> {
        let mut m = Missing::default();
        for t in targets {
            match t {
                DerivedPath::Built { drv_path, .. } => {
                    m.will_build.insert(drv_path.clone());
                }
                DerivedPath::Opaque(p) if !self.paths.contains_key(p) => {
                    m.unknown.insert(p.clone());
                }
                DerivedPath::Opaque(_) => {}
            }
        }
        m.download_size = 7;
        m.nar_size = 9;
        Ok(m)
    }

    fn add_temp_root(&mut self, path: &StorePath) -> Result<(), FakeError> {
        self.roots.push(format!("temp {path}"));
        Ok(())
    }

    fn add_indirect_root(&mut self, link: &str) -> Result<(), FakeError> {
        self.roots.push(format!("indirect {link}"));
        Ok(())
    }

    fn add_perm_root(&mut self, path: &StorePath, gc_root: &str) -> Result<String, FakeError> {
        self.roots.push(format!("perm {path} {gc_root}"));
        Ok(gc_root.to_owned())
    }

    fn ensure_path(&mut self, path: &StorePath, log: &mut dyn Logger) -> Result<(), FakeError> {
        let _ = log.log(StderrMsg::Next(format!("ensuring {path}\n")));
        if self.paths.contains_key(path) {
            Ok(())
        } else {
            Err(FakeError::NotValid(path.clone()))
        }
    }

    fn build_paths(
        &mut self,
        targets: &[DerivedPath],
        mode: BuildMode,
        log: &mut dyn Logger,
    ) -> Result<(), FakeError> {
        self.calls.push(format!("build {} {mode:?}", targets.len()));
        build_log(log);
        if targets.iter().any(|t| t.path().name().contains("fail")) {
            return Err(FakeError::Asked);
        }
        Ok(())
    }

    fn build_paths_with_results(
        &mut self,
        targets: &[DerivedPath],
        mode: BuildMode,
        log: &mut dyn Logger,
    ) -> Result<Vec<KeyedBuildResult>, FakeError> {
        self.calls.push(format!("build-results {mode:?}"));
        build_log(log);
        Ok(targets
            .iter()
            .map(|t| {
                let failed = t.path().name().contains("fail");
                KeyedBuildResult {
                    path: t.clone(),
                    result: if failed {
                        BuildResult::new(BuildStatus::PermanentFailure, "builder failed")
                    } else {
                        BuildResult::new(BuildStatus::AlreadyValid, "")
                    },
                }
            })
            .collect())
    }

    fn build_derivation(
        &mut self,
        drv_path: &StorePath,
        drv: &Derivation,
        mode: BuildMode,
        log: &mut dyn Logger,
    ) -> Result<BuildResult, FakeError> {
        self.calls
            .push(format!("build-derivation {drv_path} {mode:?}"));
        let _ = log.log(StderrMsg::Next("hi\n".into()));
        if drv.builder == "error" {
            return Err(FakeError::Asked);
        }
        let mut res = BuildResult::new(BuildStatus::Built, "");
        res.times_built = 1;
        res.start_time = 10;
        res.stop_time = 12;
        res.cpu_user = Some(3);
        for (name, out) in &drv.outputs {
            if let Some(p) = out.path() {
                res.built_outputs.insert(
                    name.clone(),
                    BuiltOutput {
                        out_path: p.clone(),
                        signatures: BTreeSet::new(),
                    },
                );
            }
        }
        Ok(res)
    }

    fn nar_from_path(&mut self, path: &StorePath, out: &mut dyn Write) -> Result<(), FakeError> {
        self.calls.push(format!("nar {path}"));
        let (_, nar) = self
            .paths
            .get(path)
            .ok_or_else(|| FakeError::NotValid(path.clone()))?;
        if path.name() == "broken" {
            out.write_all(&nar[..8])?;
            return Err(FakeError::Asked);
        }
        out.write_all(nar)?;
        Ok(())
    }

    fn export_path(&mut self, path: &StorePath, out: &mut dyn Write) -> Result<(), FakeError> {
        self.calls.push(format!("export {path}"));
        let (info, nar) = self
            .paths
            .get(path)
            .ok_or_else(|| FakeError::NotValid(path.clone()))?;
        let r = ExportRecord {
            path: path.clone(),
            references: info.references.clone(),
            deriver: info.deriver.clone(),
            nar: nar.clone(),
        };
        write_record(out, &dir(), &r)?;
        Ok(())
    }

    fn import_paths(
        &mut self,
        input: &mut dyn Read,
        trusted: bool,
        log: &mut dyn Logger,
    ) -> Result<Vec<StorePath>, FakeError> {
        self.calls.push(format!("import trusted={trusted}"));
        let _ = log.log(StderrMsg::Next("importing\n".into()));
        // Buffered: the client answers each request with what it has, never past its end.
        let mut input = io::BufReader::new(input);
        let mut paths = Vec::new();
        loop {
            match read_u64(&mut input, "export flag")? {
                0 => return Ok(paths),
                1 => {}
                n => return Err(WireError::unexpected("export flag", n).into()),
            }
            let r = read_record(&mut input, &dir())?;
            let mut info = info_of(&r.path, &r.nar, &[]).info;
            info.references = r.references;
            info.deriver = r.deriver;
            self.paths.insert(r.path.clone(), (info, r.nar));
            paths.push(r.path);
        }
    }

    fn add_to_store_nar(
        &mut self,
        info: &PathInfo,
        repair: bool,
        dont_check_sigs: bool,
        nar: &mut dyn Read,
        log: &mut dyn Logger,
    ) -> Result<(), FakeError> {
        self.calls.push(format!(
            "add {} repair={repair} dontCheckSigs={dont_check_sigs} ultimate={}",
            info.path, info.info.ultimate
        ));
        let _ = log.log(StderrMsg::Next("adding\n".into()));
        let bytes = self.read_nar(nar)?;
        if self.nar_fail {
            return Err(FakeError::Asked);
        }
        if self.nar_read.is_some() {
            return Ok(());
        }
        self.add(info, bytes)
    }

    fn add_multiple_to_store(
        &mut self,
        repair: bool,
        dont_check_sigs: bool,
        paths: &mut IncomingPaths<'_>,
        _log: &mut dyn Logger,
    ) -> Result<(), FakeError> {
        let n = paths.count()?;
        self.calls.push(format!(
            "add-multiple {n} repair={repair} dontCheckSigs={dont_check_sigs}"
        ));
        while let Some((info, nar)) = paths.next_path()? {
            self.calls
                .push(format!("  {} ultimate={}", info.path, info.info.ultimate));
            let mut nar = nar;
            let bytes = self.read_nar(&mut nar)?;
            if self.nar_read.is_some() {
                // Leave the rest to the server.
                continue;
            }
            self.add(&info, bytes)?;
        }
        Ok(())
    }

    fn add_signatures(
        &mut self,
        path: &StorePath,
        sigs: &BTreeSet<String>,
    ) -> Result<(), FakeError> {
        let (info, _) = self
            .paths
            .get_mut(path)
            .ok_or_else(|| FakeError::NotValid(path.clone()))?;
        info.sigs.extend(sigs.iter().cloned());
        Ok(())
    }

    fn add_to_store(
        &mut self,
        name: &str,
        method: CaMethod,
        refs: &BTreeSet<StorePath>,
        repair: bool,
        data: &mut dyn Read,
        _log: &mut dyn Logger,
    ) -> Result<PathInfo, FakeError> {
        let mut contents = Vec::new();
        data.read_to_end(&mut contents)?;
        self.calls
            .push(format!("add-ca {name} {method} repair={repair}"));
        let d = StoreDir::default();
        let (path, nar) = match method {
            CaMethod::Text => (
                d.make_text_path(name, &Hash::sha256(&contents), refs)
                    .unwrap(),
                super::nar_of_text(std::str::from_utf8(&contents).unwrap()),
            ),
            CaMethod::Fixed { method, algo } => {
                let mut h = ferrix_format::hash::Hasher::new(algo);
                h.update(&contents);
                let nar = match method {
                    FileIngestionMethod::Recursive => contents.clone(),
                    FileIngestionMethod::Flat => {
                        super::nar_of_text(std::str::from_utf8(&contents).unwrap())
                    }
                };
                let ca = ContentAddress::Fixed {
                    method,
                    hash: h.finish(),
                };
                (d.make_ca_path(name, &ca, refs, false).unwrap(), nar)
            }
        };
        let mut info = UnkeyedPathInfo::new(Hash::sha256(&nar), nar.len() as u64);
        info.references = refs.clone();
        self.paths.insert(path.clone(), (info.clone(), nar));
        Ok(PathInfo { path, info })
    }

    fn add_text_to_store(
        &mut self,
        name: &str,
        text: &str,
        refs: &BTreeSet<StorePath>,
    ) -> Result<StorePath, FakeError> {
        let path = StoreDir::default()
            .make_text_path(name, &Hash::sha256(text.as_bytes()), refs)
            .unwrap();
        let nar = super::nar_of_text(text);
        let mut info = UnkeyedPathInfo::new(Hash::sha256(&nar), nar.len() as u64);
        info.references = refs.clone();
        self.paths.insert(path.clone(), (info, nar));
        Ok(path)
    }

    fn query_valid_derivers(&mut self, path: &StorePath) -> Result<BTreeSet<StorePath>, FakeError> {
        // Its deriver, when the store has it.
        Ok(self
            .paths
            .get(path)
            .and_then(|(i, _)| i.deriver.clone())
            .filter(|d| self.paths.contains_key(d))
            .into_iter()
            .collect())
    }

    fn find_roots(&mut self, censor: bool) -> Result<Vec<(String, StorePath)>, FakeError> {
        self.calls.push(format!("find-roots censor={censor}"));
        Ok(self.gc_roots.clone())
    }

    fn collect_garbage(
        &mut self,
        action: GcAction,
        paths: &BTreeSet<StorePath>,
        max_freed: Option<u64>,
        _log: &mut dyn Logger,
    ) -> Result<(Vec<StorePath>, u64), FakeError> {
        self.calls
            .push(format!("gc {action:?} {} max={max_freed:?}", paths.len()));
        // Dead: what no root names (references are not followed here).
        let dead: Vec<StorePath> = self
            .paths
            .keys()
            .filter(|p| !self.gc_roots.iter().any(|(_, r)| r == *p))
            .cloned()
            .collect();
        Ok((dead, 0))
    }

    fn add_build_log(
        &mut self,
        drv_path: &StorePath,
        data: &mut dyn Read,
    ) -> Result<(), FakeError> {
        let mut log = Vec::new();
        data.read_to_end(&mut log)?;
        self.logs.insert(drv_path.clone(), log);
        Ok(())
    }

    fn query_substitutable_paths(
        &mut self,
        paths: &BTreeSet<StorePath>,
        _log: &mut dyn Logger,
    ) -> Result<BTreeSet<StorePath>, FakeError> {
        self.calls.push(format!("substitutable {}", paths.len()));
        // The fake's cache has the paths whose name starts with `s`.
        Ok(paths
            .iter()
            .filter(|p| p.name().starts_with('s'))
            .cloned()
            .collect())
    }

    fn query_substitutable_path_infos(
        &mut self,
        paths: &BTreeMap<StorePath, Option<ContentAddress>>,
        log: &mut dyn Logger,
    ) -> Result<BTreeMap<StorePath, SubstitutableInfo>, FakeError> {
        let keys: BTreeSet<StorePath> = paths.keys().cloned().collect();
        Ok(self
            .query_substitutable_paths(&keys, log)?
            .into_iter()
            .map(|p| {
                let i = SubstitutableInfo {
                    deriver: Some(sp("s.drv", 9)),
                    references: BTreeSet::from([p.clone()]),
                    download_size: 10,
                    nar_size: 20,
                };
                (p, i)
            })
            .collect())
    }

    fn optimise_store(&mut self, log: &mut dyn Logger) -> Result<(), FakeError> {
        self.calls.push("optimise".into());
        let _ = log.log(StderrMsg::Next("0 freed\n".into()));
        Ok(())
    }

    fn verify_store(
        &mut self,
        check_contents: bool,
        repair: bool,
        _log: &mut dyn Logger,
    ) -> Result<bool, FakeError> {
        self.calls
            .push(format!("verify contents={check_contents} repair={repair}"));
        Ok(check_contents)
    }
}

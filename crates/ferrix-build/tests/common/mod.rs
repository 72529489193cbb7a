//! Shared helpers: a private store, derivations made in it, and a build runner.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrix_build::{
    run, BuildFailure, BuildMode, Built, LocalExecutor, LocalSettings, Outcome, Reporter,
    ScheduleOptions,
};
use ferrix_format::{Derivation, DerivationOutput, FileIngestionMethod, Hash, StoreDir, StorePath};
use ferrix_store::{LocalStore, LocalStoreConfig};
use tokio::sync::watch;

pub struct TestStore {
    pub dir: tempfile::TempDir,
    pub store: Arc<LocalStore>,
}

impl TestStore {
    pub fn new() -> Self {
        // Without a sandbox, builders write their outputs at the logical store path, so the
        // test store's logical and physical directories are the same temporary directory.
        let dir = tempfile::tempdir().unwrap();
        let store_dir = dir.path().join("store");
        let cfg = LocalStoreConfig {
            store_dir: StoreDir::new(store_dir.to_str().unwrap()).unwrap(),
            real_store_dir: store_dir,
            state_dir: dir.path().join("state"),
            log_dir: dir.path().join("log"),
            db_cache_kib: None,
        };
        let store = Arc::new(LocalStore::open(cfg).unwrap());
        std::fs::create_dir_all(dir.path().join("build")).unwrap();
        Self { dir, store }
    }

    /// Tests on a store set up differently (a chroot store, say).
    pub fn with_store(dir: tempfile::TempDir, store: Arc<LocalStore>) -> Self {
        std::fs::create_dir_all(dir.path().join("build")).unwrap();
        Self { dir, store }
    }

    pub fn settings(&self) -> LocalSettings {
        LocalSettings {
            max_jobs: 4,
            cores: 2,
            build_dir_base: self.dir.path().join("build"),
            keep_failed: false,
            log: ferrix_build::log::LogSettings {
                dir: self.dir.path().join("log"),
                compress: true,
                keep: true,
            },
            max_silent_time: None,
            timeout: None,
            impure_env: BTreeMap::new(),
            sandbox: None,
            platforms: ["x86_64-linux".to_owned()].into(),
            system_features: Default::default(),
            prepare_ahead: 0,
            reuse_build_dirs: true,
            fetch: Default::default(),
            build_users: None,
        }
    }

    /// A derivation running `/bin/sh -c script`, with the outputs of `inputs` (drv, output)
    /// available, written to the store. Returns the drv path.
    pub fn drv(
        &self,
        name: &str,
        script: &str,
        inputs: &[(&StorePath, &str)],
        outputs: &[&str],
        env: &[(&str, &str)],
    ) -> StorePath {
        let mut input_drvs: BTreeMap<StorePath, BTreeSet<String>> = BTreeMap::new();
        for (d, o) in inputs {
            input_drvs
                .entry((*d).clone())
                .or_default()
                .insert((*o).to_owned());
        }
        let mut drv = Derivation {
            outputs: outputs
                .iter()
                .map(|o| (o.to_string(), DerivationOutput::Deferred))
                .collect(),
            input_drvs,
            input_srcs: BTreeSet::new(),
            platform: "x86_64-linux".into(),
            builder: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: BTreeMap::new(),
        };
        drv.env.insert("name".into(), name.into());
        drv.env.insert("builder".into(), "/bin/sh".into());
        drv.env.insert("system".into(), "x86_64-linux".into());
        for (k, v) in env {
            drv.env.insert((*k).into(), (*v).into());
        }
        for o in outputs {
            drv.env.insert((*o).into(), String::new());
        }
        ferrix_store::drv::add_filled(&self.store, drv, name).unwrap()
    }

    /// A fixed-output derivation (flat sha256) whose builder writes `contents`.
    pub fn fixed_drv(&self, name: &str, contents: &str, claimed: &[u8]) -> StorePath {
        self.fixed_drv_script(name, &format!("printf '%s' '{contents}' > $out"), claimed)
    }

    /// A fixed-output derivation (flat sha256 of `claimed`) built by `script`.
    pub fn fixed_drv_script(&self, name: &str, script: &str, claimed: &[u8]) -> StorePath {
        let hash = Hash::sha256(claimed);
        let sd = self.store.store_dir();
        let path = sd
            .make_fixed_output_path(name, FileIngestionMethod::Flat, &hash, [], false)
            .unwrap();
        let mut drv = Derivation {
            outputs: [(
                "out".to_owned(),
                DerivationOutput::CaFixed {
                    method: FileIngestionMethod::Flat,
                    hash,
                    path: path.clone(),
                },
            )]
            .into(),
            input_drvs: BTreeMap::new(),
            input_srcs: BTreeSet::new(),
            platform: "x86_64-linux".into(),
            builder: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: BTreeMap::new(),
        };
        drv.env.insert("name".into(), name.into());
        drv.env.insert("out".into(), sd.display(&path));
        drv.env.insert(
            "outputHash".into(),
            hash.encode(ferrix_format::Encoding::Base16),
        );
        drv.env.insert("outputHashAlgo".into(), "sha256".into());
        drv.env.insert("outputHashMode".into(), "flat".into());
        self.store.add_derivation(&drv, name).unwrap()
    }

    pub fn out(&self, drv: &StorePath, output: &str) -> StorePath {
        let d = ferrix_build::plan::read_drv(&self.store, drv).unwrap();
        d.outputs[output].path().unwrap().clone()
    }

    pub fn read_out(&self, drv: &StorePath, output: &str) -> String {
        std::fs::read_to_string(self.store.real_path(&self.out(drv, output))).unwrap()
    }

    pub async fn build(
        &self,
        drvs: &[&StorePath],
        settings: LocalSettings,
        opts: ScheduleOptions,
    ) -> Outcome {
        let (_tx, rx) = watch::channel(false);
        self.build_with(drvs, settings, opts, rx).await
    }

    pub async fn build_with(
        &self,
        drvs: &[&StorePath],
        settings: LocalSettings,
        opts: ScheduleOptions,
        interrupt: watch::Receiver<bool>,
    ) -> Outcome {
        self.run_plan(drvs, settings, opts, interrupt, BuildMode::Normal)
            .await
    }

    /// Build `drvs` again and compare with their valid outputs (`--check`).
    pub async fn check(&self, drvs: &[&StorePath], settings: LocalSettings) -> Outcome {
        let (_tx, rx) = watch::channel(false);
        self.run_plan(
            drvs,
            settings,
            ScheduleOptions::default(),
            rx,
            BuildMode::Check,
        )
        .await
    }

    /// Build `drvs` again and replace their outputs (`--repair`).
    pub async fn repair(&self, drvs: &[&StorePath], settings: LocalSettings) -> Outcome {
        let (_tx, rx) = watch::channel(false);
        self.run_plan(
            drvs,
            settings,
            ScheduleOptions::default(),
            rx,
            BuildMode::Repair,
        )
        .await
    }

    async fn run_plan(
        &self,
        drvs: &[&StorePath],
        settings: LocalSettings,
        opts: ScheduleOptions,
        interrupt: watch::Receiver<bool>,
        mode: BuildMode,
    ) -> Outcome {
        let wanted: Vec<_> = drvs.iter().map(|d| ((*d).clone(), None)).collect();
        let times = ferrix_build::BuildTimes::open(&self.dir.path().join("times.sqlite"));
        let plan = ferrix_build::plan_builds(&self.store, &wanted, &times, mode).unwrap();
        let reporter: Arc<dyn Reporter + Send + Sync> = Arc::new(Events::default());
        let registry = Arc::new(ferrix_build::Registry::new(self.store.clone()));
        let ex = Arc::new(LocalExecutor::new(
            registry.clone(),
            settings,
            reporter.clone(),
            Arc::new(Mutex::new(times)),
        ));
        let setup = ferrix_build::EngineSetup {
            executors: vec![ex],
            registry: Some(registry),
            reporter,
            substituter: None,
            options: opts,
            store_dir: self.store.store_dir().clone(),
            interrupt,
            fallback: None,
        };
        run(&plan, setup).await
    }
}

/// Records what the scheduler reports.
#[derive(Default)]
pub struct Events {
    pub started: Mutex<Vec<StorePath>>,
}

impl Reporter for Events {
    fn started(&self, drv: &StorePath) {
        self.started.lock().unwrap().push(drv.clone());
    }
    fn finished(&self, _drv: &StorePath, _r: Result<Built, &BuildFailure>) {}
}

pub fn wait_for(path: &Path, limit: Duration) -> bool {
    let t = std::time::Instant::now();
    while t.elapsed() < limit {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// `--check` in the given settings: a deterministic builder (whose output names itself, so
/// that a check outside the sandbox must rewrite its scratch path back) passes; one that is
/// not fails with Nix's status 104 and, with keep-failed, leaves its result at `<out>.check`;
/// the valid outputs stay as they were and nothing else is left in the store.
pub async fn check_mode(t: &TestStore, settings: LocalSettings) {
    let det = t.drv(
        "det",
        "echo same > $out; echo $out >> $out",
        &[],
        &["out"],
        &[],
    );
    let nondet = t.drv("nondet", "/bin/date +%s%N > $out", &[], &["out"], &[]);
    let missing = t.drv("missing", "echo > $out", &[], &["out"], &[]);
    let o = t
        .build(
            &[&det, &nondet],
            settings.clone(),
            ScheduleOptions::default(),
        )
        .await;
    assert!(o.success(), "{o:?}");
    let before = t.read_out(&nondet, "out");
    let listing = || -> BTreeSet<String> {
        std::fs::read_dir(t.store.config().real_store_dir.clone())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".lock"))
            .collect()
    };
    let store_before = listing();

    let o = t.check(&[&det], settings.clone()).await;
    assert!(o.success(), "{o:?}");
    assert!(matches!(
        o.results[..],
        [ferrix_build::scheduler::NodeResult::Built(Built::Checked)]
    ));

    let o = t.check(&[&nondet], settings.clone()).await;
    assert_eq!(o.exit_status(), 104, "{o:?}");
    let msg = o.failures().next().unwrap().to_string();
    assert!(msg.contains("may not be deterministic"), "{msg}");
    assert_eq!(t.read_out(&nondet, "out"), before);
    assert_eq!(listing(), store_before);

    let mut keep = settings.clone();
    keep.keep_failed = true;
    let o = t.check(&[&nondet], keep).await;
    assert_eq!(o.exit_status(), 104);
    let kept = format!(
        "{}.check",
        t.store.real_path(&t.out(&nondet, "out")).display()
    );
    assert!(std::path::Path::new(&kept).exists());
    assert!(o.failures().next().unwrap().to_string().contains(".check'"));
    std::fs::remove_file(&kept).unwrap();

    // Nothing to compare with: refused before anything runs.
    let times = ferrix_build::BuildTimes::open(&t.dir.path().join("times.sqlite"));
    let err = ferrix_build::plan_builds(&t.store, &[(missing, None)], &times, BuildMode::Check)
        .unwrap_err();
    assert!(
        err.to_string().contains("checking is not possible"),
        "{err}"
    );
}

/// `--repair` in the given settings: a damaged output is built again and replaced, its
/// registration kept (the same path, the right hash); a repair whose build fails puts the
/// damaged output back; nothing is left aside in the store.
pub async fn repair_mode(t: &TestStore, settings: LocalSettings) {
    // Outside the store; a sandboxed builder sees it through sandbox-paths.
    let flags = t.dir.path().join("flags");
    std::fs::create_dir_all(&flags).unwrap();
    let marker = flags.join("fail-now");
    let mut settings = settings;
    if let Some(sb) = settings.sandbox.as_mut() {
        sb.paths.push((flags.display().to_string(), flags.clone()));
    }
    let d = t.drv(
        "fixme",
        &format!(
            "test -e {} && exit 1; /bin/mkdir $out; echo good > $out/file; echo $out > $out/self",
            marker.display()
        ),
        &[],
        &["out"],
        &[],
    );
    let o = t
        .build(&[&d], settings.clone(), ScheduleOptions::default())
        .await;
    assert!(o.success(), "{o:?}");
    let out = t.out(&d, "out");
    let file = t.store.real_path(&out).join("file");
    let damage = || {
        let dir = t.store.real_path(&out);
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        std::fs::remove_file(&file).unwrap();
        std::fs::write(&file, "bad\n").unwrap();
    };
    let problems = |t: &TestStore| {
        ferrix_store::verify::verify_store(&t.store, true, Some(std::slice::from_ref(&out)))
    };
    damage();
    assert_eq!(problems(t).unwrap().len(), 1);
    let listing = || -> BTreeSet<String> {
        std::fs::read_dir(t.store.config().real_store_dir.clone())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".lock"))
            .collect()
    };
    let before = listing();

    // The build fails: the damaged output is back, still registered.
    std::fs::write(&marker, "").unwrap();
    let o = t.repair(&[&d], settings.clone()).await;
    assert!(!o.success());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "bad\n");
    assert!(t.store.is_valid_path(&out).unwrap());
    assert_eq!(listing(), before);

    // It works: the output is as built, its registration sound.
    std::fs::remove_file(&marker).unwrap();
    let o = t.repair(&[&d], settings).await;
    assert!(o.success(), "{o:?}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "good\n");
    assert!(problems(t).unwrap().is_empty());
    assert_eq!(listing(), before);
}

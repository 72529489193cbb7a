//! Sandbox places: whether a build uses the sandbox, and the pool of places on the store's
//! file system that builds reuse.

use super::*;

/// A sandbox place (see [`LocalExecutor::take_slot`]) and the host that serves it, once a
/// build has started one.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) dir: PathBuf,
    pub(super) host: Option<crate::sandbox_host::SandboxHost>,
    /// The host uid its host maps the builder to.
    pub(super) uid: u32,
}

impl LocalExecutor {
    /// A place for a sandboxed build, on the store's file system (outputs move out by
    /// rename): `root/`, where the builder's `/` is mounted (a fresh tmpfs: its skeleton of
    /// directories, devices and files costs no disk inodes), and `store/`, the builder's store
    /// directory, holding mount points for the inputs and the outputs it writes. Places are
    /// reused by later builds, whose inputs mostly overlap: a mount point made once serves
    /// them all (on a disk, creating inodes is what a sandbox costs most), and those a build
    /// must not see are removed before it starts.
    pub(super) async fn take_slot(
        &self,
        drv: &str,
        closure: &BTreeSet<StorePath>,
    ) -> Result<Slot, BuildFailure> {
        let reused = self.slots.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let (reused, host, uid) = match reused {
            Some(slot) => (Some(slot.dir), slot.host, slot.uid),
            None => (None, None, u32::MAX),
        };
        let store = self.store.clone();
        let keep: BTreeSet<String> = closure.iter().map(|p| p.to_string()).collect();
        let d = drv.to_owned();
        let (dir, intent) = blocking(drv, move || {
            let io = |what: &'static str| BuildFailure::io(&d, what.to_owned());
            let (dir, intent) = match reused {
                Some(dir) => (dir, None),
                None => {
                    let store_err = BuildFailure::store(&d);
                    let sp = store.fresh_entry("ferrix-sandbox").map_err(store_err)?;
                    store.add_lasting_temp_roots([&sp]).map_err(store_err)?;
                    let intent = store
                        .begin_outputs(&[], std::slice::from_ref(&sp))
                        .map_err(store_err)?;
                    let dir = store.real_path(&sp);
                    for sub in ["root", "store", "view"] {
                        fs::DirBuilder::new()
                            .recursive(true)
                            .create(dir.join(sub))
                            .map_err(io("creating the sandbox"))?;
                    }
                    (dir, Some(intent))
                }
            };
            for e in fs::read_dir(dir.join("store")).map_err(io("reading the sandbox"))? {
                let e = e.map_err(io("reading the sandbox"))?;
                if !keep.contains(&*e.file_name().to_string_lossy()) {
                    ferrix_store::fsutil::delete_path(&e.path())
                        .map_err(|e| io("cleaning the sandbox")(io::Error::other(e.to_string())))?;
                }
            }
            Ok((dir, intent))
        })
        .await?;
        if let Some(i) = intent {
            self.slot_intents
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(i);
        }
        Ok(Slot { dir, host, uid })
    }

    /// Give a sandbox place back, without what the build left in it.
    pub(super) fn return_slot(&self, slot: Option<Slot>, job: &Job) {
        let Some(slot) = slot else { return };
        for p in job.outputs.values() {
            let _ = ferrix_store::fsutil::delete_path(&slot.dir.join("store").join(p.to_string()));
        }
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(slot);
    }

    /// Whether `job` builds in the sandbox: with `sandbox = true` always (`__noChroot` is an
    /// error); with `relaxed` unless it is a fixed-output derivation or asks for
    /// `__noChroot`; on a store kept elsewhere than its paths say, always.
    pub(super) fn use_sandbox(&self, job: &Job, drv: &str) -> Result<bool, BuildFailure> {
        let cfg = self.store.config();
        let diverted = std::path::Path::new(cfg.store_dir.as_str()) != cfg.real_store_dir;
        let Some(sb) = &self.settings.sandbox else {
            return Ok(false);
        };
        // Built-in builders run in this process, which writes only their outputs.
        if job.is_builtin() {
            return Ok(false);
        }
        let no_chroot = Attrs::of(&job.drv)
            .map_err(|why| BuildFailure::new(drv.to_owned(), FailureKind::Malformed { why }))?
            .flag("__noChroot");
        if !sb.relaxed {
            if no_chroot {
                return Err(BuildFailure::new(drv.to_owned(), FailureKind::Malformed { why:
                        "it has '__noChroot' set, which is only allowed when 'sandbox' is 'relaxed'"
                            .into() }));
            }
            return Ok(true);
        }
        Ok(diverted || (!no_chroot && job.drv.fixed_output().is_none()))
    }
}

//! Running the builder: its build directory, its process (or a sandbox host's), its log,
//! and the limits on it (timeout, silence, cancellation).

use super::*;

impl LocalExecutor {
    pub(super) fn make_build_dir(&self, job: &Job, drv: &str) -> Result<BuildDir, BuildFailure> {
        self.build_dirs
            .make(job.drv_path.name())
            .map_err(|(dir, e)| {
                BuildFailure::io(drv, format!("creating build directory '{}'", dir.display()))(e)
            })
    }

    /// Start the builder in its own process group, with stdout and stderr on one pipe that
    /// a thread copies into the log, and wait for it, for a timeout, for silence, or for
    /// cancellation. Whatever happens, its whole process group is gone afterwards.
    pub(super) async fn run_builder(
        &self,
        job: &Job,
        drv: &str,
        site: Site<'_>,
        mut cancel: Cancel,
    ) -> Result<(), BuildFailure> {
        let Site {
            log,
            permit,
            build_dir,
            chroot,
            closure,
            scratch,
            user,
        } = site;
        let s = &self.settings;
        let io_err = |what: &str| BuildFailure::io(drv, what.to_owned());
        let top = match chroot {
            Some(_) => crate::sandbox::BUILD_DIR_IN_SANDBOX.to_owned(),
            None => build_dir.to_string_lossy().into_owned(),
        };
        let store_dir = self.store.store_dir().to_string();
        let mut rewrites: Vec<(String, String)> = job
            .outputs
            .iter()
            .map(|(name, p)| (hash_placeholder(name), self.store.print(p)))
            .collect();
        for (name, s) in scratch {
            rewrites.push((
                job.outputs[name].hash_part().to_owned(),
                s.hash_part().to_owned(),
            ));
        }
        let cx = EnvContext {
            store_dir: &store_dir,
            build_top: &top,
            cores: s.cores,
            impure: &s.impure_env,
            rewrites: &rewrites,
        };
        let malformed =
            |why: String| BuildFailure::new(drv.to_owned(), FailureKind::Malformed { why });
        let attrs = Attrs::of(&job.drv).map_err(malformed)?;
        let exports = match &attrs {
            Attrs::Env(env) => env.contains_key("exportReferencesGraph"),
            Attrs::Structured(map) => map.contains_key("exportReferencesGraph"),
        };
        if exports {
            // Path infos come from the database: inputs still being registered must be in.
            self.registry
                .registrations()
                .wait_for(closure.iter().cloned())
                .await
                .map_err(|input| {
                    BuildFailure::new(
                        drv.to_owned(),
                        FailureKind::InputUnregistered {
                            input: self.store.print(&input),
                        },
                    )
                })?;
        }
        let structured = match &attrs {
            Attrs::Structured(map) => {
                Some(self.structured_json(map, job, closure).map_err(malformed)?)
            }
            Attrs::Env(env) => {
                self.export_graphs(env, build_dir, closure)
                    .map_err(malformed)?;
                None
            }
        };
        let (env, files) =
            builder_env(&job.drv, &attrs, structured.as_ref(), &cx).map_err(malformed)?;
        for (name, contents) in files {
            fs::write(build_dir.join(&name), contents)
                .map_err(io_err("writing attribute files"))?;
        }
        if job.is_builtin() {
            return self
                .run_builtin(job, drv, env, scratch, log, permit, cancel)
                .await;
        }
        let args: Vec<String> = job.drv.args.iter().map(|a| rewrite(a, &rewrites)).collect();
        let real_store = &self.store.config().real_store_dir;
        if chroot.is_none() && std::path::Path::new(&store_dir) != real_store.as_path() {
            // Outputs are written at their logical paths; only a sandbox can map those onto
            // a store kept elsewhere (a chroot store), as Nix does.
            return Err(BuildFailure::new(drv.to_owned(), FailureKind::Spawn { builder: job.drv.builder.clone(), source: io::Error::other(format!(
                    "the store '{store_dir}' is kept in '{}': building there needs the sandbox (sandbox = true)",
                    real_store.display()
                )) }));
        }
        if let Some(u) = user {
            // The builder's own directory is the build user's; nothing else here is.
            crate::users::chown_tree(build_dir, u.uid, u.gid)
                .map_err(io_err("giving the build directory to the build user"))?;
            if let Some(slot) = &chroot {
                crate::users::chown_tree(&slot.dir.join("store"), u.uid, u.gid)
                    .map_err(io_err("giving the sandbox's store to the build user"))?;
            }
        }
        let (reader, writer) = io::pipe().map_err(io_err("creating a pipe"))?;
        let spawn_err = |source| {
            BuildFailure::new(
                drv.to_owned(),
                FailureKind::Spawn {
                    builder: job.drv.builder.clone(),
                    source,
                },
            )
        };
        let mut running = match (chroot, &s.sandbox) {
            (Some(slot), Some(sb)) => {
                let network = job.drv.fixed_output().is_some();
                let place = crate::sandbox::PlaceSpec {
                    root: slot.dir.join("root"),
                    store: slot.dir.join("store"),
                    view: slot.dir.join("view"),
                    real_store: real_store.clone(),
                    store_dir: store_dir.clone(),
                    extra: sb.paths.clone(),
                    network,
                    uid: user.map_or(sb.uid, |u| u.uid),
                    gid: user.map_or(sb.gid, |u| u.gid),
                };
                let build = crate::sandbox::BuildSpec {
                    builder: job.drv.builder.clone(),
                    args: args.clone(),
                    env: env.clone(),
                    build_dir: build_dir.to_owned(),
                    inputs: closure.iter().map(|p| p.to_string()).collect(),
                };
                if network {
                    // The host's network is not the place's: a helper of its own.
                    let (mut cmd, input) =
                        crate::sandbox::one_shot_command(&sb.helper, &place, &build)
                            .map_err(spawn_err)?;
                    cmd.stdin(Stdio::piped());
                    let mut child = spawn_process(cmd, writer).map_err(spawn_err)?;
                    if let Some(mut stdin) = child.stdin.take() {
                        use tokio::io::AsyncWriteExt;
                        stdin
                            .write_all(&input)
                            .await
                            .map_err(io_err("starting the sandbox"))?;
                    }
                    Running::Process(child)
                } else {
                    // A host maps the builder to one user for good: another user's build
                    // needs a host of its own.
                    let host = slot.host.take().filter(|_| slot.uid == place.uid);
                    slot.uid = place.uid;
                    let mut host = match host {
                        Some(h) => h,
                        None => crate::sandbox_host::SandboxHost::spawn(&sb.helper, &place)
                            .await
                            .map_err(spawn_err)?,
                    };
                    host.start(&build, writer.into())
                        .await
                        .map_err(io_err("starting the sandbox"))?;
                    Running::Hosted { host, slot }
                }
            }
            _ => {
                let mut cmd = tokio::process::Command::new(&job.drv.builder);
                cmd.args(&args)
                    .env_clear()
                    .envs(&env)
                    .current_dir(build_dir)
                    .stdin(Stdio::null());
                if let Some(u) = user {
                    // Supplementary groups are dropped with the change of user.
                    cmd.uid(u.uid).gid(u.gid);
                }
                Running::Process(spawn_process(cmd, writer).map_err(spawn_err)?)
            }
        };

        let state = Arc::new(Mutex::new(LogState {
            last_activity: Instant::now(),
            read: 0,
        }));
        // To see, when the builder ends, how much of its output is still in the pipe.
        let pending = reader
            .try_clone()
            .map_err(io_err("reading the builder's output"))?;
        let (stop_log_tx, stop_log) = tokio::sync::oneshot::channel();
        let mut log_task = {
            let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(reader.into())
                .map_err(io_err("reading the builder's output"))?;
            let (state, reporter, drv_path) =
                (state.clone(), self.reporter.clone(), job.drv_path.clone());
            tokio::spawn(async move {
                copy_log(rx, log, &state, &*reporter, &drv_path, stop_log).await;
            })
        };

        let started = Instant::now();
        let timeout = job.limits.timeout.or(s.timeout);
        let max_silent_time = job.limits.max_silent_time.or(s.max_silent_time);
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let outcome: Result<std::process::ExitStatus, BuildFailure> = loop {
            tokio::select! {
                st = running.wait() => break st.map_err(io_err("waiting for the builder")),
                () = cancelled(&mut cancel) => {
                    break Err(BuildFailure::new(drv.to_owned(), FailureKind::Interrupted));
                }
                () = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await },
                    if deadline.is_some() => {
                    break Err(BuildFailure::new(drv.to_owned(), FailureKind::Timeout { after: started.elapsed() }));
                }
                _ = tick.tick(), if max_silent_time.is_some() => {
                    let quiet = state.lock().unwrap_or_else(|p| p.into_inner()).last_activity.elapsed();
                    if max_silent_time.is_some_and(|m| quiet >= m) {
                        break Err(BuildFailure::new(drv.to_owned(), FailureKind::Silent { after: quiet }));
                    }
                }
            }
        };
        // The next builder may start while this one's log is read to its end.
        drop(permit);
        running.end(outcome.is_ok()).await;
        // The builder's process group is gone, but a process that left it (a new session,
        // a double fork) may still hold the log pipe open. What the builder wrote before it
        // ended is read whole, however slowly the log is consumed (a remote master reading
        // it); beyond that, the log is read for a short grace only.
        let ended = Instant::now();
        let owed = state.lock().unwrap_or_else(|p| p.into_inner()).read
            + rustix::io::ioctl_fionread(&pending).unwrap_or(0);
        drop(pending);
        let logged = loop {
            match tokio::time::timeout(LOG_GRACE, &mut log_task).await {
                Ok(done) => break done,
                Err(_) => {
                    let (read, last) = {
                        let st = state.lock().unwrap_or_else(|p| p.into_inner());
                        (st.read, st.last_activity)
                    };
                    if read < owed
                        && last.elapsed() < LOG_STALL
                        && ended.elapsed() < LOG_DRAIN_LIMIT
                    {
                        continue;
                    }
                    let _ = stop_log_tx.send(());
                    break log_task.await;
                }
            }
        };
        if let Err(e) = logged {
            return Err(io_err("reading the builder's output")(io::Error::other(e)));
        }

        let status = outcome?;
        if status.success() {
            return Ok(());
        }
        use std::os::unix::process::ExitStatusExt;
        Err(match (status.code(), status.signal()) {
            (Some(code), _) => BuildFailure::new(drv.to_owned(), FailureKind::ExitCode { code }),
            (None, Some(signal)) => {
                BuildFailure::new(drv.to_owned(), FailureKind::Signal { signal })
            }
            (None, None) => BuildFailure::new(drv.to_owned(), FailureKind::ExitCode { code: -1 }),
        })
    }
}

impl LocalExecutor {
    /// Run a built-in builder in this process (on a blocking thread), its messages in the
    /// log, its output written at its path (or its scratch path, when checking).
    #[allow(clippy::too_many_arguments)]
    async fn run_builtin(
        &self,
        job: &Job,
        drv: &str,
        env: BTreeMap<String, String>,
        scratch: &BTreeMap<String, StorePath>,
        mut log: LogWriter,
        permit: tokio::sync::OwnedSemaphorePermit,
        mut cancel: Cancel,
    ) -> Result<(), BuildFailure> {
        let out = job.outputs.get("out").ok_or_else(|| {
            BuildFailure::new(
                drv.to_owned(),
                FailureKind::Malformed {
                    why: "a built-in builder needs an output 'out'".into(),
                },
            )
        })?;
        let target = self.store.real_path(scratch.get("out").unwrap_or(out));
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (reporter, drv_path) = (self.reporter.clone(), job.drv_path.clone());
        let (builder, drv2) = (job.drv.builder.clone(), job.drv.clone());
        let (http, f2) = (self.settings.fetch.clone(), flag.clone());
        let mut task = tokio::task::spawn_blocking(move || {
            let mut say = |line: &str| {
                log.write(format!("{line}\n").as_bytes());
                reporter.log_line(&drv_path, line);
            };
            let res = crate::builtin::run(&builder, &drv2, &env, &target, &http, &mut say, &f2);
            log.finish();
            res
        });
        let res = tokio::select! {
            r = &mut task => r,
            () = cancelled(&mut cancel) => {
                flag.store(true, Ordering::Relaxed);
                let _ = task.await;
                return Err(BuildFailure::new(drv.to_owned(), FailureKind::Interrupted));
            }
        };
        drop(permit);
        match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(BuildFailure::new(
                drv.to_owned(),
                FailureKind::Builtin {
                    builder: job.drv.builder.clone(),
                    source: Box::new(source),
                },
            )),
            Err(e) => Err(BuildFailure::io(drv, "running a built-in builder".into())(
                io::Error::other(e),
            )),
        }
    }
}

/// Start `cmd` in its own process group, its standard output and error on `out`.
fn spawn_process(
    mut cmd: tokio::process::Command,
    out: io::PipeWriter,
) -> io::Result<tokio::process::Child> {
    cmd.stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .kill_on_drop(true);
    // `cmd` holds copies of the pipe's write end: they go at the end of this call, so that
    // the log's reader sees the end of the output when the builder's processes are gone.
    cmd.spawn()
}

/// A builder running: a process of ours (its process group), or a build of a sandbox host.
enum Running<'a> {
    Process(tokio::process::Child),
    Hosted {
        host: crate::sandbox_host::SandboxHost,
        slot: &'a mut Slot,
    },
}

impl Running<'_> {
    /// The build's exit status. Cancel-safe.
    async fn wait(&mut self) -> io::Result<std::process::ExitStatus> {
        match self {
            Running::Process(child) => child.wait().await,
            Running::Hosted { host, .. } => host.wait().await,
        }
    }

    /// Make sure that nothing of the build runs any more (`finished`: its status has been
    /// read). A host that served the build well goes back to its place for the next one.
    async fn end(self, finished: bool) {
        match self {
            Running::Process(mut child) => {
                // The builder's helpers may outlive it and hold the log pipe open: end them
                // all.
                if let Some(pg) = child
                    .id()
                    .and_then(|id| rustix::process::Pid::from_raw(id as i32))
                {
                    let _ = rustix::process::kill_process_group(pg, rustix::process::Signal::KILL);
                }
                let _ = child.wait().await;
            }
            Running::Hosted { mut host, slot } => {
                // In the sandbox, the build's processes end with its process 1.
                let healthy = finished || (host.kill().await.is_ok() && host.wait().await.is_ok());
                if healthy {
                    slot.host = Some(host);
                }
            }
        }
    }
}

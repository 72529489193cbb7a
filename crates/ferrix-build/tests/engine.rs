//! The Engine with fake executors: who is asked, in which order, how many at once, and what
//! becomes of declined, postponed and lost jobs. No store, no builds: the executors only
//! record what they were given.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrix_build::executor::{BuildFuture, Cancel, OfferFuture};
use ferrix_build::plan::Node;
use ferrix_build::FailureKind;
use ferrix_build::{
    BuildFailure, BuildMode, Built, Engine, EngineSetup, Executor, Job, JobError, NodeResult,
    Offer, OfferContext, Outcome, Plan, Quiet, ScheduleOptions,
};
use ferrix_format::{Derivation, DerivationOutput, StoreDir, StorePath};
use tokio::sync::watch;

fn path(name: &str) -> StorePath {
    // A distinct, valid hash part per name.
    let mut h = String::new();
    for (i, b) in name.bytes().cycle().take(32).enumerate() {
        let alphabet = b"0123456789abcdfghijklmnpqrsvwxyz";
        h.push(alphabet[(b as usize + i * 7) % 32] as char);
    }
    StorePath::from_base_name(&format!("{h}-{name}")).unwrap()
}

fn job(name: &str, system: &str, env: &[(&str, &str)]) -> Arc<Job> {
    let out = path(name);
    let drv = Derivation {
        outputs: [(
            "out".to_owned(),
            DerivationOutput::InputAddressed(out.clone()),
        )]
        .into(),
        input_drvs: BTreeMap::new(),
        input_srcs: BTreeSet::new(),
        platform: system.into(),
        builder: "/bin/sh".into(),
        args: vec![],
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    Arc::new(Job {
        drv_path: path(&format!("{name}.drv")),
        drv,
        outputs: [("out".to_owned(), out)].into(),
        input_roots: BTreeSet::new(),
        mode: BuildMode::Normal,
        limits: Default::default(),
    })
}

/// A plan of `jobs`, each with the deps given by index (deps come first).
fn plan(jobs: Vec<(Arc<Job>, Vec<usize>)>) -> Plan {
    let mut nodes: Vec<Node> = Vec::new();
    for (i, (job, deps)) in jobs.into_iter().enumerate() {
        for &d in &deps {
            nodes[d].dependents.push(i);
        }
        nodes.push(Node {
            work: ferrix_build::Work::Build(job),
            deps,
            dependents: Vec::new(),
            priority: 1.0,
        });
    }
    Plan {
        store_dir: StoreDir::default(),
        nodes,
        built_by: Default::default(),
    }
}

/// What a fake executor answers and how its jobs end.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Answer {
    Accept,
    Decline,
    /// Postpone while this executor runs anything, else accept.
    PostponeWhenBusy,
}

#[derive(Debug, Default)]
struct Record {
    /// (executor, job name) for every job started.
    started: Mutex<Vec<(String, String)>>,
    /// Offers made: (executor, job name).
    offered: Mutex<Vec<(String, String)>>,
    running: AtomicUsize,
    max_running: AtomicUsize,
}

#[derive(Debug)]
struct Fake {
    name: String,
    local: bool,
    capacity: usize,
    systems: Vec<String>,
    answer: Answer,
    /// How long an offer takes to be answered (an external hook).
    think: Duration,
    /// How long a build takes.
    work: Duration,
    /// Jobs (by name) whose first build is lost.
    lose_first: Mutex<BTreeSet<String>>,
    /// Jobs (by name) that fail.
    fail: BTreeSet<String>,
    rec: Record,
}

impl Fake {
    fn new(name: &str, local: bool, capacity: usize, answer: Answer) -> Self {
        Self {
            name: name.into(),
            local,
            capacity,
            systems: vec!["x86_64-linux".into()],
            answer,
            think: Duration::ZERO,
            work: Duration::from_millis(20),
            lose_first: Mutex::default(),
            fail: BTreeSet::new(),
            rec: Record::default(),
        }
    }
    fn started(&self) -> Vec<String> {
        self.rec
            .started
            .lock()
            .unwrap()
            .iter()
            .map(|(_, j)| j.clone())
            .collect()
    }
}

fn job_name(j: &Job) -> String {
    ferrix_format::derivation::drv_name(&j.drv_path).to_owned()
}

impl Executor for Fake {
    fn capacity(&self) -> usize {
        self.capacity
    }
    fn is_local(&self) -> bool {
        self.local
    }
    fn could_build(&self, job: &Job) -> bool {
        self.capacity > 0 && self.systems.contains(&job.drv.platform)
    }
    fn offer(
        self: Arc<Self>,
        job: Arc<Job>,
        _ctx: OfferContext,
        mut cancel: Cancel,
    ) -> OfferFuture {
        let name = job_name(&job);
        self.rec
            .offered
            .lock()
            .unwrap()
            .push((self.name.clone(), name.clone()));
        match self.answer {
            Answer::PostponeWhenBusy if self.rec.running.load(Ordering::SeqCst) > 0 => {
                return Box::pin(async { Offer::Postpone });
            }
            Answer::Decline => return Box::pin(async { Offer::Decline }),
            Answer::Accept | Answer::PostponeWhenBusy => {}
        }
        // Reserved at once, as a machine's slot would be.
        let now = self.rec.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.rec.max_running.fetch_max(now, Ordering::SeqCst);
        self.rec
            .started
            .lock()
            .unwrap()
            .push((self.name.clone(), name.clone()));
        let this = self.clone();
        let build: BuildFuture = Box::pin(async move {
            let r = tokio::select! {
                _ = tokio::time::sleep(this.work) => {
                    if this.lose_first.lock().unwrap().remove(&name) {
                        Err(JobError::Lost { by: this.name.clone(), why: "connection dropped".into() })
                    } else if this.fail.contains(&name) {
                        Err(JobError::Failed(BuildFailure::new(name.clone(), FailureKind::ExitCode { code: 1 })))
                    } else {
                        Ok(Built::Built)
                    }
                }
                _ = cancel.wait_for(|c| *c) => Err(JobError::Failed(BuildFailure::new(name.clone(), FailureKind::Interrupted))),
            };
            this.rec.running.fetch_sub(1, Ordering::SeqCst);
            r
        });
        let think = self.think;
        if think.is_zero() {
            Box::pin(std::future::ready(Offer::Accept(build)))
        } else {
            Box::pin(async move {
                tokio::time::sleep(think).await;
                Offer::Accept(build)
            })
        }
    }
}

fn setup(
    executors: Vec<Arc<dyn Executor>>,
    keep_going: bool,
) -> (EngineSetup, watch::Sender<bool>) {
    let (tx, rx) = watch::channel(false);
    (
        EngineSetup {
            executors,
            registry: None,
            reporter: Arc::new(Quiet),
            substituter: None,
            options: ScheduleOptions {
                keep_going,
                ..Default::default()
            },
            store_dir: StoreDir::default(),
            interrupt: rx,
            fallback: None,
        },
        tx,
    )
}

async fn run(plan: &Plan, executors: Vec<Arc<dyn Executor>>) -> Outcome {
    let (s, _tx) = setup(executors, false);
    ferrix_build::run(plan, s).await
}

fn independent(n: usize, system: &str) -> Plan {
    plan(
        (0..n)
            .map(|i| (job(&format!("j{i}"), system, &[]), vec![]))
            .collect(),
    )
}

#[tokio::test]
async fn a_delegate_that_accepts_takes_everything_it_has_room_for() {
    let remote = Arc::new(Fake::new("remote", false, 8, Answer::Accept));
    let local = Arc::new(Fake::new("local", true, 1, Answer::Accept));
    let p = independent(6, "x86_64-linux");
    let o = run(&p, vec![remote.clone(), local.clone()]).await;
    assert!(o.success());
    assert_eq!(remote.started().len(), 6);
    assert!(local.started().is_empty());
}

#[tokio::test]
async fn declined_jobs_are_built_locally() {
    let remote = Arc::new(Fake::new("remote", false, 8, Answer::Decline));
    let local = Arc::new(Fake::new("local", true, 2, Answer::Accept));
    let p = independent(5, "x86_64-linux");
    let o = run(&p, vec![remote.clone(), local.clone()]).await;
    assert!(o.success());
    assert_eq!(local.started().len(), 5);
    assert!(remote.started().is_empty());
    // Each job was offered to the remote once: a decline is final for the job.
    assert_eq!(remote.rec.offered.lock().unwrap().len(), 5);
    assert!(local.rec.max_running.load(Ordering::SeqCst) <= 2);
}

#[tokio::test]
async fn postponed_jobs_are_offered_again_when_a_job_ends() {
    // The local machine cannot build these (another system): only the remote can, one at a
    // time, postponing while it is busy.
    let mut r = Fake::new("remote", false, 4, Answer::PostponeWhenBusy);
    r.systems = vec!["aarch64-linux".into()];
    let remote = Arc::new(r);
    let local = Arc::new(Fake::new("local", true, 2, Answer::Accept));
    let p = independent(4, "aarch64-linux");
    let o = run(&p, vec![remote.clone(), local.clone()]).await;
    assert!(o.success(), "{:?}", o.results);
    assert_eq!(remote.started().len(), 4);
    assert_eq!(remote.rec.max_running.load(Ordering::SeqCst), 1);
    assert!(local.started().is_empty());
    // Asked again only when a job ended, not in a loop: at most once per job per end.
    assert!(remote.rec.offered.lock().unwrap().len() <= 4 + 3 * 4);
}

#[tokio::test]
async fn a_lost_job_goes_elsewhere() {
    let a = Fake::new("a", false, 1, Answer::Accept);
    a.lose_first.lock().unwrap().insert("j0".into());
    let a = Arc::new(a);
    let b = Arc::new(Fake::new("b", false, 1, Answer::Accept));
    let p = independent(1, "x86_64-linux");
    let o = run(&p, vec![a.clone(), b.clone()]).await;
    assert!(o.success(), "{:?}", o.results);
    // Lost on a, offered again: taken by a again or by b, and built.
    let total = a.started().len() + b.started().len();
    assert_eq!(total, 2);
}

#[tokio::test]
async fn a_job_lost_again_and_again_fails_naming_who_lost_it() {
    let a = Arc::new(Fake::new("flaky", false, 1, Answer::Accept));
    /// Loses every build: marks the job to be lost at each offer.
    #[derive(Debug)]
    struct AlwaysLose(Arc<Fake>);
    impl Executor for AlwaysLose {
        fn capacity(&self) -> usize {
            1
        }
        fn could_build(&self, _: &Job) -> bool {
            true
        }
        fn offer(self: Arc<Self>, job: Arc<Job>, ctx: OfferContext, c: Cancel) -> OfferFuture {
            self.0.lose_first.lock().unwrap().insert(job_name(&job));
            self.0.clone().offer(job, ctx, c)
        }
    }
    let p = independent(1, "x86_64-linux");
    let o = run(&p, vec![Arc::new(AlwaysLose(a.clone()))]).await;
    assert!(!o.success());
    let msg = o.failures().next().unwrap().to_string();
    assert!(
        msg.contains("lost 3 times") && msg.contains("flaky"),
        "{msg}"
    );
    assert_eq!(a.started().len(), 3);
}

#[tokio::test]
async fn two_delegates_and_the_local_executor_share_the_work() {
    let a = Arc::new(Fake::new("a", false, 2, Answer::Accept));
    let b = Arc::new(Fake::new("b", false, 3, Answer::Accept));
    let local = Arc::new(Fake::new("local", true, 1, Answer::Accept));
    let p = independent(30, "x86_64-linux");
    let t = std::time::Instant::now();
    let o = run(&p, vec![a.clone(), b.clone(), local.clone()]).await;
    assert!(o.success());
    assert!(!a.started().is_empty() && !b.started().is_empty() && !local.started().is_empty());
    assert_eq!(
        a.started().len() + b.started().len() + local.started().len(),
        30
    );
    assert!(a.rec.max_running.load(Ordering::SeqCst) <= 2);
    assert!(b.rec.max_running.load(Ordering::SeqCst) <= 3);
    assert!(local.rec.max_running.load(Ordering::SeqCst) <= 1);
    // 30 jobs of 20 ms on 6 slots: 5 rounds; well under the 30 rounds of one slot.
    assert!(
        t.elapsed() < Duration::from_millis(20 * 20),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn a_slow_hook_does_not_hold_up_local_builds() {
    let mut h = Fake::new("hook", false, 1, Answer::Accept);
    h.think = Duration::from_millis(300);
    let hook = Arc::new(h);
    let local = Arc::new(Fake::new("local", true, 2, Answer::Accept));
    let p = independent(6, "x86_64-linux");
    let t = std::time::Instant::now();
    let o = run(&p, vec![hook.clone(), local.clone()]).await;
    assert!(o.success());
    // While the hook thinks about its one job, the local executor builds the others.
    assert_eq!(hook.started().len(), 1);
    assert_eq!(local.started().len(), 5);
    // One offer at a time to the hook: the others were not asked while it decided.
    assert_eq!(hook.rec.offered.lock().unwrap().len(), 1);
    assert!(
        t.elapsed() < Duration::from_millis(300 + 200),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn max_jobs_zero_fails_only_without_anyone_else() {
    let local = Arc::new(Fake::new("local", true, 0, Answer::Accept));
    let p = plan(vec![
        (job("a", "x86_64-linux", &[]), vec![]),
        (job("b", "x86_64-linux", &[]), vec![0]),
    ]);
    let o = run(&p, vec![local.clone()]).await;
    let msgs: Vec<String> = o.failures().map(|f| f.to_string()).collect();
    assert!(msgs[0].contains("max-jobs = 0"), "{msgs:?}");
    assert!(msgs[1].contains("because its input"), "{msgs:?}");

    let remote = Arc::new(Fake::new("remote", false, 1, Answer::Accept));
    let local = Arc::new(Fake::new("local", true, 0, Answer::Accept));
    let o = run(&p, vec![remote.clone(), local.clone()]).await;
    assert!(o.success());
    assert_eq!(remote.started(), ["a", "b"]);
}

#[tokio::test]
async fn a_job_nobody_can_build_fails_with_its_system_and_features() {
    let remote = Arc::new(Fake::new("remote", false, 1, Answer::Accept));
    let local = Arc::new(Fake::new("local", true, 1, Answer::Accept));
    let p = plan(vec![(
        job("arm", "aarch64-linux", &[("requiredSystemFeatures", "kvm")]),
        vec![],
    )]);
    let o = run(&p, vec![remote, local]).await;
    let msg = o.failures().next().unwrap().to_string();
    assert!(msg.contains("'aarch64-linux' with features {kvm}"), "{msg}");
}

#[tokio::test]
async fn prefer_local_build_goes_local_first() {
    let remote = Arc::new(Fake::new("remote", false, 4, Answer::Accept));
    let local = Arc::new(Fake::new("local", true, 4, Answer::Accept));
    let p = plan(vec![
        (
            job("here", "x86_64-linux", &[("preferLocalBuild", "1")]),
            vec![],
        ),
        (job("there", "x86_64-linux", &[]), vec![]),
    ]);
    let o = run(&p, vec![remote.clone(), local.clone()]).await;
    assert!(o.success());
    assert_eq!(local.started(), ["here"]);
    assert_eq!(remote.started(), ["there"]);
}

#[tokio::test]
async fn goals_submitted_while_it_runs_share_nodes() {
    let mut l = Fake::new("local", true, 4, Answer::Accept);
    l.work = Duration::from_millis(100);
    let local = Arc::new(l);
    // Builds only the goal that keeps the graph alive, slowly.
    let mut slow = Fake::new("slow", false, 1, Answer::Accept);
    slow.systems = vec!["aarch64-linux".into()];
    slow.work = Duration::from_millis(1500);
    let (s, _tx) = setup(vec![Arc::new(slow), local.clone()], false);
    let engine = Engine::start(s);
    let shared = job("shared", "x86_64-linux", &[]);
    let p1 = plan(vec![
        (shared.clone(), vec![]),
        (job("one", "x86_64-linux", &[]), vec![0]),
    ]);
    let g1 = engine.submit(&p1);
    tokio::time::sleep(Duration::from_millis(30)).await;
    // The shared node is building now; the second goal waits for the same build.
    let p2 = plan(vec![
        (shared, vec![]),
        (job("two", "x86_64-linux", &[]), vec![0]),
    ]);
    let g2 = engine.submit(&p2);
    // A third goal keeps the graph alive after the first two.
    let keeper = engine.submit(&plan(vec![(job("keeper", "aarch64-linux", &[]), vec![])]));
    let (o1, o2) = tokio::join!(g1, g2);
    assert!(o1.success() && o2.success());
    let mut started = local.started();
    started.sort();
    assert_eq!(started, ["one", "shared", "two"]);
    // While a goal runs, a goal of nodes already built answers at once.
    let o3 = engine.submit(&p1).await;
    assert!(o3.success());
    assert_eq!(local.started().len(), 3);
    assert!(keeper.await.success());
    engine.shutdown().await;
}

#[tokio::test]
async fn an_abandoned_goal_cancels_only_what_no_other_goal_needs() {
    let mut l = Fake::new("local", true, 4, Answer::Accept);
    l.work = Duration::from_secs(30);
    let local = Arc::new(l);
    let (s, _tx) = setup(vec![local.clone()], false);
    let engine = Engine::start(s);
    let shared = job("shared", "x86_64-linux", &[]);
    let mine = job("mine", "x86_64-linux", &[]);
    let g1 = engine.submit(&plan(vec![
        (shared.clone(), vec![]),
        (mine.clone(), vec![]),
        (job("after", "x86_64-linux", &[]), vec![0, 1]),
    ]));
    let g2 = engine.submit(&plan(vec![(shared.clone(), vec![])]));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t = std::time::Instant::now();
    engine.abandon(g1.id());
    let o1 = g1.await;
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "the abandoned goal ends at once"
    );
    assert!(!o1.success() && !o1.interrupted);
    // `mine` was cancelled, `after` never started, `shared` still builds for the other goal.
    assert!(matches!(o1.results[1], NodeResult::NotStarted));
    assert!(matches!(o1.results[2], NodeResult::NotStarted));
    assert_eq!(local.rec.running.load(Ordering::SeqCst), 1);
    assert_eq!(local.started(), ["shared", "mine"]);
    // A goal that wants `mine` again gets it built afresh.
    let g3 = engine.submit(&plan(vec![(mine, vec![])]));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(local.started(), ["shared", "mine", "mine"]);
    engine.abandon(g2.id());
    engine.abandon(g3.id());
    let (o2, o3) = tokio::join!(g2, g3);
    assert!(!o2.success() && !o3.success());
    engine.shutdown().await;
    assert_eq!(local.rec.running.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_build_cancelled_for_one_goal_starts_again_for_a_goal_that_came_since() {
    let mut l = Fake::new("local", true, 1, Answer::Accept);
    l.work = Duration::from_millis(300);
    let local = Arc::new(l);
    let (s, _tx) = setup(vec![local.clone()], false);
    let engine = Engine::start(s);
    let x = job("x", "x86_64-linux", &[]);
    let g1 = engine.submit(&plan(vec![(x.clone(), vec![])]));
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Abandoned and asked for again before the cancelled build has ended.
    engine.abandon(g1.id());
    let g2 = engine.submit(&plan(vec![(x, vec![])]));
    let (o1, o2) = tokio::join!(g1, g2);
    assert!(o2.success(), "{:?}", o2.results);
    assert!(o1.success() || matches!(o1.results[0], NodeResult::NotStarted));
    assert_eq!(local.started(), ["x", "x"]);
    engine.shutdown().await;
}

#[tokio::test]
async fn a_failure_is_tried_again_by_a_later_goal() {
    let mut l = Fake::new("local", true, 2, Answer::Accept);
    l.fail.insert("bad".into());
    let local = Arc::new(l);
    let (s, _tx) = setup(vec![local.clone()], false);
    let engine = Engine::start(s);
    let bad = job("bad", "x86_64-linux", &[]);
    let o1 = engine.submit(&plan(vec![(bad.clone(), vec![])])).await;
    let o2 = engine.submit(&plan(vec![(bad, vec![])])).await;
    assert!(!o1.success() && !o2.success());
    assert_eq!(local.started(), ["bad", "bad"]);
    engine.shutdown().await;
}

#[tokio::test]
async fn a_failure_stops_its_goal_but_not_another() {
    let mut l = Fake::new("local", true, 2, Answer::Accept);
    l.fail.insert("bad".into());
    l.work = Duration::from_millis(50);
    let local = Arc::new(l);
    let (s, _tx) = setup(vec![local.clone()], false);
    let engine = Engine::start(s);
    let g1 = engine.submit(&plan(vec![
        (job("bad", "x86_64-linux", &[]), vec![]),
        (job("after", "x86_64-linux", &[]), vec![0]),
        (job("x1", "x86_64-linux", &[]), vec![]),
        (job("x2", "x86_64-linux", &[]), vec![]),
    ]));
    let g2 = engine.submit(&plan(vec![(job("other", "x86_64-linux", &[]), vec![])]));
    let (o1, o2) = tokio::join!(g1, g2);
    assert!(!o1.success());
    assert!(
        matches!(&o1.results[1], NodeResult::Failed(f) if f.to_string().contains("because its input"))
    );
    assert!(o2.success(), "{:?}", o2.results);
    engine.shutdown().await;
}

#[tokio::test]
async fn an_interrupt_cancels_running_jobs_and_starts_nothing() {
    let mut l = Fake::new("local", true, 1, Answer::Accept);
    l.work = Duration::from_secs(30);
    let local = Arc::new(l);
    let (s, tx) = setup(vec![local.clone()], false);
    let p = independent(3, "x86_64-linux");
    let t = std::time::Instant::now();
    let run = tokio::spawn(async move { ferrix_build::run(&p, s).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    tx.send(true).unwrap();
    let o = run.await.unwrap();
    assert!(o.interrupted && !o.success());
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(local.started().len(), 1);
    let kinds: HashMap<&str, usize> = o.results.iter().fold(HashMap::new(), |mut m, r| {
        *m.entry(match r {
            NodeResult::Built(_) => "built",
            NodeResult::Failed(_) => "failed",
            NodeResult::NotStarted => "not started",
        })
        .or_default() += 1;
        m
    });
    assert_eq!(kinds.get("not started"), Some(&2));
}

/// A cache whose every fetch fails.
#[derive(Debug, Default)]
struct FailingCache {
    fetched: Mutex<Vec<StorePath>>,
}

impl ferrix_build::substitute::Substituter for FailingCache {
    fn query(
        &self,
        _: &[StorePath],
    ) -> BTreeMap<StorePath, Arc<ferrix_build::substitute::Substitution>> {
        BTreeMap::new()
    }
    fn fetch(
        self: Arc<Self>,
        s: Arc<ferrix_build::substitute::Substitution>,
        _cancel: Cancel,
        _reporter: Arc<dyn ferrix_build::Reporter + Send + Sync>,
    ) -> ferrix_build::substitute::FetchFuture {
        self.fetched.lock().unwrap().push(s.path.clone());
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Err(BuildFailure::new(
                s.path.to_string(),
                FailureKind::Substitute {
                    errors: vec![ferrix_store::binary_cache::CacheError::NotInCache {
                        cache: "http://cache.invalid".into(),
                        path: s.path.to_string(),
                    }],
                    fallback: true,
                },
            ))
        })
    }
    fn capacity(&self) -> usize {
        4
    }
}

/// Plans the build of a failed fetch's derivation from the jobs it was given.
#[derive(Debug)]
struct Replan {
    jobs: HashMap<StorePath, Arc<Job>>,
    asked: Mutex<Vec<(StorePath, BTreeSet<StorePath>)>>,
}

impl ferrix_build::Fallback for Replan {
    fn plan(
        &self,
        drv: &StorePath,
        exclude: &BTreeSet<StorePath>,
    ) -> Result<Plan, ferrix_build::PlanError> {
        self.asked
            .lock()
            .unwrap()
            .push((drv.clone(), exclude.clone()));
        Ok(plan(vec![(self.jobs[drv].clone(), vec![])]))
    }
}

/// `x`'s output is to be fetched and `y` built on it; the fetch fails. The plan's fetch node,
/// `y`, and the build of `x` planned meanwhile.
fn fetch_then_build() -> (Plan, Arc<Job>) {
    let x = job("x", "x86_64-linux", &[]);
    let y = job("y", "x86_64-linux", &[]);
    let out = x.outputs["out"].clone();
    let fetch = ferrix_build::substitute::Substitution {
        path: out.clone(),
        references: BTreeSet::new(),
        nar_size: 1,
        download_size: None,
        from: "http://cache.invalid".into(),
    };
    let nodes = vec![
        Node {
            work: ferrix_build::Work::Fetch(Arc::new(fetch)),
            deps: vec![],
            dependents: vec![1],
            priority: 2.0,
        },
        Node {
            work: ferrix_build::Work::Build(y),
            deps: vec![0],
            dependents: vec![],
            priority: 1.0,
        },
    ];
    let p = Plan {
        store_dir: StoreDir::default(),
        nodes,
        built_by: [(out, x.drv_path.clone())].into(),
    };
    (p, x)
}

fn fallback_setup(
    local: Arc<Fake>,
    x: &Arc<Job>,
) -> (
    EngineSetup,
    Arc<FailingCache>,
    Arc<Replan>,
    watch::Sender<bool>,
) {
    let (mut s, tx) = setup(vec![local], false);
    let cache = Arc::new(FailingCache::default());
    let replan = Arc::new(Replan {
        jobs: [(x.drv_path.clone(), x.clone())].into(),
        asked: Mutex::default(),
    });
    s.substituter = Some(cache.clone());
    s.options.fallback = true;
    s.fallback = Some(replan.clone());
    (s, cache, replan, tx)
}

/// With `--fallback`, a fetch that fails becomes the build of its derivation in the same
/// run, and what waited for the path goes on once that is built.
#[tokio::test]
async fn a_failed_fetch_falls_back_to_its_build_while_the_engine_runs() {
    let local = Arc::new(Fake::new("local", true, 2, Answer::Accept));
    let (p, x) = fetch_then_build();
    let out = x.outputs["out"].clone();
    let (s, cache, replan, _tx) = fallback_setup(local.clone(), &x);
    let o = ferrix_build::run(&p, s).await;
    assert!(o.success(), "{:?}", o.results);
    assert_eq!(*cache.fetched.lock().unwrap(), vec![out.clone()]);
    assert_eq!(local.started(), vec!["x", "y"]);
    // It was planned without fetching what failed.
    let asked = replan.asked.lock().unwrap();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].0, x.drv_path);
    assert!(asked[0].1.contains(&out));
    // The plan's two nodes, then the build added for the fetch.
    assert_eq!(o.results.len(), 3);
    assert!(matches!(o.results[0], NodeResult::Built(Built::Built)));
}

/// When the build that replaces a fetch fails, so do the fetch and what waits for it; the
/// failure is the build's.
#[tokio::test]
async fn a_failing_fallback_build_fails_what_waits_for_the_path() {
    let mut l = Fake::new("local", true, 2, Answer::Accept);
    l.fail.insert("x".into());
    let local = Arc::new(l);
    let (p, x) = fetch_then_build();
    let (s, _cache, _replan, _tx) = fallback_setup(local.clone(), &x);
    let o = ferrix_build::run(&p, s).await;
    assert!(!o.success());
    assert_eq!(local.started(), vec!["x"]);
    assert!(
        matches!(&o.results[1], NodeResult::Failed(f) if f.to_string().contains("because its input")),
        "{:?}",
        o.results
    );
    assert!(
        o.failures()
            .any(|f| matches!(f.kind, FailureKind::ExitCode { code: 1 })),
        "{:?}",
        o.results
    );
}

/// A goal that stopped (a build failed, without keep-going) while its fetch was failing does
/// not fall back: it ends, instead of waiting for a build nobody starts.
#[tokio::test]
async fn a_stopped_goal_does_not_fall_back_and_ends() {
    let mut l = Fake::new("local", true, 2, Answer::Accept);
    l.fail.insert("bad".into());
    l.work = Duration::from_millis(1);
    let local = Arc::new(l);
    let (mut p, x) = fetch_then_build();
    let bad = job("bad", "x86_64-linux", &[]);
    p.nodes.push(Node {
        work: ferrix_build::Work::Build(bad),
        deps: vec![],
        dependents: vec![],
        priority: 3.0,
    });
    let (s, _cache, replan, _tx) = fallback_setup(local.clone(), &x);
    let o = tokio::time::timeout(Duration::from_secs(10), ferrix_build::run(&p, s))
        .await
        .expect("the goal ended");
    assert!(!o.success());
    assert!(replan.asked.lock().unwrap().is_empty());
    assert!(
        !local.started().contains(&"x".to_owned()),
        "{:?}",
        local.started()
    );
}

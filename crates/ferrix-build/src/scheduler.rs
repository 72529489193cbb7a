//! The Engine: one event loop that owns the graph of everything being realised. Goals (plans)
//! arrive while it runs; ready derivations go to the executors, most urgent first, each
//! executor up to its capacity; it reacts to offers answered and jobs ended.

use std::cmp::Ordering;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use ferrix_format::{StoreDir, StorePath};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::error::{BuildFailure, FailureKind, PlanError};
use crate::executor::{
    BuildFuture, Built, Cancel, Executor, JobError, Offer, OfferContext, Reporter,
};
use crate::plan::{Plan, Work};
use crate::registry::Registry;
use crate::substitute::{FetchFuture, Substituter};

/// Scheduling options.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScheduleOptions {
    /// `--keep-going`: after a failure, go on with everything that does not depend on it.
    /// Without it, the first failure stops the goal it belongs to and the goal's other
    /// running builds are killed, as Nix does.
    pub keep_going: bool,
    /// `--fallback`: a fetch that fails does not stop its goals. The output of a derivation
    /// is then built by it, planned while the Engine runs (see [`Fallback`]); anything else
    /// (a path fetched as a reference) is left to the caller to plan again without it.
    pub fallback: bool,
    /// The temporary roots the Engine takes end with the work that took them (a goal, a
    /// build, a fetch, a registration) instead of with the process: for a long-lived Engine
    /// (a daemon's), whose callers root what they want of the results themselves. Given to
    /// the [`Registry`], which takes the holds.
    pub roots_by_work: bool,
}

/// Plans the build of a derivation whose fetched output could not be fetched (`--fallback`),
/// fetching nothing in `exclude`. Called off the event loop: planning reads the store and
/// asks the caches.
pub trait Fallback: Send + Sync + std::fmt::Debug {
    fn plan(&self, drv: &StorePath, exclude: &BTreeSet<StorePath>) -> Result<Plan, PlanError>;
}

/// How often a job may be lost (its machine gone) before it counts as failed.
const MAX_LOST: u32 = 3;

/// What became of each node of a plan (same indices; then the nodes of fallback builds added
/// to the goal while it ran).
#[derive(Debug, Clone)]
pub enum NodeResult {
    Built(Built),
    Failed(Arc<BuildFailure>),
    /// Not built: the run stopped first (an interrupt, or a failure without keep-going), or
    /// a failure without keep-going cancelled it while it ran.
    NotStarted,
}

#[derive(Debug)]
pub struct Outcome {
    pub results: Vec<NodeResult>,
    /// Whether the run was interrupted from outside.
    pub interrupted: bool,
}

impl Outcome {
    pub fn failures(&self) -> impl Iterator<Item = &BuildFailure> {
        self.results.iter().filter_map(|r| match r {
            NodeResult::Failed(f) => Some(&**f),
            _ => None,
        })
    }

    pub fn success(&self) -> bool {
        !self.interrupted
            && self
                .results
                .iter()
                .all(|r| matches!(r, NodeResult::Built(_)))
    }

    /// Nix's exit status for the run: 0 on success; 100 + bits for build failures
    /// (1 timeout, 2 hash mismatch); 1 for anything else.
    pub fn exit_status(&self) -> i32 {
        if self.success() {
            return 0;
        }
        let bits = self.failures().fold(0, |b, f| b | f.status_bits());
        if bits == 0 {
            1
        } else {
            (0x60 | bits) as i32
        }
    }
}

/// What the Engine is given when it starts.
#[derive(Debug)]
pub struct EngineSetup {
    /// Asked in this order (the local one is asked last unless a job prefers it).
    pub executors: Vec<Arc<dyn Executor>>,
    /// Where the executors register outputs; a goal ends once its outputs are registered.
    pub registry: Option<Arc<Registry>>,
    pub reporter: Arc<dyn Reporter + Send + Sync>,
    /// Where the plans' fetches come from.
    pub substituter: Option<Arc<dyn Substituter>>,
    pub options: ScheduleOptions,
    /// For naming derivations in messages.
    pub store_dir: StoreDir,
    /// Turning true stops everything: nothing new starts and running jobs are cancelled.
    pub interrupt: Cancel,
    /// Plans the builds that replace failed fetches, with `options.fallback`.
    pub fallback: Option<Arc<dyn Fallback>>,
}

/// A running Engine: submit goals to it (from any thread), abandon them, then shut it down.
#[derive(Debug)]
pub struct Engine {
    tx: mpsc::UnboundedSender<Msg>,
    task: tokio::task::JoinHandle<()>,
    next_goal: std::sync::atomic::AtomicU64,
}

/// Names a submitted goal, to abandon it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GoalId(u64);

/// The result of a submitted goal, when it is known.
#[derive(Debug)]
pub struct GoalHandle {
    id: GoalId,
    rx: oneshot::Receiver<Outcome>,
}

impl GoalHandle {
    pub fn id(&self) -> GoalId {
        self.id
    }
}

impl Future for GoalHandle {
    type Output = Outcome;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        Pin::new(&mut self.rx).poll(cx).map(|r| {
            // The loop only ends without answering when it panicked, which resumes there.
            r.unwrap_or(Outcome {
                results: Vec::new(),
                interrupted: true,
            })
        })
    }
}

enum Msg {
    Goal(Goal),
    /// Whoever waited for the goal is gone.
    Abandon(GoalId),
}

struct Goal {
    id: GoalId,
    jobs: Vec<(Work, Vec<usize>, f64)>,
    built_by: Vec<(StorePath, StorePath)>,
    reply: oneshot::Sender<Outcome>,
}

impl Engine {
    /// Start the event loop on the current tokio runtime.
    pub fn start(setup: EngineSetup) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(Loop::new(setup).run(rx));
        Self {
            tx,
            task,
            next_goal: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Realise `plan`'s nodes, sharing those other goals still being realised have: a
    /// derivation two goals need is built once. A node that failed or was never started
    /// for an earlier goal is tried again; what is built stays known while any goal runs.
    pub fn submit(&self, plan: &Plan) -> GoalHandle {
        let id = GoalId(
            self.next_goal
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        );
        let (reply, rx) = oneshot::channel();
        let jobs = plan
            .nodes
            .iter()
            .map(|n| (n.work.clone(), n.deps.clone(), n.priority))
            .collect();
        let built_by = plan
            .built_by
            .iter()
            .map(|(p, d)| (p.clone(), d.clone()))
            .collect();
        if let Err(mpsc::error::SendError(Msg::Goal(g))) = self.tx.send(Msg::Goal(Goal {
            id,
            jobs,
            built_by,
            reply,
        })) {
            let _ = g.reply.send(Outcome {
                results: plan.nodes.iter().map(|_| NodeResult::NotStarted).collect(),
                interrupted: true,
            });
        }
        GoalHandle { id, rx }
    }

    /// Nobody waits for goal `id` any more: what only it needs is cancelled or never
    /// started, as a failure without keep-going would stop it; what another goal needs goes
    /// on. Its handle (if still polled) gets the outcome.
    pub fn abandon(&self, id: GoalId) {
        let _ = self.tx.send(Msg::Abandon(id));
    }

    /// Take no more goals; return once every goal has ended and every registration is done.
    pub async fn shutdown(self) {
        drop(self.tx);
        if let Err(e) = self.task.await {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }
}

/// Realise every node of `plan` with `executors`: an Engine for one goal.
pub async fn run(plan: &Plan, setup: EngineSetup) -> Outcome {
    let engine = Engine::start(setup);
    let goal = engine.submit(plan);
    let outcome = goal.await;
    engine.shutdown().await;
    outcome
}

#[derive(Debug)]
enum State {
    /// Waiting for inputs.
    Waiting,
    Ready,
    /// Asked an executor that has not answered yet.
    Offering,
    /// Every executor that could take it is busy: asked again when a job ends.
    Postponed,
    Running,
    /// A fetch that failed, waiting for the plan of the build that replaces it.
    FallingBack(Arc<BuildFailure>),
    Done(NodeResult),
}

struct Node {
    work: Work,
    priority: f64,
    deps_left: usize,
    dependents: Vec<usize>,
    state: State,
    /// Goals that need this node.
    goals: Vec<usize>,
    /// Executors that declined it.
    declined: Vec<bool>,
    lost: u32,
    cancel: Option<watch::Sender<bool>>,
    /// A failed fetch whose path its derivation builds instead: done once that is.
    fell_back: bool,
}

struct GoalState {
    id: GoalId,
    nodes: Vec<usize>,
    left: usize,
    /// A failure without keep-going: nothing more starts for it.
    stopped: bool,
    reply: Option<oneshot::Sender<Outcome>>,
    /// Keeps the roots taken for the goal until it is answered.
    hold: Option<ferrix_store::temproots::RootsHold>,
}

/// A ready node in the queue: the longest remaining chain first, then the order it came in.
struct Ready(f64, usize);

impl PartialEq for Ready {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Ready {}
impl PartialOrd for Ready {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Ready {
    fn cmp(&self, o: &Self) -> Ordering {
        self.0.total_cmp(&o.0).then(o.1.cmp(&self.1))
    }
}

type JobEnd = (usize, usize, Result<Built, JobError>);

/// The executor index of fetches (they run beside the executors, on their own limit).
const FETCH: usize = usize::MAX;

struct Loop {
    store_dir: StoreDir,
    executors: Vec<Arc<dyn Executor>>,
    running: Vec<usize>,
    local: Option<usize>,
    substituter: Option<Arc<dyn Substituter>>,
    fetching: usize,
    registry: Option<Arc<Registry>>,
    reporter: Arc<dyn Reporter + Send + Sync>,
    options: ScheduleOptions,
    interrupt: Cancel,
    nodes: Vec<Node>,
    index: HashMap<StorePath, usize>,
    goals: Vec<GoalState>,
    /// Where each unfinished goal is in `goals`.
    goal_ids: HashMap<GoalId, usize>,
    ready: BinaryHeap<Ready>,
    postponed: Vec<usize>,
    /// The one offer a delegating executor is still deciding.
    deciding: bool,
    jobs: JoinSet<JobEnd>,
    offers: JoinSet<(usize, usize, Offer)>,
    /// Goals whose registrations are awaited before they are answered.
    finishing: JoinSet<()>,
    interrupted: bool,
    fallback: Option<Arc<dyn Fallback>>,
    /// The derivation that builds a fetched output, for falling back to it.
    built_by: HashMap<StorePath, StorePath>,
    /// Paths whose fetch failed: no fallback plan fetches them again.
    failed_fetches: BTreeSet<StorePath>,
    /// Fallback plans being made: the failed fetch's node and the derivation planned.
    fallbacks: JoinSet<(usize, StorePath, Result<Plan, PlanError>)>,
}

impl Loop {
    fn new(s: EngineSetup) -> Self {
        let local = s.executors.iter().position(|e| e.is_local());
        Self {
            store_dir: s.store_dir,
            running: vec![0; s.executors.len()],
            executors: s.executors,
            local,
            substituter: s.substituter,
            fetching: 0,
            registry: s.registry,
            reporter: s.reporter,
            options: s.options,
            interrupt: s.interrupt,
            nodes: Vec::new(),
            index: HashMap::new(),
            goals: Vec::new(),
            goal_ids: HashMap::new(),
            ready: BinaryHeap::new(),
            postponed: Vec::new(),
            deciding: false,
            jobs: JoinSet::new(),
            offers: JoinSet::new(),
            finishing: JoinSet::new(),
            interrupted: false,
            fallback: s.fallback,
            built_by: HashMap::new(),
            failed_fetches: BTreeSet::new(),
            fallbacks: JoinSet::new(),
        }
    }

    async fn run(mut self, mut goals: mpsc::UnboundedReceiver<Msg>) {
        let mut open = true;
        if *self.interrupt.borrow() {
            self.stop_all();
        }
        loop {
            self.dispatch();
            let busy =
                !self.jobs.is_empty() || !self.offers.is_empty() || !self.fallbacks.is_empty();
            let idle = !busy && self.goals.iter().all(|g| g.reply.is_none());
            if !open && idle {
                break;
            }
            if idle && !self.nodes.is_empty() {
                self.forget();
            }
            tokio::select! {
                g = goals.recv(), if open => match g {
                    Some(Msg::Goal(g)) => self.add_goal(g),
                    Some(Msg::Abandon(id)) => {
                        if let Some(&g) = self.goal_ids.get(&id) {
                            // Answered at once: nobody waits for what other goals still need.
                            self.stop_goal(g);
                            self.finish_goal(g);
                        }
                    }
                    None => open = false,
                },
                Some(end) = self.jobs.join_next(), if !self.jobs.is_empty() => {
                    let (i, e, res) = end.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
                    self.job_ended(i, e, res);
                }
                Some(ans) = self.offers.join_next(), if !self.offers.is_empty() => {
                    let (i, e, offer) = ans.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
                    self.deciding = false;
                    self.answered(i, e, offer);
                }
                Some(planned) = self.fallbacks.join_next(), if !self.fallbacks.is_empty() => {
                    let (i, drv, plan) = planned.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
                    self.fell_back(i, &drv, plan);
                }
                Some(done) = self.finishing.join_next(), if !self.finishing.is_empty() => {
                    if let Err(e) = done {
                        if e.is_panic() {
                            std::panic::resume_unwind(e.into_panic());
                        }
                    }
                }
                changed = self.interrupt.changed(), if !self.interrupted => {
                    if changed.is_err() || *self.interrupt.borrow() {
                        self.stop_all();
                    }
                }
                // Nothing runs and no goal can move: the loop waits for goals only.
                else => {
                    if !open {
                        break;
                    }
                }
            }
        }
        while self.finishing.join_next().await.is_some() {}
        if let Some(r) = &self.registry {
            r.settle().await;
        }
    }

    /// Nothing runs and every goal is answered: forget the graph, so that a long-lived
    /// Engine (a daemon's) holds only what its goals in progress need.
    fn forget(&mut self) {
        self.nodes.clear();
        self.index.clear();
        self.goals.clear();
        self.goal_ids.clear();
        self.ready.clear();
        self.postponed.clear();
        self.built_by.clear();
        self.failed_fetches.clear();
    }

    fn add_goal(&mut self, g: Goal) {
        let gi = self.goals.len();
        self.goal_ids.insert(g.id, gi);
        self.built_by.extend(g.built_by);
        let map = self.add_nodes(g.jobs, true);
        let mut left = 0;
        for &i in &map {
            self.nodes[i].goals.push(gi);
            if !matches!(self.nodes[i].state, State::Done(_)) {
                left += 1;
            }
        }
        self.goals.push(GoalState {
            id: g.id,
            nodes: map,
            left,
            stopped: false,
            reply: Some(g.reply),
            hold: self.registry.as_ref().and_then(|r| r.hold_roots()),
        });
        if left == 0 {
            self.finish_goal(gi);
        }
    }

    /// The nodes of `jobs` (deps by index into `jobs`), new ones added to the graph and
    /// known ones shared; with `retry`, a known node that failed or never started is
    /// replaced by a new one (a new goal tries again what an earlier one could not do).
    fn add_nodes(&mut self, jobs: Vec<(Work, Vec<usize>, f64)>, retry: bool) -> Vec<usize> {
        let mut map = Vec::with_capacity(jobs.len());
        for (work, deps, priority) in jobs {
            let known = self.index.get(work.key()).copied().filter(|&i| {
                !(retry
                    && !self.interrupted
                    && matches!(
                        self.nodes[i].state,
                        State::Done(NodeResult::Failed(_) | NodeResult::NotStarted)
                    ))
            });
            let i = match known {
                Some(i) => i,
                None => {
                    let i = self.nodes.len();
                    let deps: Vec<usize> = deps.iter().map(|&d| map[d]).collect();
                    let mut deps_left = 0;
                    let mut failed_input = None;
                    for &d in &deps {
                        self.nodes[d].dependents.push(i);
                        match &self.nodes[d].state {
                            State::Done(NodeResult::Built(_)) => {}
                            State::Done(_) => failed_input = Some(d),
                            _ => deps_left += 1,
                        }
                    }
                    self.index.insert(work.key().clone(), i);
                    self.nodes.push(Node {
                        work,
                        priority,
                        deps_left,
                        dependents: Vec::new(),
                        state: State::Waiting,
                        goals: Vec::new(),
                        declined: vec![false; self.executors.len()],
                        lost: 0,
                        cancel: None,
                        fell_back: false,
                    });
                    if let Some(d) = failed_input {
                        let f = self.dependency_failed(i, d);
                        self.nodes[i].state = State::Done(f);
                    } else if self.interrupted {
                        self.nodes[i].state = State::Done(NodeResult::NotStarted);
                    } else if deps_left == 0 {
                        self.nodes[i].state = State::Ready;
                        self.ready.push(Ready(priority, i));
                    }
                    i
                }
            };
            map.push(i);
        }
        map
    }

    /// Fetching node `i`'s path failed with `f`: if a derivation builds it, plan that build
    /// (off the loop) and wait for it instead of failing. Whether it does.
    fn try_fallback(&mut self, i: usize, f: &Arc<BuildFailure>) -> bool {
        let path = self.nodes[i].work.key().clone();
        self.failed_fetches.insert(path.clone());
        // Nothing more starts for a stopped goal (or after an interrupt): it fails as is.
        if self.interrupted || self.unwanted(i) {
            return false;
        }
        let (Some(fallback), Some(drv)) = (self.fallback.clone(), self.built_by.get(&path)) else {
            return false;
        };
        let drv = drv.clone();
        self.reporter.warn(&format!(
            "{}; building it instead",
            crate::render_error(&**f)
        ));
        self.nodes[i].state = State::FallingBack(f.clone());
        let exclude = self.failed_fetches.clone();
        self.fallbacks.spawn_blocking(move || {
            let plan = fallback.plan(&drv, &exclude);
            (i, drv, plan)
        });
        true
    }

    /// The plan building `drv` in place of node `i`'s failed fetch: its nodes join the
    /// goals of node `i`, which is done once `drv` is built.
    fn fell_back(&mut self, i: usize, drv: &StorePath, plan: Result<Plan, PlanError>) {
        let State::FallingBack(f) = &self.nodes[i].state else {
            return; // stopped meanwhile
        };
        let f = f.clone();
        if self.interrupted || self.unwanted(i) {
            // Its goals stopped while the plan was made: nothing of it starts.
            self.nodes[i].state = State::Running;
            self.set_done(i, NodeResult::NotStarted);
            return;
        }
        let plan = match plan {
            Ok(p) => p,
            Err(e) => {
                self.reporter.warn(&format!(
                    "cannot build '{}' instead: {}",
                    self.print(i),
                    crate::render_error(&e)
                ));
                self.nodes[i].state = State::Running;
                self.fail_shared(i, f);
                return;
            }
        };
        self.built_by
            .extend(plan.built_by.iter().map(|(p, d)| (p.clone(), d.clone())));
        let jobs = plan
            .nodes
            .iter()
            .map(|n| (n.work.clone(), n.deps.clone(), n.priority))
            .collect();
        let map = self.add_nodes(jobs, false);
        for g in self.nodes[i].goals.clone() {
            for &n in &map {
                if self.nodes[n].goals.contains(&g) {
                    continue;
                }
                self.nodes[n].goals.push(g);
                self.goals[g].nodes.push(n);
                if !matches!(self.nodes[n].state, State::Done(_)) {
                    self.goals[g].left += 1;
                }
            }
        }
        self.nodes[i].fell_back = true;
        match self.index.get(drv).map(|&b| (b, &self.nodes[b].state)) {
            // Nothing to build: the path is valid now.
            None | Some((_, State::Done(NodeResult::Built(_)))) => {
                self.nodes[i].state = State::Running;
                self.succeeded(i, Built::Built);
            }
            Some((b, State::Done(_))) => {
                let r = self.dependency_failed(i, b);
                self.nodes[i].state = State::Running;
                self.set_done(i, r);
                self.fail_dependents(i);
            }
            Some((b, _)) => {
                self.nodes[i].state = State::Waiting;
                self.nodes[i].deps_left = 1;
                self.nodes[b].dependents.push(i);
            }
        }
    }

    fn dependency_failed(&self, node: usize, input: usize) -> NodeResult {
        NodeResult::Failed(Arc::new(BuildFailure::new(
            self.print(node),
            FailureKind::DependencyFailed {
                input: self.print(input),
            },
        )))
    }

    fn print(&self, i: usize) -> String {
        self.store_dir.display(self.nodes[i].work.key())
    }

    /// Whether nothing more may start for node `i`: every goal that needs it has stopped.
    fn unwanted(&self, i: usize) -> bool {
        self.interrupted || self.nodes[i].goals.iter().all(|&g| self.goals[g].stopped)
    }

    /// Start what can start: ready nodes, most urgent first, on the first executor that
    /// takes each.
    fn dispatch(&mut self) {
        if self.interrupted {
            return;
        }
        let mut wait = Vec::new();
        while let Some(Ready(p, i)) = self.ready.pop() {
            if !matches!(self.nodes[i].state, State::Ready) {
                continue;
            }
            if self.unwanted(i) {
                self.set_done(i, NodeResult::NotStarted);
                continue;
            }
            if self.nodes[i].fell_back {
                // Its derivation built the path.
                self.succeeded(i, Built::Built);
                continue;
            }
            match self.place(i) {
                Placed::Started | Placed::Offering => {}
                Placed::Wait => wait.push(Ready(p, i)),
                Placed::Postponed => {
                    self.nodes[i].state = State::Postponed;
                    self.postponed.push(i);
                }
                Placed::Impossible(f) => {
                    self.fail(i, f);
                }
            }
            if self.all_full() {
                break;
            }
        }
        self.ready.extend(wait);
    }

    /// Every executor at capacity, or only delegating ones with room while one decides;
    /// and fetches at theirs.
    fn all_full(&self) -> bool {
        self.substituter
            .as_ref()
            .is_none_or(|s| self.fetching >= s.capacity())
            && self
                .executors
                .iter()
                .enumerate()
                .all(|(e, x)| self.running[e] >= x.capacity() || (!x.is_local() && self.deciding))
    }

    fn place(&mut self, i: usize) -> Placed {
        let job = match &self.nodes[i].work {
            Work::Build(j) => j.clone(),
            Work::Fetch(f) => return self.place_fetch(i, f.clone()),
        };
        let local_possible = self.local.is_some_and(|l| {
            self.executors[l].capacity() > 0 && self.executors[l].could_build(&job)
        });
        let local_free = local_possible
            && self
                .local
                .is_some_and(|l| self.running[l] < self.executors[l].capacity());
        let ctx = OfferContext {
            local_free,
            local_possible,
        };
        let mut order: Vec<usize> = (0..self.executors.len())
            .filter(|&e| Some(e) != self.local)
            .collect();
        if let Some(l) = self.local {
            if job.prefers_local() && local_possible {
                order.insert(0, l);
            } else {
                order.push(l);
            }
        }
        let mut busy = false;
        let mut postponed = false;
        let mut anyone = false;
        for e in order {
            let ex = self.executors[e].clone();
            if self.nodes[i].declined[e] || !ex.could_build(&job) {
                continue;
            }
            anyone = true;
            if self.running[e] >= ex.capacity() {
                busy = true;
                continue;
            }
            if !ex.is_local() && self.deciding {
                // One delegating executor decides at a time: to this node, it is busy.
                busy = true;
                continue;
            }
            let (tx, rx) = watch::channel(false);
            let mut fut = ex.clone().offer(job.clone(), ctx, rx);
            let mut cx = Context::from_waker(Waker::noop());
            match fut.as_mut().poll(&mut cx) {
                Poll::Ready(Offer::Accept(build)) => {
                    self.start(i, e, tx, build);
                    return Placed::Started;
                }
                Poll::Ready(Offer::Decline) => self.nodes[i].declined[e] = true,
                Poll::Ready(Offer::Postpone) => postponed = true,
                Poll::Pending => {
                    self.deciding = true;
                    self.nodes[i].state = State::Offering;
                    self.nodes[i].cancel = Some(tx);
                    self.offers.spawn(async move { (i, e, fut.await) });
                    return Placed::Offering;
                }
            }
        }
        if busy {
            Placed::Wait
        } else if postponed {
            Placed::Postponed
        } else {
            Placed::Impossible(self.nobody(i, anyone))
        }
    }

    /// Start fetching node `i`'s path when a fetch is free.
    fn place_fetch(&mut self, i: usize, f: Arc<crate::substitute::Substitution>) -> Placed {
        let Some(sub) = self.substituter.clone() else {
            return Placed::Impossible(BuildFailure::new(
                self.print(i),
                FailureKind::Substitute {
                    errors: Vec::new(),
                    fallback: self.options.fallback,
                },
            ));
        };
        if self.fetching >= sub.capacity() {
            return Placed::Wait;
        }
        let (tx, rx) = watch::channel(false);
        self.reporter.fetching(&f.path, &f.from);
        let fut: FetchFuture = sub.fetch(f, rx, self.reporter.clone());
        self.fetching += 1;
        self.nodes[i].state = State::Running;
        self.nodes[i].cancel = Some(tx);
        let hold = self.registry.as_ref().and_then(|r| r.hold_roots());
        self.jobs.spawn(async move {
            let res = fut
                .await
                .map(|_| Built::Substituted)
                .map_err(JobError::Failed);
            drop(hold);
            (i, FETCH, res)
        });
        Placed::Started
    }

    /// Why nobody builds node `i`.
    fn nobody(&self, i: usize, anyone: bool) -> BuildFailure {
        let Work::Build(job) = &self.nodes[i].work else {
            unreachable!("only builds are offered to executors")
        };
        let drv = self.print(i);
        let local_off = self.local.is_none_or(|l| self.executors[l].capacity() == 0);
        if !anyone && local_off && self.executors.len() <= 1 {
            return BuildFailure::new(drv, FailureKind::NoSlots);
        }
        let mut features: Vec<String> = job.required_features().into_iter().collect();
        features.sort();
        BuildFailure::new(
            drv,
            FailureKind::NoBuilder {
                system: job.drv.platform.clone(),
                features: features.join(", "),
                declined: anyone,
            },
        )
    }

    fn start(&mut self, i: usize, e: usize, cancel: watch::Sender<bool>, build: BuildFuture) {
        self.running[e] += 1;
        self.nodes[i].state = State::Running;
        self.nodes[i].cancel = Some(cancel);
        let hold = self.registry.as_ref().and_then(|r| r.hold_roots());
        self.jobs.spawn(async move {
            let res = build.await;
            drop(hold);
            (i, e, res)
        });
    }

    fn answered(&mut self, i: usize, e: usize, offer: Offer) {
        if !matches!(self.nodes[i].state, State::Offering) {
            return;
        }
        if self.unwanted(i) {
            // Dropping an accepted build releases what the executor reserved for it.
            self.set_done(i, NodeResult::NotStarted);
            return;
        }
        match offer {
            Offer::Accept(build) => {
                let tx = self.nodes[i]
                    .cancel
                    .take()
                    .unwrap_or_else(|| watch::channel(false).0);
                self.start(i, e, tx, build);
            }
            Offer::Decline => {
                self.nodes[i].declined[e] = true;
                self.nodes[i].state = State::Ready;
                self.ready.push(Ready(self.nodes[i].priority, i));
            }
            Offer::Postpone => {
                self.nodes[i].state = State::Postponed;
                self.postponed.push(i);
            }
        }
    }

    fn job_ended(&mut self, i: usize, e: usize, res: Result<Built, JobError>) {
        if e == FETCH {
            self.fetching -= 1;
        } else {
            self.running[e] -= 1;
        }
        self.nodes[i].cancel = None;
        // A slot is free: whatever was postponed is asked again.
        for p in std::mem::take(&mut self.postponed) {
            if matches!(self.nodes[p].state, State::Postponed) {
                self.nodes[p].state = State::Ready;
                self.ready.push(Ready(self.nodes[p].priority, p));
            }
        }
        let drv = self.nodes[i].work.key().clone();
        match res {
            Ok(b) => {
                self.reporter.finished(&drv, Ok(b));
                self.succeeded(i, b);
            }
            Err(JobError::Lost { by, why }) => {
                self.nodes[i].lost += 1;
                if self.nodes[i].lost >= MAX_LOST {
                    let f = BuildFailure::new(
                        self.print(i),
                        FailureKind::Lost {
                            by,
                            why,
                            times: self.nodes[i].lost,
                        },
                    );
                    self.reporter.finished(&drv, Err(&f));
                    self.fail(i, f);
                } else if self.unwanted(i) {
                    self.set_done(i, NodeResult::NotStarted);
                } else {
                    self.reporter.warn(&format!(
                        "building '{}' on '{by}' was lost ({why}); trying elsewhere",
                        self.print(i)
                    ));
                    self.nodes[i].state = State::Ready;
                    self.ready.push(Ready(self.nodes[i].priority, i));
                }
            }
            Err(JobError::Failed(f)) => {
                let ours = matches!(
                    f,
                    BuildFailure {
                        kind: FailureKind::Interrupted,
                        ..
                    }
                );
                let f = Arc::new(f);
                self.reporter.finished(&drv, Err(&f));
                if ours && !self.interrupted && !self.unwanted(i) {
                    // Cancelled for goals that gave up, and wanted by a goal that came since:
                    // it starts again for that one.
                    self.nodes[i].state = State::Ready;
                    self.ready.push(Ready(self.nodes[i].priority, i));
                } else if ours && !self.interrupted {
                    // Cancelled because a failure stopped its goals: not an error of its own
                    // (Nix says nothing of it either).
                    self.set_done(i, NodeResult::NotStarted);
                } else if ours {
                    // Cancelled by an interrupt: its dependents are simply not started.
                    self.set_done(i, NodeResult::Failed(f));
                } else if e == FETCH && self.options.fallback {
                    // Built instead: by its derivation, planned now, or (a path fetched as
                    // a reference) in a plan the caller makes again; its goals go on.
                    if !self.try_fallback(i, &f) {
                        self.fail_only(i, f);
                    }
                } else {
                    self.fail_shared(i, f);
                }
            }
        }
    }

    fn fail(&mut self, i: usize, f: BuildFailure) {
        self.fail_shared(i, Arc::new(f));
    }

    /// Node `i` failed: so does everything that waits on it, and without keep-going its
    /// goals stop.
    fn fail_shared(&mut self, i: usize, f: Arc<BuildFailure>) {
        self.fail_only(i, f);
        if !self.options.keep_going {
            for g in self.nodes[i].goals.clone() {
                self.stop_goal(g);
            }
        }
    }

    /// Node `i` is done with `b`: its dependents may be ready.
    fn succeeded(&mut self, i: usize, b: Built) {
        self.set_done(i, NodeResult::Built(b));
        for d in self.nodes[i].dependents.clone() {
            let n = &mut self.nodes[d];
            n.deps_left -= 1;
            if n.deps_left == 0 && matches!(n.state, State::Waiting) {
                n.state = State::Ready;
                self.ready.push(Ready(n.priority, d));
            }
        }
    }

    /// Node `i` failed, and so does everything that waits on it.
    fn fail_only(&mut self, i: usize, f: Arc<BuildFailure>) {
        self.set_done(i, NodeResult::Failed(f));
        self.fail_dependents(i);
    }

    /// Everything that waits on node `i` (done, not built) fails.
    fn fail_dependents(&mut self, i: usize) {
        let mut todo = vec![i];
        while let Some(n) = todo.pop() {
            for d in self.nodes[n].dependents.clone() {
                if !matches!(self.nodes[d].state, State::Done(_)) {
                    let r = self.dependency_failed(d, n);
                    self.set_done(d, r);
                    todo.push(d);
                }
            }
        }
    }

    /// A goal gives up: its nodes no other goal needs are cancelled or never started.
    fn stop_goal(&mut self, g: usize) {
        if self.goals[g].stopped {
            return;
        }
        self.goals[g].stopped = true;
        for i in self.goals[g].nodes.clone() {
            if !self.unwanted(i) {
                continue;
            }
            match self.nodes[i].state {
                State::Waiting | State::Ready | State::Postponed | State::FallingBack(_) => {
                    self.set_done(i, NodeResult::NotStarted)
                }
                State::Running | State::Offering => {
                    if let Some(c) = &self.nodes[i].cancel {
                        let _ = c.send(true);
                    }
                }
                State::Done(_) => {}
            }
        }
    }

    fn stop_all(&mut self) {
        self.interrupted = true;
        for g in 0..self.goals.len() {
            self.goals[g].stopped = true;
        }
        for i in 0..self.nodes.len() {
            match self.nodes[i].state {
                State::Waiting | State::Ready | State::Postponed | State::FallingBack(_) => {
                    self.set_done(i, NodeResult::NotStarted)
                }
                State::Running | State::Offering => {
                    if let Some(c) = &self.nodes[i].cancel {
                        let _ = c.send(true);
                    }
                }
                State::Done(_) => {}
            }
        }
    }

    fn set_done(&mut self, i: usize, r: NodeResult) {
        if matches!(self.nodes[i].state, State::Done(_)) {
            return;
        }
        self.nodes[i].state = State::Done(r);
        for g in self.nodes[i].goals.clone() {
            self.goals[g].left -= 1;
            if self.goals[g].left == 0 {
                self.finish_goal(g);
            }
        }
    }

    /// Every node of goal `g` has ended (or it was abandoned): once the outputs it built are
    /// registered (or could not be), answer it.
    fn finish_goal(&mut self, g: usize) {
        let Some(reply) = self.goals[g].reply.take() else {
            return;
        };
        self.goal_ids.remove(&self.goals[g].id);
        let mut results: Vec<(StorePath, Vec<StorePath>, NodeResult)> = Vec::new();
        for &i in &self.goals[g].nodes {
            let n = &self.nodes[i];
            // A goal ends when all its nodes have, or when it is abandoned.
            let r = match &n.state {
                State::Done(r) => r.clone(),
                _ => NodeResult::NotStarted,
            };
            results.push((n.work.key().clone(), n.work.outputs(), r));
        }
        let interrupted = self.interrupted;
        let registry = self.registry.clone();
        let hold = self.goals[g].hold.take();
        self.finishing.spawn(async move {
            let mut out = Vec::with_capacity(results.len());
            for (drv, outputs, r) in results {
                let r = match (r, &registry) {
                    (NodeResult::Built(b), Some(reg)) => {
                        let _ = reg.registrations().wait_for(outputs).await;
                        match reg.registrations().failure_of(&drv) {
                            Some(f) => NodeResult::Failed(f),
                            None => NodeResult::Built(b),
                        }
                    }
                    (r, _) => r,
                };
                out.push(r);
            }
            let _ = reply.send(Outcome {
                results: out,
                interrupted,
            });
            drop(hold);
        });
    }
}

enum Placed {
    Started,
    Offering,
    /// Every executor that could take it is full (or one is deciding): try again later.
    Wait,
    /// Asked and told to wait for a job to end.
    Postponed,
    Impossible(BuildFailure),
}

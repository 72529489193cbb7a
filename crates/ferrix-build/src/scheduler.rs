//! The event loop that owns the plan: starts ready derivations, most urgent first, as slots
//! free up, and reacts to each finished job.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::error::BuildFailure;
use crate::executor::{Built, Cancel, Executor, Offer, Reporter};
use crate::plan::Plan;

/// Scheduling options.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScheduleOptions {
    /// `--keep-going`: after a failure, go on with everything that does not depend on it.
    /// Without it, the first failure stops the run and the other running builds are killed,
    /// as Nix does.
    pub keep_going: bool,
}

/// What became of each node of the plan (same indices).
#[derive(Debug)]
pub enum NodeResult {
    Built(Built),
    Failed(BuildFailure),
    /// Never started: the run stopped first (an interrupt, or a failure without keep-going).
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
            NodeResult::Failed(f) => Some(f),
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

/// A ready node in the queue: the longest remaining chain first, then plan order.
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

/// Realise every node of `plan` with `executor`. `interrupt` turning true stops the run:
/// nothing new starts and running jobs are cancelled.
pub async fn run(
    plan: &Plan,
    executor: Arc<dyn Executor>,
    reporter: Arc<dyn Reporter + Send + Sync>,
    opts: ScheduleOptions,
    mut interrupt: Cancel,
) -> Outcome {
    let n = plan.nodes.len();
    let mut results: Vec<Option<NodeResult>> = (0..n).map(|_| None).collect();
    let mut waiting: Vec<usize> = plan.nodes.iter().map(|x| x.deps.len()).collect();
    let mut ready: BinaryHeap<Ready> = plan
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, x)| x.deps.is_empty())
        .map(|(i, x)| Ready(x.priority, i))
        .collect();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut jobs: JoinSet<(usize, Result<Built, BuildFailure>)> = JoinSet::new();
    let mut stopping = false;
    let mut interrupted = false;
    let slots = executor.slots();

    loop {
        if slots == 0 {
            // `max-jobs = 0` and nobody else to build: what must be built cannot be.
            while let Some(Ready(_, i)) = ready.pop() {
                let drv = plan.store_dir.display(&plan.nodes[i].job.drv_path);
                results[i] = Some(NodeResult::Failed(BuildFailure::NoSlots { drv }));
                fail_dependents(plan, i, &mut results);
            }
        }
        while !stopping && jobs.len() < slots {
            let Some(Ready(_, i)) = ready.pop() else {
                break;
            };
            let job = plan.nodes[i].job.clone();
            if executor.offer(&job) != Offer::Accept {
                // The only executor so far is the local one, which accepts everything.
                results[i] = Some(NodeResult::NotStarted);
                continue;
            }
            let (ex, cancel) = (executor.clone(), stop_rx.clone());
            jobs.spawn(async move { (i, ex.build(job, cancel).await) });
        }
        if jobs.is_empty() {
            break;
        }
        let done = tokio::select! {
            done = jobs.join_next() => done,
            changed = interrupt.changed(), if !interrupted => {
                if changed.is_err() || *interrupt.borrow() {
                    interrupted = true;
                    stopping = true;
                    let _ = stop_tx.send(true);
                }
                continue;
            }
        };
        let Some(done) = done else { break };
        let (i, res) = match done {
            Ok(x) => x,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        let node = &plan.nodes[i];
        reporter.finished(&node.job.drv_path, &res);
        match res {
            Ok(b) => {
                results[i] = Some(NodeResult::Built(b));
                for &d in &node.dependents {
                    waiting[d] -= 1;
                    if waiting[d] == 0 && results[d].is_none() {
                        ready.push(Ready(plan.nodes[d].priority, d));
                    }
                }
            }
            Err(f) => {
                let cancelled_by_us = matches!(f, BuildFailure::Interrupted { .. });
                results[i] = Some(NodeResult::Failed(f));
                if !cancelled_by_us {
                    fail_dependents(plan, i, &mut results);
                    if !opts.keep_going {
                        stopping = true;
                        let _ = stop_tx.send(true);
                    }
                }
            }
        }
    }
    // Builds that returned may still fail at registration; their dependents that built on
    // them fail there too.
    for (drv, f) in executor.settle().await {
        if let Some(i) = plan.nodes.iter().position(|x| x.job.drv_path == drv) {
            results[i] = Some(NodeResult::Failed(f));
        }
    }
    let results = results
        .into_iter()
        .map(|r| r.unwrap_or(NodeResult::NotStarted))
        .collect();
    Outcome {
        results,
        interrupted,
    }
}

/// Everything that waits, directly or not, on a failed node fails too, naming the input
/// that failed.
fn fail_dependents(plan: &Plan, failed: usize, results: &mut [Option<NodeResult>]) {
    let mut todo = vec![failed];
    while let Some(i) = todo.pop() {
        let input = plan.store_dir.display(&plan.nodes[i].job.drv_path);
        for &d in &plan.nodes[i].dependents {
            if results[d].is_none() {
                results[d] = Some(NodeResult::Failed(BuildFailure::DependencyFailed {
                    drv: plan.store_dir.display(&plan.nodes[d].job.drv_path),
                    input: input.clone(),
                }));
                todo.push(d);
            }
        }
    }
}

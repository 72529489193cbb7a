//! The build plan: which derivations must be built for the wanted outputs, what each waits
//! for, and how urgent each is (the longest chain of work still behind it).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use ferrix_format::{Derivation, DerivationOutput, StorePath};
use ferrix_store::LocalStore;

use crate::error::PlanError;
use crate::executor::{BuildMode, Job};
use crate::times::BuildTimes;

/// Outputs wanted of a derivation: `None` means all of them.
pub type Wanted = (StorePath, Option<BTreeSet<String>>);

/// A derivation that has to be built.
#[derive(Debug)]
pub struct Node {
    pub job: Arc<Job>,
    /// Nodes whose outputs this one needs.
    pub deps: Vec<usize>,
    /// Nodes that need this one's outputs.
    pub dependents: Vec<usize>,
    /// Estimated seconds from the start of this build to the end of the longest chain of
    /// builds that waits for it: the scheduler starts the largest first.
    pub priority: f64,
}

#[derive(Debug)]
pub struct Plan {
    pub store_dir: ferrix_format::StoreDir,
    /// In dependency order: every node comes after its deps.
    pub nodes: Vec<Node>,
}

/// How long a build is expected to take when nothing better is known.
const DEFAULT_ESTIMATE: f64 = 1.0;

/// Read a derivation from the store.
pub fn read_drv(store: &LocalStore, drv_path: &StorePath) -> Result<Derivation, PlanError> {
    Ok(ferrix_store::drv::read_derivation(store, drv_path)?)
}

/// The output paths of `drv`, which must all be known before the build.
pub fn output_paths(
    drv_path: &StorePath,
    drv: &Derivation,
    store: &LocalStore,
) -> Result<BTreeMap<String, StorePath>, PlanError> {
    drv.outputs
        .iter()
        .map(|(name, o)| match o {
            DerivationOutput::InputAddressed(p) | DerivationOutput::CaFixed { path: p, .. } => {
                Ok((name.clone(), p.clone()))
            }
            _ => Err(PlanError::Unsupported {
                drv: store.print(drv_path),
                what: "floating, deferred and impure outputs",
            }),
        })
        .collect()
}

/// A loaded derivation with its output paths.
type Loaded = Arc<(Derivation, BTreeMap<String, StorePath>)>;

struct Planner<'a> {
    store: &'a LocalStore,
    /// How the wanted derivations are built; their inputs are built as usual.
    mode: BuildMode,
    index: HashMap<StorePath, usize>,
    nodes: Vec<Node>,
    drvs: HashMap<StorePath, Loaded>,
}

impl Planner<'_> {
    fn load(&mut self, drv_path: &StorePath) -> Result<Loaded, PlanError> {
        if let Some(d) = self.drvs.get(drv_path) {
            return Ok(d.clone());
        }
        let drv = read_drv(self.store, drv_path)?;
        self.store.check_derivation(drv_path, &drv)?;
        let outs = output_paths(drv_path, &drv, self.store)?;
        let d = Arc::new((drv, outs));
        self.drvs.insert(drv_path.clone(), d.clone());
        Ok(d)
    }

    /// The node building `drv_path`, or `None` when the wanted outputs are valid already.
    fn visit(
        &mut self,
        drv_path: &StorePath,
        wanted: Option<&BTreeSet<String>>,
        top: bool,
    ) -> Result<Option<usize>, PlanError> {
        let mode = if top { self.mode } else { BuildMode::Normal };
        let check = mode == BuildMode::Check;
        if let Some(&i) = self.index.get(drv_path) {
            return Ok(Some(i));
        }
        let d = self.load(drv_path)?;
        let (drv, outs) = (&d.0, &d.1);
        let wanted_paths: Vec<&StorePath> = match wanted {
            None => outs.values().collect(),
            Some(names) => names
                .iter()
                .map(|n| {
                    outs.get(n).ok_or_else(|| PlanError::NoSuchOutput {
                        drv: self.store.print(drv_path),
                        output: n.clone(),
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let valid = self.store.valid_among(wanted_paths.iter().copied())?;
        let all_valid = wanted_paths.iter().all(|p| valid.contains(*p));
        if check && !all_valid {
            return Err(PlanError::CannotCheck {
                drv: self.store.print(drv_path),
            });
        }
        if all_valid && mode == BuildMode::Normal {
            return Ok(None);
        }
        let mut deps = Vec::new();
        let mut input_roots: BTreeSet<StorePath> = BTreeSet::new();
        for (input, names) in &drv.input_drvs {
            if let Some(i) = self.visit(input, Some(names), false)? {
                deps.push(i);
            }
            let d = self.load(input)?;
            for n in names {
                let p = d.1.get(n).ok_or_else(|| PlanError::NoSuchOutput {
                    drv: self.store.print(input),
                    output: n.clone(),
                })?;
                input_roots.insert(p.clone());
            }
        }
        let srcs_valid = self.store.valid_among(drv.input_srcs.iter())?;
        if let Some(src) = drv.input_srcs.iter().find(|s| !srcs_valid.contains(*s)) {
            return Err(PlanError::InputNotValid {
                drv: self.store.print(drv_path),
                input: self.store.print(src),
            });
        }
        input_roots.extend(drv.input_srcs.iter().cloned());
        let job = Job {
            drv_path: drv_path.clone(),
            drv: drv.clone(),
            outputs: outs.clone(),
            input_roots,
            mode,
        };
        let i = self.nodes.len();
        for &dep in &deps {
            self.nodes[dep].dependents.push(i);
        }
        self.nodes.push(Node {
            job: Arc::new(job),
            deps,
            dependents: Vec::new(),
            priority: 0.0,
        });
        self.index.insert(drv_path.clone(), i);
        Ok(Some(i))
    }
}

/// Work out what must be built for `wanted`. `times` gives the expected duration of each
/// build where one is remembered; priorities follow from them.
pub fn plan(store: &LocalStore, wanted: &[Wanted], times: &BuildTimes) -> Result<Plan, PlanError> {
    plan_builds(store, wanted, times, BuildMode::Normal)
}

/// Like [`plan`], building the wanted derivations in `mode`: with `Check` their outputs must
/// be valid and are built again to compare, with `Repair` they are built again and replaced.
/// Only missing inputs are built.
pub fn plan_builds(
    store: &LocalStore,
    wanted: &[Wanted],
    times: &BuildTimes,
    mode: BuildMode,
) -> Result<Plan, PlanError> {
    let mut p = Planner {
        store,
        mode,
        index: HashMap::new(),
        nodes: Vec::new(),
        drvs: HashMap::new(),
    };
    for (drv, outs) in wanted {
        p.visit(drv, outs.as_ref(), true)?;
    }
    let mut nodes = p.nodes;
    // Nodes come after their deps, so dependents come later: fill priorities backwards.
    for i in (0..nodes.len()).rev() {
        let tail = nodes[i]
            .dependents
            .iter()
            .map(|&d| nodes[d].priority)
            .fold(0.0, f64::max);
        let name = ferrix_format::derivation::drv_name(&nodes[i].job.drv_path);
        nodes[i].priority = times.get(name).unwrap_or(DEFAULT_ESTIMATE) + tail;
    }
    Ok(Plan {
        store_dir: store.store_dir().clone(),
        nodes,
    })
}

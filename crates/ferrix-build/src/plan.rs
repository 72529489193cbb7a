//! The build plan: which derivations must be built and which paths fetched for the wanted
//! outputs, what each waits for, and how urgent each is (the longest chain of work still
//! behind it). Caches are asked about a whole frontier of missing outputs at once, before
//! the inputs of the derivations that make them are looked at, so an output that can be
//! fetched never pulls its build inputs into the plan.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use ferrix_format::{Derivation, DerivationOutput, StorePath};
use ferrix_store::LocalStore;

use crate::error::PlanError;
use crate::executor::{BuildMode, Job};
use crate::substitute::{Substituter, Substitution};
use crate::times::BuildTimes;

/// Outputs wanted of a derivation: `None` means all of them.
pub type Wanted = (StorePath, Option<BTreeSet<String>>);

/// What a node does.
#[derive(Debug, Clone)]
pub enum Work {
    /// Build a derivation.
    Build(Arc<Job>),
    /// Fetch a path from a cache; its deps are the fetches of its references.
    Fetch(Arc<Substitution>),
}

impl Work {
    /// The derivation built or the path fetched: what the node is known by.
    pub fn key(&self) -> &StorePath {
        match self {
            Self::Build(j) => &j.drv_path,
            Self::Fetch(s) => &s.path,
        }
    }

    pub fn job(&self) -> Option<&Arc<Job>> {
        match self {
            Self::Build(j) => Some(j),
            Self::Fetch(_) => None,
        }
    }

    pub fn fetch(&self) -> Option<&Arc<Substitution>> {
        match self {
            Self::Build(_) => None,
            Self::Fetch(s) => Some(s),
        }
    }

    /// The store paths it makes valid.
    pub fn outputs(&self) -> Vec<StorePath> {
        match self {
            Self::Build(j) => j.outputs.values().cloned().collect(),
            Self::Fetch(s) => vec![s.path.clone()],
        }
    }
}

/// A derivation to build or a path to fetch.
#[derive(Debug)]
pub struct Node {
    pub work: Work,
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
    /// The fetched outputs of derivations, with the derivation that builds each instead
    /// should its fetch fail (`--fallback`).
    pub built_by: HashMap<StorePath, StorePath>,
}

/// How long a build is expected to take when nothing better is known.
const DEFAULT_ESTIMATE: f64 = 1.0;
/// How long a fetch is expected to take.
const FETCH_ESTIMATE: f64 = 0.1;

/// Where substitutes may come from, for [`plan_with`].
#[derive(Debug, Clone, Copy)]
pub struct Substitutes<'a> {
    pub substituter: &'a dyn Substituter,
    /// Paths never to fetch (their fetch failed before: they are built).
    pub exclude: &'a BTreeSet<StorePath>,
    /// `always-allow-substitutes`: fetch even for `allowSubstitutes = false`.
    pub always_allow: bool,
}

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
    subst: Option<Substitutes<'a>>,
    /// Paths asked about, with what a cache has of each (`None`: nothing).
    known: HashMap<StorePath, Option<Arc<Substitution>>>,
    /// Whether a path (not valid here) can be fetched with all its closure.
    fetchable: HashMap<StorePath, bool>,
    /// How the wanted derivations are built; their inputs are built as usual.
    mode: BuildMode,
    index: HashMap<StorePath, usize>,
    nodes: Vec<Node>,
    drvs: HashMap<StorePath, Loaded>,
    built_by: HashMap<StorePath, StorePath>,
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

    /// The wanted output paths of a derivation, and those of them not valid here.
    fn wanted_paths(
        &mut self,
        drv_path: &StorePath,
        wanted: Option<&BTreeSet<String>>,
    ) -> Result<(Loaded, Vec<StorePath>, Vec<StorePath>), PlanError> {
        let d = self.load(drv_path)?;
        let outs = &d.1;
        let wanted_paths: Vec<StorePath> = match wanted {
            None => outs.values().cloned().collect(),
            Some(names) => names
                .iter()
                .map(|n| {
                    outs.get(n).cloned().ok_or_else(|| PlanError::NoSuchOutput {
                        drv: self.store.print(drv_path),
                        output: n.clone(),
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let valid = self.store.valid_among(wanted_paths.iter())?;
        let missing = wanted_paths
            .iter()
            .filter(|p| !valid.contains(*p))
            .cloned()
            .collect();
        Ok((d, wanted_paths, missing))
    }

    /// Whether a derivation's missing outputs are fetched rather than built: all of them
    /// can be (closures included), and the derivation allows it.
    fn fetches(&self, drv: &Derivation, missing: &[StorePath]) -> bool {
        let Some(s) = &self.subst else { return false };
        // Nix's reading of `allowSubstitutes`: only "1" (true) or absent allows.
        let allowed = s.always_allow || drv.env.get("allowSubstitutes").is_none_or(|v| v == "1");
        allowed
            && !missing.is_empty()
            && missing
                .iter()
                .all(|p| self.fetchable.get(p).copied().unwrap_or(false))
    }

    /// Ask the caches about `paths` and, round after round, the references of what they
    /// have; then settle which of them can be fetched whole.
    fn ask(&mut self, paths: Vec<StorePath>) -> Result<(), PlanError> {
        let Some(s) = self.subst else { return Ok(()) };
        let mut round: Vec<StorePath> = paths
            .into_iter()
            .filter(|p| !self.known.contains_key(p) && !s.exclude.contains(p))
            .collect();
        round.sort();
        round.dedup();
        let mut new = Vec::new();
        while !round.is_empty() {
            let found = s.substituter.query(&round);
            let mut next = BTreeSet::new();
            for p in round {
                let f = found.get(&p).cloned();
                if let Some(f) = &f {
                    next.extend(f.references.iter().cloned());
                }
                self.known.insert(p.clone(), f);
                new.push(p);
            }
            let valid = self.store.valid_among(next.iter())?;
            round = next
                .into_iter()
                .filter(|r| !valid.contains(r) && !self.known.contains_key(r))
                .collect();
            // A reference that must not be fetched is known to be missing.
            round.retain(|r| {
                if s.exclude.contains(r) {
                    self.known.insert(r.clone(), None);
                    false
                } else {
                    true
                }
            });
        }
        for p in new {
            self.settle(&p);
        }
        Ok(())
    }

    /// Whether `p` (asked about, not valid) can be fetched with its whole closure.
    fn settle(&mut self, p: &StorePath) -> bool {
        if let Some(&b) = self.fetchable.get(p) {
            return b;
        }
        // Assume yes while looking (a cycle through references is the path itself only;
        // anything else is caught when fetched).
        self.fetchable.insert(p.clone(), true);
        let ok = match self.known.get(p).cloned() {
            Some(Some(s)) => s.references.iter().all(|r| match self.known.get(r) {
                // Not asked: it was valid.
                None => true,
                Some(_) => self.settle(r),
            }),
            _ => false,
        };
        self.fetchable.insert(p.clone(), ok);
        ok
    }

    /// Ask the caches about every missing output that the builds of `frontier` need,
    /// level after level, only going below a derivation that is built.
    fn discover(&mut self, top: &[Wanted]) -> Result<(), PlanError> {
        let Some(_) = self.subst else { return Ok(()) };
        let mut frontier: Vec<(StorePath, Option<BTreeSet<String>>, bool)> = top
            .iter()
            .map(|(d, o)| (d.clone(), o.clone(), true))
            .collect();
        let mut seen: BTreeSet<(StorePath, Option<BTreeSet<String>>)> = BTreeSet::new();
        while !frontier.is_empty() {
            let mut level = Vec::new();
            let mut ask = Vec::new();
            for (drv, names, top) in frontier {
                if !seen.insert((drv.clone(), names.clone())) {
                    continue;
                }
                let (d, _, missing) = self.wanted_paths(&drv, names.as_ref())?;
                let built_anyway = top && self.mode != BuildMode::Normal;
                if missing.is_empty() && !built_anyway {
                    continue;
                }
                if !built_anyway {
                    ask.extend(missing.iter().cloned());
                }
                level.push((d, missing, built_anyway));
            }
            self.ask(ask)?;
            let mut next = Vec::new();
            for (d, missing, built_anyway) in level {
                if built_anyway || !self.fetches(&d.0, &missing) {
                    for (input, names) in &d.0.input_drvs {
                        next.push((input.clone(), Some(names.clone()), false));
                    }
                }
            }
            frontier = next;
        }
        Ok(())
    }

    /// The node fetching `p` (after its references), or `None` when it is valid.
    fn visit_path(&mut self, p: &StorePath) -> Option<usize> {
        if let Some(&i) = self.index.get(p) {
            return Some(i);
        }
        let s = self.known.get(p).cloned().flatten()?;
        let deps: Vec<usize> = s
            .references
            .iter()
            .filter_map(|r| self.visit_path(r))
            .collect();
        Some(self.push(Work::Fetch(s), deps))
    }

    fn push(&mut self, work: Work, deps: Vec<usize>) -> usize {
        let i = self.nodes.len();
        for &dep in &deps {
            self.nodes[dep].dependents.push(i);
        }
        self.index.insert(work.key().clone(), i);
        self.nodes.push(Node {
            work,
            deps,
            dependents: Vec::new(),
            priority: 0.0,
        });
        i
    }

    /// The nodes that make the wanted outputs of `drv_path` valid: the one building it, or
    /// those fetching them; none when they are valid already.
    fn visit(
        &mut self,
        drv_path: &StorePath,
        wanted: Option<&BTreeSet<String>>,
        top: bool,
    ) -> Result<Vec<usize>, PlanError> {
        let mode = if top { self.mode } else { BuildMode::Normal };
        let check = mode == BuildMode::Check;
        if let Some(&i) = self.index.get(drv_path) {
            return Ok(vec![i]);
        }
        let (d, _, missing) = self.wanted_paths(drv_path, wanted)?;
        let (drv, outs) = (&d.0, &d.1);
        if check && !missing.is_empty() {
            return Err(PlanError::CannotCheck {
                drv: self.store.print(drv_path),
            });
        }
        if missing.is_empty() && mode == BuildMode::Normal {
            return Ok(Vec::new());
        }
        if mode == BuildMode::Normal && self.fetches(drv, &missing) {
            for p in &missing {
                self.built_by.insert(p.clone(), drv_path.clone());
            }
            return Ok(missing.iter().filter_map(|p| self.visit_path(p)).collect());
        }
        let mut deps = Vec::new();
        let mut input_roots: BTreeSet<StorePath> = BTreeSet::new();
        for (input, names) in &drv.input_drvs {
            for i in self.visit(input, Some(names), false)? {
                if !deps.contains(&i) {
                    deps.push(i);
                }
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
        for src in drv.input_srcs.iter().filter(|s| !srcs_valid.contains(*s)) {
            // A source missing here may be in a cache.
            self.ask(vec![src.clone()])?;
            match self.fetchable.get(src) {
                Some(true) => deps.extend(self.visit_path(src)),
                _ => {
                    return Err(PlanError::InputNotValid {
                        drv: self.store.print(drv_path),
                        input: self.store.print(src),
                    })
                }
            }
        }
        input_roots.extend(drv.input_srcs.iter().cloned());
        let job = Job {
            drv_path: drv_path.clone(),
            drv: drv.clone(),
            outputs: outs.clone(),
            input_roots,
            mode,
            limits: Default::default(),
        };
        Ok(vec![self.push(Work::Build(Arc::new(job)), deps)])
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
    plan_with(store, wanted, &[], times, mode, None)
}

/// Like [`plan_builds`], fetching from `subst` what can be fetched instead of building it.
/// `paths` are store paths wanted as they are (not derivations): those not valid are
/// fetched, or the plan fails naming them.
pub fn plan_with(
    store: &LocalStore,
    wanted: &[Wanted],
    paths: &[StorePath],
    times: &BuildTimes,
    mode: BuildMode,
    subst: Option<Substitutes<'_>>,
) -> Result<Plan, PlanError> {
    let mut p = Planner {
        store,
        subst,
        known: HashMap::new(),
        fetchable: HashMap::new(),
        mode,
        index: HashMap::new(),
        nodes: Vec::new(),
        drvs: HashMap::new(),
        built_by: HashMap::new(),
    };
    let valid = store.valid_among(paths.iter())?;
    let missing: Vec<StorePath> = paths
        .iter()
        .filter(|p| !valid.contains(*p))
        .cloned()
        .collect();
    p.ask(missing.clone())?;
    for m in &missing {
        if !p.fetchable.get(m).copied().unwrap_or(false) {
            return Err(PlanError::PathNotValid {
                path: store.print(m),
                substituters: p.subst.is_some(),
            });
        }
        p.visit_path(m);
    }
    p.discover(wanted)?;
    for (drv, outs) in wanted {
        p.visit(drv, outs.as_ref(), true)?;
    }
    let built_by = std::mem::take(&mut p.built_by);
    let mut nodes = p.nodes;
    // Nodes come after their deps, so dependents come later: fill priorities backwards.
    for i in (0..nodes.len()).rev() {
        let tail = nodes[i]
            .dependents
            .iter()
            .map(|&d| nodes[d].priority)
            .fold(0.0, f64::max);
        let own = match &nodes[i].work {
            Work::Build(j) => times
                .get(ferrix_format::derivation::drv_name(&j.drv_path))
                .unwrap_or(DEFAULT_ESTIMATE),
            Work::Fetch(_) => FETCH_ESTIMATE,
        };
        nodes[i].priority = own + tail;
    }
    Ok(Plan {
        store_dir: store.store_dir().clone(),
        nodes,
        built_by,
    })
}

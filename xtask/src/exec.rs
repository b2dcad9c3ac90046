//! Running a plan: resolve each node's inputs, compute its key, reuse the
//! stored outputs on a hit, otherwise run the step in a scratch directory
//! and record its outputs. Independent nodes run in parallel, up to `jobs`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::plan::{InputRef, Node, Plan};
use crate::steps::{KeyComponents, StepContext};
use crate::store::remote::{Pulled, Remote};
use crate::store::{ActionRecord, Digest, Output, Store};

/// What became of one node.
#[derive(Debug, Clone)]
pub struct NodeResult {
    pub key: Digest,
    pub components: KeyComponents,
    pub outputs: BTreeMap<String, Output>,
    pub cached: bool,
    pub elapsed: Duration,
}

pub struct Executor<'a> {
    pub store: &'a Store,
    pub jobs: usize,
    pub log_dir: PathBuf,
    pub quiet: bool,
    /// A shared cache asked on a local miss and given what is built here.
    pub remote: Option<&'a Remote>,
}

/// How a node stands before anything runs (for `plan`).
pub enum Status {
    Hit(Digest),
    Miss(Digest, KeyComponents),
    /// Waits on nodes whose outputs are not known yet.
    Pending,
}

impl Executor<'_> {
    /// Key components of `node` once its inputs are known.
    pub fn components(
        &self,
        node: &Node,
        results: &[Option<NodeResult>],
    ) -> Result<Option<KeyComponents>> {
        let Some(inputs) = resolve(node, results) else {
            return Ok(None);
        };
        KeyComponents::of(node.step.as_ref(), &inputs).map(Some)
    }

    /// Hit/miss for every node without running anything; nodes after a miss
    /// are pending.
    pub fn status(&self, plan: &Plan) -> Result<Vec<Status>> {
        let mut results: Vec<Option<NodeResult>> = vec![None; plan.nodes.len()];
        let mut statuses = Vec::new();
        for (i, node) in plan.nodes.iter().enumerate() {
            let Some(components) = self.components(node, &results)? else {
                statuses.push(Status::Pending);
                continue;
            };
            let key = components.key();
            match self.store.action(&key)? {
                Some(record) => {
                    results[i] = Some(NodeResult {
                        key,
                        components,
                        outputs: record.outputs,
                        cached: true,
                        elapsed: Duration::ZERO,
                    });
                    statuses.push(Status::Hit(key));
                }
                None => statuses.push(Status::Miss(key, components)),
            }
        }
        Ok(statuses)
    }

    /// Runs every node, in dependency order, `jobs` at a time.
    pub fn run(&self, plan: &Plan) -> Result<Vec<NodeResult>> {
        let n = plan.nodes.len();
        let mut results: Vec<Option<NodeResult>> = vec![None; n];
        let mut started = vec![false; n];
        let mut running = 0usize;
        let (tx, rx) = mpsc::channel::<(usize, Result<NodeResult>)>();
        let mut batches = Batches::new(plan, self.quiet);
        // Set when a step fails: steps already started but still waiting
        // for a key lock then stop instead of building (and, with the same
        // key, overwriting the failed step's log).
        let failed = std::sync::atomic::AtomicBool::new(false);
        let failed = &failed;
        std::thread::scope(|scope| -> Result<()> {
            loop {
                for (i, node) in plan.nodes.iter().enumerate() {
                    if crate::tools::interrupt::interrupted() {
                        break;
                    }
                    if running >= self.jobs.max(1) || started[i] {
                        continue;
                    }
                    let Some(components) = self.components(node, &results)? else {
                        continue;
                    };
                    let inputs = resolve(node, &results).expect("inputs known when components are");
                    started[i] = true;
                    running += 1;
                    let tx = tx.clone();
                    scope.spawn(move || {
                        let r = self.run_node(node, components, inputs, failed);
                        if r.is_err() {
                            failed.store(true, std::sync::atomic::Ordering::SeqCst);
                        }
                        let _ = tx.send((i, r));
                    });
                }
                if running == 0 {
                    if crate::tools::interrupt::interrupted() {
                        return Err(crate::tools::interrupt::Interrupted.into());
                    }
                    break;
                }
                let (i, r) = rx.recv().expect("a running step reports back");
                running -= 1;
                let r = r?;
                batches.finished(plan.nodes[i].step.batch(), r.cached);
                let components = serde_json::to_value(&r.components)?;
                self.store
                    .put_last(&plan.nodes[i].step.identity(), &components)?;
                results[i] = Some(r);
            }
            Ok(())
        })?;
        results
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                r.with_context(|| format!("step {} never became ready", plan.nodes[i].step.label()))
            })
            .collect()
    }

    fn run_node(
        &self,
        node: &Node,
        components: KeyComponents,
        inputs: BTreeMap<String, Output>,
        failed: &std::sync::atomic::AtomicBool,
    ) -> Result<NodeResult> {
        let label = node.step.label();
        let key = components.key();
        let start = Instant::now();
        let hit = |record: ActionRecord| NodeResult {
            key,
            components: components.clone(),
            outputs: record.outputs,
            cached: true,
            elapsed: start.elapsed(),
        };
        if let Some(record) = self.store.action(&key)? {
            return Ok(hit(record));
        }
        if self.store.read_only() {
            bail!(
                "step `{label}` must run, but the cache {} is on a read-only file system: \
                 only what it holds can be used (give a writable --cache to build)",
                self.store.root().display()
            );
        }
        // Another process may be building the same key: wait for it, then look again.
        let _lock = self.store.lock_key(&key)?;
        if let Some(record) = self.store.action(&key)? {
            return Ok(hit(record));
        }
        if failed.load(std::sync::atomic::Ordering::SeqCst) {
            bail!("`{label}` not started: another step failed");
        }
        let lines = !self.quiet && node.step.batch().is_none();
        if let Some(remote) = self.remote.filter(|r| r.up()) {
            match remote.pull(&key, self.store) {
                Ok(Pulled::Hit(record)) => {
                    if lines {
                        eprintln!("    remote {label} [{}]", key.short());
                    }
                    return Ok(hit(record));
                }
                Ok(Pulled::Broken(why)) => eprintln!("warning: {why}; building it here"),
                Ok(Pulled::Miss) => {}
                Err(e) => remote.give_up(&e),
            }
        }
        if lines {
            eprintln!("   running {label} [{}]", key.short());
        }
        let scratch = self.store.scratch(node.step.kind())?;
        let ctx = StepContext::new(self.store, inputs, self.log_dir.clone(), key.short());
        let outputs = ctx
            .run_step(node.step.as_ref(), scratch.path())
            .with_context(|| format!("step `{label}` failed"))?;
        let record = ActionRecord {
            key,
            step: label.clone(),
            components: serde_json::to_value(&components)?,
            outputs: outputs.clone(),
        };
        self.store.put_action(&key, &record)?;
        if let Some(remote) = self.remote.filter(|r| r.up()) {
            // The build succeeded here whatever the remote says: a failed
            // upload is a warning, and the next build offers it again.
            if let Err(e) = remote.push(&key, &record, self.store) {
                remote.give_up(&e.context(format!("uploading {label}")));
            }
        }
        let elapsed = start.elapsed();
        if lines {
            eprintln!("      done {label} in {:.1}s", elapsed.as_secs_f64());
        }
        Ok(NodeResult {
            key,
            components,
            outputs,
            cached: false,
            elapsed,
        })
    }
}

/// One counter per batch of steps (`Step::batch`): a progress bar on a
/// terminal, and one summary line when the batch is complete.
struct Batches {
    quiet: bool,
    batches: BTreeMap<&'static str, Batch>,
}

struct Batch {
    total: usize,
    done: usize,
    ran: usize,
    start: Instant,
    bar: indicatif::ProgressBar,
}

impl Batches {
    fn new(plan: &Plan, quiet: bool) -> Batches {
        use std::io::IsTerminal;
        let mut batches: BTreeMap<&'static str, Batch> = BTreeMap::new();
        for name in plan.nodes.iter().filter_map(|n| n.step.batch()) {
            batches
                .entry(name)
                .or_insert_with(|| Batch {
                    total: 0,
                    done: 0,
                    ran: 0,
                    start: Instant::now(),
                    bar: indicatif::ProgressBar::hidden(),
                })
                .total += 1;
        }
        let show = !quiet && std::io::stderr().is_terminal();
        for (name, b) in batches.iter_mut().filter(|_| show) {
            b.bar = indicatif::ProgressBar::new(b.total as u64);
            let template = "{msg} {wide_bar} {pos}/{len} {elapsed}";
            if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
                b.bar.set_style(style);
            }
            b.bar.set_message(*name);
        }
        Batches { quiet, batches }
    }

    fn finished(&mut self, batch: Option<&'static str>, cached: bool) {
        let Some(b) = batch.and_then(|name| self.batches.get_mut(name)) else {
            return;
        };
        b.done += 1;
        b.ran += usize::from(!cached);
        b.bar.inc(1);
        if b.done == b.total {
            b.bar.finish_and_clear();
            if !self.quiet && b.ran > 0 {
                eprintln!(
                    "      done {}: {} ({} run, {} cached) in {:.1}s",
                    batch.unwrap_or_default(),
                    b.total,
                    b.ran,
                    b.total - b.ran,
                    b.start.elapsed().as_secs_f64()
                );
            }
        }
    }
}

/// The node's inputs, if every node it depends on has finished.
fn resolve(node: &Node, results: &[Option<NodeResult>]) -> Option<BTreeMap<String, Output>> {
    node.inputs
        .iter()
        .map(|(name, r)| {
            let out = match r {
                InputRef::Value(o) => *o,
                InputRef::Node { node, output } => *results[*node].as_ref()?.outputs.get(output)?,
            };
            Some((name.clone(), out))
        })
        .collect()
}

//! `plan`: every step of the targets, cached or to run, and why it runs.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use super::session::{executor, session, Session};
use super::Settings;
use crate::exec::Status;
use crate::plan::explain::{self, Reason};
use crate::plan::Plan;

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Recipe names or `<recipe>/<file>` artifacts, as for `build`.
    #[arg(required = true)]
    pub targets: Vec<String>,
    /// For every step that will run, say why: what changed since its last
    /// build (an input file, a parameter, a tool version), or "never built".
    #[arg(long)]
    pub explain: bool,
    /// Print the plan as JSON: one object per step, with `why` (the line)
    /// and `reasons` (the same as data, tagged by `reason`).
    #[arg(long)]
    pub json: bool,
}

/// One step of a plan as `plan` shows it.
#[derive(Debug, serde::Serialize)]
pub struct PlanLine {
    pub step: String,
    /// `hit`, `miss`, or `pending` (its key waits on steps that will run).
    pub status: &'static str,
    pub key: Option<String>,
    /// Why a step that is not a hit will run, as one line.
    pub why: Option<String>,
    /// The same as data, one per changed key component.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<Reason>,
}

pub(super) fn plan_lines(s: &Settings, sess: &Session) -> Result<Vec<PlanLine>> {
    let statuses = executor(s, &sess.store, sess.executor_jobs).status(&sess.plan)?;
    let lines = sess
        .plan
        .nodes
        .iter()
        .zip(&statuses)
        .enumerate()
        .map(|(i, (node, status))| {
            let (status, key, reasons) = match status {
                Status::Hit(k) => ("hit", Some(k.hex()), Vec::new()),
                Status::Miss(k, components) => {
                    let identity = node.step.identity();
                    let reasons = explain::explain(&sess.store, &identity, components);
                    ("miss", Some(k.hex()), reasons)
                }
                Status::Pending => ("pending", None, vec![waits_on(&sess.plan, &statuses, i)]),
            };
            PlanLine {
                step: node.step.label(),
                status,
                key,
                why: (!reasons.is_empty()).then(|| explain::line(&reasons)),
                reasons,
            }
        });
    Ok(lines.collect())
}

pub fn plan(s: &Settings, a: &PlanArgs) -> Result<ExitCode> {
    let sess = session(s, &a.targets)?;
    let lines = plan_lines(s, &sess)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&lines)?);
        return Ok(ExitCode::SUCCESS);
    }
    for line in &lines {
        let word = if line.status == "hit" { "hit " } else { "miss" };
        let key = line
            .key
            .as_deref()
            .map_or("(after inputs)".to_string(), |k| k[..12].to_string());
        println!("{word}  {key:<14}  {}", line.step);
        if let (true, Some(why)) = (a.explain, &line.why) {
            println!("      why: {why}");
        }
    }
    let hits = lines.iter().filter(|l| l.status == "hit").count();
    println!(
        "{} steps: {hits} cached, {} to run",
        lines.len(),
        lines.len() - hits
    );
    Ok(ExitCode::SUCCESS)
}

/// Why a step's key is not known yet: the steps it waits for.
fn waits_on(plan: &Plan, statuses: &[Status], i: usize) -> Reason {
    let steps: Vec<String> = plan.nodes[i]
        .inputs
        .values()
        .filter_map(|r| match r {
            crate::plan::InputRef::Node { node, .. }
                if !matches!(statuses[*node], Status::Hit(_)) =>
            {
                Some(plan.nodes[*node].step.label())
            }
            _ => None,
        })
        .collect();
    Reason::AfterInputs { steps }
}

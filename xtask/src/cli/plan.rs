//! `plan`: every step of the targets, cached or to run, and why it runs.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use super::session::{executor, session, Session};
use super::Settings;
use crate::exec::Status;
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
    /// Print the plan as JSON (one object per step, with `why`).
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
    /// Why a step that is not a hit will run.
    pub why: Option<String>,
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
            let (status, key, why) = match status {
                Status::Hit(k) => ("hit", Some(k.hex()), None),
                Status::Miss(k, components) => {
                    let why = crate::plan::explain::explain(
                        &sess.store,
                        &node.step.identity(),
                        components,
                    );
                    ("miss", Some(k.hex()), Some(why))
                }
                Status::Pending => ("pending", None, Some(waits_on(&sess.plan, &statuses, i))),
            };
            PlanLine {
                step: node.step.label(),
                status,
                key,
                why,
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
fn waits_on(plan: &Plan, statuses: &[Status], i: usize) -> String {
    let upstream: Vec<String> = plan.nodes[i]
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
    format!(
        "its inputs come from steps that will run first: {}",
        upstream.join(", ")
    )
}

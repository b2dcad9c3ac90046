//! Signing in the plan: an EFI file whose kind the recipe's `[signing] uefi` names gets an
//! Authenticode `Sign` node over its unsigned output when the operator gave a key, and
//! everything that carries the file (the artifact, an ISO's ESP) takes the signed one. An
//! artifact whose kind `[signing] imgverify` names gets a detached `Sign` node and a
//! `<file>.sig` artifact beside it. Without a key files stay unsigned and `Plan::unsigned` says
//! which recipe wanted what.

use std::collections::BTreeMap;

use anyhow::{Context, Result};

use super::{ArtifactSpec, Builder, InputRef};
use crate::recipe::{EfiKind, Recipe};
use crate::steps::sign::{Form, Sign, SIG_SUFFIX, UNSIGNED};

/// Where an artifact's final bytes come from: a node's output, and for a signed file the facts the
/// manifest records about its signature.
pub(super) struct Built {
    pub node: usize,
    pub output: String,
    pub facts: Option<serde_json::Value>,
}

impl Built {
    /// A node's output as it is: nothing to sign.
    pub(super) fn plain(node: usize, output: impl Into<String>) -> Built {
        Built {
            node,
            output: output.into(),
            facts: None,
        }
    }

    pub(super) fn input(&self) -> InputRef {
        InputRef::Node {
            node: self.node,
            output: self.output.clone(),
        }
    }
}

impl Builder<'_> {
    /// Output `output` of `node`, the EFI file `name` of kind `kind`: signed when the recipe
    /// asks for it and a key is given.
    pub(super) fn efi(
        &mut self,
        recipe: &Recipe,
        kind: EfiKind,
        name: &str,
        node: usize,
        output: impl Into<String>,
    ) -> Built {
        let output = output.into();
        let plain = |output| Built {
            node,
            output,
            facts: None,
        };
        if !recipe.signing.uefi.contains(&kind) {
            return plain(output);
        }
        let Some(key) = self.opts.signing.clone() else {
            self.unsigned(recipe, kind.to_string());
            return plain(output);
        };
        let certificate = key.fingerprint().to_string();
        let facts = serde_json::json!({
            "signature": { "format": "authenticode", "certificate_sha256": certificate }
        });
        let step = Sign {
            name: name.to_string(),
            certificate,
            form: Form::Authenticode,
            key,
        };
        let inputs = BTreeMap::from([(UNSIGNED.into(), InputRef::Node { node, output })]);
        Built {
            node: self.push(step, inputs),
            output: Form::Authenticode.output().into(),
            facts: Some(facts),
        }
    }

    /// Records that `recipe` asks to sign `what` and no key is given.
    fn unsigned(&mut self, recipe: &Recipe, what: String) {
        let wanted = (recipe.file.clone(), what);
        if !self.plan.unsigned.contains(&wanted) {
            self.plan.unsigned.push(wanted);
        }
    }

    /// Before `recipe` is planned: a recipe whose artifacts get `.sig` files needs a
    /// code-signing certificate, or iPXE would refuse every signature.
    pub(super) fn check_signing_key(&self, recipe: &Recipe) -> Result<()> {
        let Some(key) = &self.opts.signing else {
            return Ok(());
        };
        if !recipe.signing.detached_kinds().is_empty() {
            key.check_code_signing()
                .with_context(|| format!("{}: [signing] imgverify", recipe.file.display()))?;
        }
        Ok(())
    }

    /// A `<file>.sig` beside every artifact of `recipe` (those from index `first` on) whose
    /// kind `[signing] imgverify` names.
    pub(super) fn add_detached_signatures(&mut self, recipe: &Recipe, first: usize) {
        let Some(key) = self.opts.signing.clone() else {
            for kind in &recipe.signing.imgverify {
                self.unsigned(recipe, format!("imgverify {kind}"));
            }
            return;
        };
        let kinds = recipe.signing.detached_kinds();
        let signed: Vec<ArtifactSpec> = self.plan.artifacts[first..]
            .iter()
            .filter(|a| a.recipe == recipe.file && kinds.contains(&a.kind))
            .cloned()
            .collect();
        for a in signed {
            let certificate = key.fingerprint().to_string();
            let facts = serde_json::json!({
                "signature": { "format": "cms", "of": a.name, "certificate_sha256": certificate }
            });
            let step = Sign {
                name: a.name.clone(),
                certificate,
                form: Form::Detached,
                key: key.clone(),
            };
            let input = InputRef::Node {
                node: a.node,
                output: a.output.clone(),
            };
            let node = self.push(step, BTreeMap::from([(UNSIGNED.into(), input)]));
            self.plan.artifacts.push(ArtifactSpec {
                name: format!("{}{SIG_SUFFIX}", a.name),
                kind: "signature",
                node,
                output: Form::Detached.output().into(),
                details: None,
                facts: Some(facts),
                ..a
            });
        }
    }
}

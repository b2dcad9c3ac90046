//! Signing in the plan: an EFI file whose kind the recipe's `[signing] uefi` names gets a
//! `SignEfi` node over its unsigned output when the operator gave a key, and everything that
//! carries the file (the artifact, an ISO's ESP) takes the signed one. Without a key the file
//! stays unsigned and `Plan::unsigned` says which recipe wanted what.

use std::collections::BTreeMap;

use super::{Builder, InputRef};
use crate::recipe::{EfiKind, Recipe};
use crate::steps::sign::{SignEfi, SIGNED, UNSIGNED};
use crate::steps::Slot;

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
            let wanted = (recipe.file.clone(), kind);
            if !self.plan.unsigned.contains(&wanted) {
                self.plan.unsigned.push(wanted);
            }
            return plain(output);
        };
        let certificate = key.fingerprint().to_string();
        let facts = serde_json::json!({
            "signature": { "format": "authenticode", "certificate_sha256": certificate }
        });
        let step = SignEfi {
            name: name.to_string(),
            certificate,
            key,
        };
        let inputs = BTreeMap::from([(UNSIGNED.into(), InputRef::Node { node, output })]);
        Built {
            node: self.push(step, inputs),
            output: Slot::into(SIGNED),
            facts: Some(facts),
        }
    }
}

//! The script step: a text file rendered at plan time (so that template
//! errors point into the template before anything runs), stored as an
//! artifact. The text is the step's only parameter.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use super::{Slot, Step, StepContext};
use crate::store::Output;

/// Output: the script's text.
pub const FILE: Slot = Slot("file");

#[derive(Debug, Clone, Serialize)]
pub struct WriteScript {
    #[serde(skip)]
    pub name: String,
    pub text: String,
}

impl Step for WriteScript {
    fn kind(&self) -> &'static str {
        "script"
    }
    fn version(&self) -> u32 {
        1
    }
    fn label(&self) -> String {
        format!("script {}", self.name)
    }

    fn run(&self, ctx: &StepContext, _scratch: &Path) -> Result<BTreeMap<String, Output>> {
        let digest = ctx.store.put_bytes(self.text.as_bytes())?;
        Ok(BTreeMap::from([(
            FILE.into(),
            Output::File {
                digest,
                size: self.text.len() as u64,
            },
        )]))
    }
}

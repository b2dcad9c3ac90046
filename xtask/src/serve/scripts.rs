//! The iPXE scripts `serve` hands out per MAC: the `[ipxe]` recipe's inventory hosts' scripts
//! (each with its static identity) and the recipe's own script for other machines, loaded again
//! when a recipe, the inventory or the script template changes on disk. A change that does not
//! load is logged and the last good scripts stay in use.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use anyhow::Result;

use crate::recipe::hosts::normal_mac;
use crate::recipe::Recipes;

/// Loads the recipes as the command line says (`--recipes`, `--var`).
pub type Loader = Box<dyn Fn() -> Result<Recipes> + Send + Sync>;

/// One machine's answer.
pub struct Script {
    /// The inventory host, or `None` for the default script.
    pub host: Option<String>,
    pub text: String,
}

/// Files whose change means loading again: path → (modified, length).
type Stamp = BTreeMap<PathBuf, (Option<SystemTime>, u64)>;

struct Loaded {
    /// The script template and the inventory (either may live outside the recipes directory).
    watched: Vec<PathBuf>,
    stamp: Stamp,
    default: String,
    /// MAC → (hostname, script).
    by_mac: BTreeMap<String, (String, String)>,
}

pub struct Scripts {
    recipe: String,
    recipes_dir: PathBuf,
    load: Loader,
    loaded: Mutex<Loaded>,
}

impl Scripts {
    /// Loads `recipe`'s scripts; an error here (a recipe that does not load, no `[ipxe]`) stops
    /// `serve` before it listens.
    pub fn new(recipe: &str, recipes_dir: PathBuf, load: Loader) -> Result<Scripts> {
        let loaded = load_scripts(recipe, &recipes_dir, &load)?;
        Ok(Scripts {
            recipe: recipe.to_string(),
            recipes_dir,
            load,
            loaded: Mutex::new(loaded),
        })
    }

    /// How many inventory hosts have a MAC.
    pub fn hosts(&self) -> usize {
        let loaded = self.lock();
        let hosts: std::collections::BTreeSet<&String> =
            loaded.by_mac.values().map(|(h, _)| h).collect();
        hosts.len()
    }

    /// The script for `mac` (any form [`normal_mac`] reads; `None`: the default), after
    /// loading the recipes again if their files changed.
    pub fn for_mac(&self, mac: Option<&str>) -> Script {
        let mut loaded = self.lock();
        let stamp = stamp(&self.recipes_dir, &loaded.watched);
        if stamp != loaded.stamp {
            match load_scripts(&self.recipe, &self.recipes_dir, &self.load) {
                Ok(new) => {
                    eprintln!("serve: recipes changed; loaded {} again", self.recipe);
                    *loaded = new;
                }
                Err(e) => {
                    eprintln!(
                        "serve: recipes changed but do not load; keeping the last good scripts: {e:#}"
                    );
                    loaded.stamp = stamp;
                }
            }
        }
        match mac.and_then(normal_mac).and_then(|m| loaded.by_mac.get(&m)) {
            Some((host, text)) => Script {
                host: Some(host.clone()),
                text: text.clone(),
            },
            None => Script {
                host: None,
                text: loaded.default.clone(),
            },
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Loaded> {
        self.loaded.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn load_scripts(recipe: &str, dir: &std::path::Path, load: &Loader) -> Result<Loaded> {
    let recipes = load()?;
    let ipxe = recipes.ipxe(recipe)?;
    let mut by_mac = BTreeMap::new();
    for host in &ipxe.hosts {
        for mac in &host.macs {
            by_mac.insert(mac.clone(), (host.hostname.clone(), unpadded(&host.script)));
        }
    }
    let watched: Vec<PathBuf> = std::iter::once(ipxe.script_template.clone())
        .chain(ipxe.inventory.clone())
        .collect();
    Ok(Loaded {
        stamp: stamp(dir, &watched),
        watched,
        default: unpadded(&ipxe.script),
        by_mac,
    })
}

/// The recipes directory's files and the `watched` ones, as they are now.
fn stamp(dir: &std::path::Path, watched: &[PathBuf]) -> Stamp {
    let files = walkdir::WalkDir::new(dir).into_iter().filter_map(|e| {
        e.ok()
            .filter(|e| e.file_type().is_file())
            .map(|e| e.into_path())
    });
    watched
        .iter()
        .cloned()
        .chain(files)
        .map(|f| {
            let meta = fs_err::metadata(&f).ok();
            let modified = meta.as_ref().and_then(|m| m.modified().ok());
            let value = (modified, meta.map_or(0, |m| m.len()));
            (f, value)
        })
        .collect()
}

/// A script without the newlines that pad it to the embedded size.
fn unpadded(script: &str) -> String {
    format!("{}\n", script.trim_end_matches('\n'))
}

//! The shared libraries and dynamic loader that binaries need, found in unpacked package trees
//! the way glibc's ld.so would find them in an image made of those trees.
//!
//! Each binary is resolved as its own process, following `elf/dl-load.c` (`_dl_map_object`):
//! - `DT_NEEDED` names load breadth first, each name once per process; a name already loaded is
//!   not searched again, and that includes the loader's own soname, which `rtld.c` registers
//!   before mapping anything (on glibc's ports the loader's soname is its file name);
//! - a name with a `/` is a path; otherwise the object's own `DT_RUNPATH` (or `DT_RPATH`) is
//!   searched, `$ORIGIN` being the object's directory, then the system search path;
//! - a file of another ELF class or machine is skipped and the search goes on (`open_verify`);
//!   a file that is not ELF at all is an error, as it is for ld.so.
//!
//! The system search path is glibc's as Debian builds it (`ld.so --help`, "system search
//! path"): `lib/<triplet>`, `usr/lib/<triplet>`, `lib`, `usr/lib`. `lib64` is not on it: the
//! x86_64 loader never looks there for libraries (only `PT_INTERP` names `/lib64`), and an image
//! has no ld.so.cache to add it, so a library found only there would fail at run time.
//! Not modelled: `DT_RPATH` inherited by an executable's libraries (Debian Policy 10.2 keeps
//! RPATH out of packages), `$LIB` and `$PLATFORM` in run paths, glibc-hwcaps subdirectories.
//!
//! The trees are overlaid: at each candidate path the first tree that has it wins, as in an
//! image that merges them in that order. A path that must be exact (`PT_INTERP`, a run path)
//! and that only exists under `usr/` in the trees (usrmerge moved `/lib64` to `/usr/lib64`) gets
//! a symlink at the exact path.

use fs_err as fs;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};

use object::elf::{EM_386, EM_AARCH64, EM_X86_64};

use super::tree::{self, Link, TreeError};
use super::{read_info, ElfError, ElfInfo};

/// The top-level directories usrmerge moves under `/usr` (`convert-usrmerge`).
const USRMERGED: [&str; 6] = ["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// One entry an image needs for the binaries to run: a library, the loader, or a symlink on the
/// way to one of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Its path in the tree and in the image, without a leading slash
    /// (`usr/lib/x86_64-linux-gnu/libpci.so.3`).
    pub path: String,
    /// Which of the given trees it comes from.
    pub tree: usize,
    /// For a symlink, its target as the tree has it (`libpci.so.3.9.0`); `None` for a file. The
    /// link's target is in the closure too. A usrmerge link (see the module doc) is the one
    /// entry that is not in its tree: Kiln adds it.
    pub symlink_target: Option<String>,
    /// The binary (as given) or library (as searched) whose `DT_NEEDED` or `PT_INTERP` first
    /// brought this entry in.
    pub needed_by: String,
}

/// Why a closure could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum ClosureError {
    #[error(
        "{binary} needs {soname}, which none of the given packages provides \
         (searched: {searched}){}",
        skipped_note(.skipped)
    )]
    MissingLibrary {
        binary: String,
        soname: String,
        searched: String,
        skipped: Vec<String>,
    },
    #[error(
        "{binary} needs the dynamic loader {interpreter}, which none of the given packages \
         provides (searched: {searched}){}",
        skipped_note(.skipped)
    )]
    MissingInterpreter {
        binary: String,
        interpreter: String,
        searched: String,
        skipped: Vec<String>,
    },
    #[error("the binary {path} is not a file in {}", tree.display())]
    MissingBinary { tree: PathBuf, path: String },
    #[error("the binary {path} is said to be in tree {index}, but {count} trees were given")]
    NoSuchTree {
        path: String,
        index: usize,
        count: usize,
    },
    #[error("{path} in {} cannot be loaded: {source}", tree.display())]
    BadElf {
        tree: PathBuf,
        path: String,
        source: ElfError,
    },
    #[error(
        "{binary} is a {bits}-bit ELF file for machine {machine}; Kiln knows the library \
         directories of Debian's amd64, i386 and arm64 only"
    )]
    UnknownPlatform {
        binary: String,
        bits: u8,
        machine: u16,
    },
    #[error(transparent)]
    Tree(#[from] TreeError),
}

fn skipped_note(skipped: &[String]) -> String {
    match skipped.is_empty() {
        true => String::new(),
        false => format!(
            "; skipped as built for another machine: {}",
            skipped.join(", ")
        ),
    }
}

/// Every library `binaries` need, transitively, with their loaders and the symlinks on the way,
/// found in `trees` (unpacked package roots). `binaries` are (index into `trees`, path in that
/// tree). Sorted by path, each path once.
pub fn closure(trees: &[&Path], binaries: &[(usize, &str)]) -> Result<Vec<Resolved>, ClosureError> {
    let mut search = Search {
        trees,
        entries: BTreeMap::new(),
        infos: HashMap::new(),
    };
    for &(tree, binary) in binaries {
        search.binary(tree, binary)?;
    }
    Ok(search.entries.into_values().collect())
}

/// The class, machine and library directories of one binary's process.
struct Platform {
    class64: bool,
    machine: u16,
    system_dirs: Vec<String>,
}

impl Platform {
    fn of(binary: &str, info: &ElfInfo) -> Result<Platform, ClosureError> {
        let triplet = match (info.class64, info.machine) {
            (true, m) if m == EM_X86_64.0 => "x86_64-linux-gnu",
            (false, m) if m == EM_386.0 => "i386-linux-gnu",
            (true, m) if m == EM_AARCH64.0 => "aarch64-linux-gnu",
            (class64, machine) => {
                return Err(ClosureError::UnknownPlatform {
                    binary: binary.to_string(),
                    bits: if class64 { 64 } else { 32 },
                    machine,
                })
            }
        };
        Ok(Platform {
            class64: info.class64,
            machine: info.machine,
            system_dirs: vec![
                format!("lib/{triplet}"),
                format!("usr/lib/{triplet}"),
                "lib".to_string(),
                "usr/lib".to_string(),
            ],
        })
    }

    fn runs(&self, info: &ElfInfo) -> bool {
        info.class64 == self.class64 && info.machine == self.machine
    }
}

/// A loaded object whose `DT_NEEDED` still has to be searched.
struct Object {
    /// The binary as given, or the library as searched; what errors and `needed_by` name.
    name: String,
    /// `$ORIGIN`: the directory of the path it was loaded from.
    origin: String,
    info: ElfInfo,
}

/// A path ld.so would open, and where a tree may hold it.
struct Place {
    requested: String,
    lookup: String,
    /// The link the image needs when `lookup` is the usrmerge location of `requested`.
    alias: Option<Link>,
}

impl Place {
    fn plain(path: String) -> Place {
        Place {
            requested: path.clone(),
            lookup: path,
            alias: None,
        }
    }

    /// A path that must exist as written: there, or else under `usr/` with a link to it.
    fn exact(path: &str) -> Vec<Place> {
        let mut places = vec![Place::plain(path.to_string())];
        let top = path.split('/').next().unwrap_or_default();
        if USRMERGED.contains(&top) {
            let up = "../".repeat(path.matches('/').count());
            places.push(Place {
                requested: path.to_string(),
                lookup: format!("usr/{path}"),
                alias: Some(Link {
                    path: path.to_string(),
                    target: format!("{up}usr/{path}"),
                }),
            });
        }
        places
    }
}

/// A compatible ELF file found for a request.
struct Hit {
    tree: usize,
    requested: String,
    links: Vec<Link>,
    file: String,
    info: ElfInfo,
}

struct Search<'a> {
    trees: &'a [&'a Path],
    entries: BTreeMap<String, Resolved>,
    infos: HashMap<(usize, String), ElfInfo>,
}

impl Search<'_> {
    fn binary(&mut self, tree: usize, path: &str) -> Result<(), ClosureError> {
        let root = self.trees.get(tree).ok_or(ClosureError::NoSuchTree {
            path: path.to_string(),
            index: tree,
            count: self.trees.len(),
        })?;
        let found = tree::find_file(root, path)?.ok_or(ClosureError::MissingBinary {
            tree: root.to_path_buf(),
            path: path.to_string(),
        })?;
        let info = self.info(tree, &found.file)?;
        let platform = Platform::of(path, &info)?;
        // ld.so's $ORIGIN for the executable is its real path (`_dl_get_origin`).
        let binary = Object {
            name: path.to_string(),
            origin: parent(&found.file).to_string(),
            info: info.clone(),
        };
        self.libraries(&platform, binary)?;
        if let Some(interpreter) = &info.interpreter {
            let hit = self.interpreter(&platform, path, interpreter)?;
            self.record(&hit, path);
        }
        Ok(())
    }

    fn libraries(&mut self, platform: &Platform, binary: Object) -> Result<(), ClosureError> {
        let interpreter = binary.info.interpreter.as_deref().map(file_name);
        let mut loaded: HashSet<String> = interpreter.into_iter().map(str::to_string).collect();
        let mut queue = VecDeque::from([binary]);
        while let Some(object) = queue.pop_front() {
            for soname in &object.info.needed {
                if !loaded.insert(soname.clone()) {
                    continue;
                }
                let hit = self.library(platform, &object, soname)?;
                self.record(&hit, &object.name);
                queue.push_back(Object {
                    origin: parent(&hit.requested).to_string(),
                    name: hit.requested,
                    info: hit.info,
                });
            }
        }
        Ok(())
    }

    fn library(
        &mut self,
        platform: &Platform,
        object: &Object,
        soname: &str,
    ) -> Result<Hit, ClosureError> {
        // dl-load.c: a name with a slash is a path, searched nowhere else.
        let (dirs, places) = match soname.contains('/') {
            true => {
                let path = soname.trim_start_matches('/');
                (vec![path.to_string()], Place::exact(path))
            }
            false => library_places(platform, object, soname),
        };
        let mut skipped = Vec::new();
        match self.search(platform, places, &mut skipped)? {
            Some(hit) => Ok(hit),
            None => Err(ClosureError::MissingLibrary {
                binary: object.name.clone(),
                soname: soname.to_string(),
                searched: self.searched(&dirs),
                skipped,
            }),
        }
    }

    fn interpreter(
        &mut self,
        platform: &Platform,
        binary: &str,
        interpreter: &str,
    ) -> Result<Hit, ClosureError> {
        let path = interpreter.trim_start_matches('/');
        let mut skipped = Vec::new();
        match self.search(platform, Place::exact(path), &mut skipped)? {
            Some(hit) => Ok(hit),
            None => Err(ClosureError::MissingInterpreter {
                binary: binary.to_string(),
                interpreter: interpreter.to_string(),
                searched: self.searched(&[path.to_string()]),
                skipped,
            }),
        }
    }

    /// The first file `platform` can load at one of `places`, each tried in every tree in turn;
    /// files for another machine go to `skipped`.
    fn search(
        &mut self,
        platform: &Platform,
        places: Vec<Place>,
        skipped: &mut Vec<String>,
    ) -> Result<Option<Hit>, ClosureError> {
        for place in places {
            for (tree, root) in self.trees.iter().enumerate() {
                let Some(found) = tree::find_file(root, &place.lookup)? else {
                    continue;
                };
                let info = self.info(tree, &found.file)?;
                if !platform.runs(&info) {
                    let bits = if info.class64 { 64 } else { 32 };
                    let (path, root) = (&place.lookup, root.display());
                    skipped.push(format!(
                        "{path} in {root} ({bits}-bit, machine {})",
                        info.machine
                    ));
                    continue;
                }
                let links = place.alias.into_iter().chain(found.links).collect();
                return Ok(Some(Hit {
                    tree,
                    requested: place.requested,
                    links,
                    file: found.file,
                    info,
                }));
            }
        }
        Ok(None)
    }

    fn info(&mut self, tree: usize, file: &str) -> Result<ElfInfo, ClosureError> {
        let key = (tree, file.to_string());
        if let Some(info) = self.infos.get(&key) {
            return Ok(info.clone());
        }
        let path = self.trees[tree].join(file);
        let bytes = fs::read(&path).map_err(TreeError::Io)?;
        let info = read_info(&bytes).map_err(|source| ClosureError::BadElf {
            tree: self.trees[tree].to_path_buf(),
            path: file.to_string(),
            source,
        })?;
        self.infos.insert(key, info.clone());
        Ok(info)
    }

    /// Adds a hit's links and file; a path already in the closure keeps its first source.
    fn record(&mut self, hit: &Hit, needed_by: &str) {
        let links = hit.links.iter().map(|l| (&l.path, Some(&l.target)));
        for (path, target) in links.chain([(&hit.file, None)]) {
            self.entries
                .entry(path.clone())
                .or_insert_with(|| Resolved {
                    path: path.clone(),
                    tree: hit.tree,
                    symlink_target: target.cloned(),
                    needed_by: needed_by.to_string(),
                });
        }
    }

    fn searched(&self, dirs: &[String]) -> String {
        let trees: Vec<String> = self.trees.iter().map(|t| t.display().to_string()).collect();
        format!("{} in {}", dirs.join(", "), trees.join(", "))
    }
}

/// Where ld.so looks for a soname: the object's run path, each entry as an exact path, then the
/// system search path. The directories come first, for an error to name.
fn library_places(platform: &Platform, object: &Object, soname: &str) -> (Vec<String>, Vec<Place>) {
    let runpath: Vec<String> = (object.info.runpath.iter())
        .filter_map(|entry| expand_origin(entry, &object.origin))
        .collect();
    let mut places: Vec<Place> = (runpath.iter())
        .flat_map(|dir| Place::exact(&join(dir, soname)))
        .collect();
    let system = platform.system_dirs.iter();
    places.extend(system.map(|dir| Place::plain(join(dir, soname))));
    let dirs = runpath
        .into_iter()
        .chain(platform.system_dirs.iter().cloned());
    (dirs.collect(), places)
}

/// A run-path entry as a directory in the tree, `$ORIGIN` (or `${ORIGIN}`) replaced by `origin`.
/// `None` for an entry ld.so would take relative to the working directory, or one with a token
/// Kiln does not expand (`$LIB`, `$PLATFORM`).
fn expand_origin(entry: &str, origin: &str) -> Option<String> {
    let origin = format!("/{origin}");
    let expanded = entry
        .replace("${ORIGIN}", &origin)
        .replace("$ORIGIN", &origin);
    if !expanded.starts_with('/') || expanded.contains('$') {
        return None;
    }
    Some(expanded.trim_start_matches('/').to_string())
}

fn join(dir: &str, name: &str) -> String {
    match dir.trim_end_matches('/') {
        "" => name.to_string(),
        dir => format!("{dir}/{name}"),
    }
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(dir, _)| dir)
}

fn file_name(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(_, name)| name)
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use fs_err::os::unix::fs::symlink;

    use object::elf::{DT_NEEDED, DT_RUNPATH};

    use super::*;
    use crate::elf::tests::tiny_elf;

    const LOADER: &str = "lib64/ld-linux-x86-64.so.2";
    const MULTIARCH: &str = "usr/lib/x86_64-linux-gnu";

    fn host_ls() -> ElfInfo {
        read_info(&fs::read("/usr/bin/ls").unwrap()).unwrap()
    }

    /// The host's copy of a library, found without `closure`, which it is an oracle for.
    fn host_library(soname: &str) -> PathBuf {
        ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"]
            .iter()
            .map(|dir| Path::new(dir).join(soname))
            .find(|path| path.is_file())
            .unwrap_or_else(|| panic!("{soname} is not on this host"))
    }

    /// What ls loads on this host, breadth first: each soname with the soname that first needs
    /// it (`None` for ls itself).
    fn host_sonames() -> Vec<(String, Option<String>)> {
        let mut seen = HashSet::from(["ld-linux-x86-64.so.2".to_string()]);
        let mut sonames = Vec::new();
        let mut queue = VecDeque::from([(None, host_ls())]);
        while let Some((by, info)) = queue.pop_front() {
            for soname in info.needed {
                if seen.insert(soname.clone()) {
                    sonames.push((soname.clone(), by.clone()));
                    let library = read_info(&fs::read(host_library(&soname)).unwrap()).unwrap();
                    queue.push_back((Some(soname), library));
                }
            }
        }
        sonames
    }

    fn put(root: &Path, path: &str, bytes: &[u8]) {
        let to = root.join(path);
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::write(to, bytes).unwrap();
    }

    fn link(root: &Path, path: &str, target: &str) {
        let at = root.join(path);
        fs::create_dir_all(at.parent().unwrap()).unwrap();
        symlink(target, at).unwrap();
    }

    /// A tree laid out as Debian 12 packages ship it: ls; each library as `<soname>.0.0` with its
    /// soname link in usr/lib/x86_64-linux-gnu; the loader in lib/x86_64-linux-gnu with libc6's
    /// absolute link from lib64.
    fn packaged_tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        put(root, "usr/bin/ls", &fs::read("/usr/bin/ls").unwrap());
        for (soname, _) in host_sonames() {
            let bytes = fs::read(host_library(&soname)).unwrap();
            put(root, &format!("{MULTIARCH}/{soname}.0.0"), &bytes);
            link(
                root,
                &format!("{MULTIARCH}/{soname}"),
                &format!("{soname}.0.0"),
            );
        }
        let loader = fs::read("/lib64/ld-linux-x86-64.so.2").unwrap();
        put(root, "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", &loader);
        link(root, LOADER, "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2");
        dir
    }

    fn ls_closure(root: &Path) -> Result<Vec<Resolved>, ClosureError> {
        closure(&[root], &[(0, "usr/bin/ls")])
    }

    fn entry(path: &str, target: Option<&str>, needed_by: &str) -> Resolved {
        Resolved {
            path: path.to_string(),
            tree: 0,
            symlink_target: target.map(str::to_string),
            needed_by: needed_by.to_string(),
        }
    }

    /// The closure as an image: each file copied from its tree, each link made.
    fn lay_out(trees: &[&Path], resolved: &[Resolved]) -> tempfile::TempDir {
        let image = tempfile::tempdir().unwrap();
        for r in resolved {
            match &r.symlink_target {
                Some(target) => link(image.path(), &r.path, target),
                None => put(
                    image.path(),
                    &r.path,
                    &fs::read(trees[r.tree].join(&r.path)).unwrap(),
                ),
            }
        }
        image
    }

    #[test]
    fn ls_on_the_host_root_finds_libc_and_the_loader() {
        let root = Path::new("/");
        let resolved = ls_closure(root).unwrap();
        assert!(
            resolved.iter().any(|r| r.path.ends_with("/libc.so.6")),
            "{resolved:#?}"
        );
        for r in &resolved {
            let path = root.join(&r.path);
            match &r.symlink_target {
                Some(target) => assert_eq!(fs::read_link(&path).unwrap(), Path::new(target)),
                None => assert!(fs::symlink_metadata(&path).unwrap().is_file(), "{r:?}"),
            }
        }
        let image = lay_out(&[root], &resolved);
        let loader = tree::find_file(image.path(), LOADER).unwrap();
        assert!(
            loader.is_some(),
            "{LOADER} does not resolve in {resolved:#?}"
        );
        assert!(resolved.windows(2).all(|w| w[0].path < w[1].path));
        assert_eq!(resolved, ls_closure(root).unwrap());
    }

    #[test]
    fn the_closure_laid_out_as_an_image_is_closed() {
        let root = Path::new("/");
        let resolved = ls_closure(root).unwrap();
        let image = lay_out(&[root], &resolved);
        put(
            image.path(),
            "usr/bin/ls",
            &fs::read("/usr/bin/ls").unwrap(),
        );
        assert_eq!(ls_closure(image.path()).unwrap(), resolved);
    }

    #[test]
    fn a_tree_with_only_the_binary_names_it_and_its_first_soname() {
        let dir = tempfile::tempdir().unwrap();
        put(dir.path(), "usr/bin/ls", &fs::read("/usr/bin/ls").unwrap());
        let err = ls_closure(dir.path()).unwrap_err();
        let first = &host_ls().needed[0];
        let want = format!(
            "usr/bin/ls needs {first}, which none of the given packages provides (searched: \
             lib/x86_64-linux-gnu, usr/lib/x86_64-linux-gnu, lib, usr/lib in {})",
            dir.path().display()
        );
        assert_eq!(err.to_string(), want);
    }

    #[test]
    fn packaged_soname_links_come_with_their_targets() {
        let dir = packaged_tree();
        let mut want = Vec::new();
        for (soname, by) in host_sonames() {
            let by = by.map_or("usr/bin/ls".to_string(), |lib| format!("{MULTIARCH}/{lib}"));
            let target = format!("{soname}.0.0");
            want.push(entry(&format!("{MULTIARCH}/{soname}"), Some(&target), &by));
            want.push(entry(&format!("{MULTIARCH}/{target}"), None, &by));
        }
        let loader = "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2";
        want.push(entry(LOADER, Some(&format!("/{loader}")), "usr/bin/ls"));
        want.push(entry(loader, None, "usr/bin/ls"));
        want.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(ls_closure(dir.path()).unwrap(), want);
    }

    #[test]
    fn a_library_needed_only_by_a_library_names_that_library() {
        let transitive: Vec<_> = host_sonames()
            .into_iter()
            .filter_map(|(soname, by)| Some((soname, by?)))
            .collect();
        let how = "a Debian 12 host, where ls loads libpcre2-8 through libselinux";
        if !crate::testing::have(
            "a library ls loads through another",
            !transitive.is_empty(),
            how,
        ) {
            return;
        }
        let dir = packaged_tree();
        let resolved = ls_closure(dir.path()).unwrap();
        for (soname, by) in transitive {
            let path = format!("{MULTIARCH}/{soname}");
            let r = resolved.iter().find(|r| r.path == path).unwrap();
            assert_eq!(r.needed_by, format!("{MULTIARCH}/{by}"));
        }
    }

    #[test]
    fn a_library_for_another_machine_is_skipped() {
        let dir = packaged_tree();
        let mut i386 = fs::read(host_library("libc.so.6")).unwrap();
        i386[18..20].copy_from_slice(&EM_386.0.to_le_bytes()); // e_machine
        put(dir.path(), "lib/x86_64-linux-gnu/libc.so.6", &i386);
        let resolved = ls_closure(dir.path()).unwrap();
        let paths: Vec<&str> = resolved.iter().map(|r| r.path.as_str()).collect();
        assert!(
            paths.contains(&"usr/lib/x86_64-linux-gnu/libc.so.6"),
            "{paths:?}"
        );
        assert!(
            !paths.contains(&"lib/x86_64-linux-gnu/libc.so.6"),
            "{paths:?}"
        );

        fs::remove_file(dir.path().join(MULTIARCH).join("libc.so.6")).unwrap();
        let err = ls_closure(dir.path()).unwrap_err().to_string();
        assert!(err.contains(" needs libc.so.6, which none"), "{err}");
        let skipped = format!(
            "; skipped as built for another machine: lib/x86_64-linux-gnu/libc.so.6 in {} \
             (64-bit, machine 3)",
            dir.path().display()
        );
        assert!(err.ends_with(&skipped), "{err}");
    }

    #[test]
    fn a_missing_loader_is_named_with_the_binary() {
        let dir = packaged_tree();
        fs::remove_file(dir.path().join(LOADER)).unwrap();
        let err = ls_closure(dir.path()).unwrap_err();
        let want = format!(
            "usr/bin/ls needs the dynamic loader /{LOADER}, which none of the given packages \
             provides (searched: {LOADER} in {})",
            dir.path().display()
        );
        assert_eq!(err.to_string(), want);
    }

    #[test]
    fn a_loader_only_under_usr_gets_a_link_at_its_exact_path() {
        let dir = packaged_tree();
        let root = dir.path();
        fs::remove_file(root.join(LOADER)).unwrap();
        let loader = "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2";
        fs::rename(root.join(loader), root.join("usr").join(loader)).unwrap();
        link(root, &format!("usr/{LOADER}"), &format!("../{loader}"));
        let resolved = ls_closure(root).unwrap();
        let want = [
            entry(LOADER, Some(&format!("../usr/{LOADER}")), "usr/bin/ls"),
            entry(&format!("usr/{loader}"), None, "usr/bin/ls"),
            entry(
                &format!("usr/{LOADER}"),
                Some(&format!("../{loader}")),
                "usr/bin/ls",
            ),
        ];
        for w in &want {
            assert!(resolved.contains(w), "{w:?} not in {resolved:#?}");
        }
        let image = lay_out(&[root], &resolved);
        assert!(tree::find_file(image.path(), LOADER).unwrap().is_some());
    }

    #[test]
    fn escaping_and_looping_links_are_errors() {
        let dir = packaged_tree();
        let libc = dir.path().join(MULTIARCH).join("libc.so.6");
        fs::remove_file(&libc).unwrap();
        symlink("../../../../../etc/passwd", &libc).unwrap();
        let err = ls_closure(dir.path()).unwrap_err();
        assert!(
            matches!(err, ClosureError::Tree(TreeError::LinkEscapes { .. })),
            "{err}"
        );
        fs::remove_file(&libc).unwrap();
        symlink("libc.so.6", &libc).unwrap();
        let err = ls_closure(dir.path()).unwrap_err();
        assert!(
            matches!(err, ClosureError::Tree(TreeError::Loop { .. })),
            "{err}"
        );
    }

    #[test]
    fn static_binaries_have_an_empty_closure() {
        let candidates = ["usr/sbin/ldconfig", "usr/bin/busybox"];
        let root = Path::new("/");
        let is_static = |path: &&&str| {
            let info = fs::read(root.join(path))
                .ok()
                .and_then(|b| read_info(&b).ok());
            info.is_some_and(|info| info.interpreter.is_none())
        };
        let binary = candidates.iter().find(is_static);
        let how = "a Debian host: glibc's ldconfig is static";
        if !crate::testing::have("a static binary", binary.is_some(), how) {
            return;
        }
        let binary = binary.unwrap();
        assert_eq!(closure(&[root], &[(0, binary)]).unwrap(), []);
    }

    #[test]
    fn run_paths_come_first_with_origin_expanded() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let runpath = "/nowhere:$ORIGIN/../lib";
        let tool = tiny_elf(None, &[(DT_NEEDED, "libfoo.so.1"), (DT_RUNPATH, runpath)]);
        put(root, "opt/tool/bin/tool", &tool);
        let foo = tiny_elf(None, &[(DT_NEEDED, "libbar.so.2")]);
        put(root, "opt/tool/lib/libfoo.so.1", &foo);
        put(
            root,
            &format!("{MULTIARCH}/libfoo.so.1"),
            &tiny_elf(None, &[]),
        );
        put(
            root,
            &format!("{MULTIARCH}/libbar.so.2"),
            &tiny_elf(None, &[]),
        );
        let resolved = closure(&[root], &[(0, "opt/tool/bin/tool")]).unwrap();
        let foo_as_searched = "opt/tool/bin/../lib/libfoo.so.1";
        let want = [
            entry("opt/tool/lib/libfoo.so.1", None, "opt/tool/bin/tool"),
            entry(&format!("{MULTIARCH}/libbar.so.2"), None, foo_as_searched),
        ];
        assert_eq!(resolved, want);
    }

    #[test]
    fn directories_are_searched_in_order_across_all_trees() {
        let trees: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let tool = tiny_elf(Some("/lib64/ld.so"), &[(DT_NEEDED, "libfoo.so.1")]);
        put(trees[0].path(), "usr/bin/tool", &tool);
        put(
            trees[1].path(),
            &format!("{MULTIARCH}/libfoo.so.1"),
            &tiny_elf(None, &[]),
        );
        put(
            trees[2].path(),
            "lib/x86_64-linux-gnu/libfoo.so.1",
            &tiny_elf(None, &[]),
        );
        put(trees[1].path(), "lib64/ld.so", &tiny_elf(None, &[]));
        put(trees[2].path(), "lib64/ld.so", &tiny_elf(None, &[]));
        let roots: Vec<&Path> = trees.iter().map(|t| t.path()).collect();
        let resolved = closure(&roots, &[(0, "usr/bin/tool")]).unwrap();
        let found: Vec<(&str, usize)> =
            resolved.iter().map(|r| (r.path.as_str(), r.tree)).collect();
        assert_eq!(
            found,
            [("lib/x86_64-linux-gnu/libfoo.so.1", 2), ("lib64/ld.so", 1)]
        );
    }

    #[test]
    fn origin_is_the_objects_directory() {
        let expand = |entry| expand_origin(entry, "usr/bin");
        assert_eq!(expand("$ORIGIN/../lib").as_deref(), Some("usr/bin/../lib"));
        assert_eq!(expand("${ORIGIN}").as_deref(), Some("usr/bin"));
        assert_eq!(expand("/opt/lib").as_deref(), Some("opt/lib"));
        assert_eq!(expand("lib"), None);
        assert_eq!(expand("/$LIB/x"), None);
    }
}

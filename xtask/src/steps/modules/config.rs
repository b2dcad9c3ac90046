//! modprobe.d snippets, parsed as kmod's `libkmod-config.c` does, but
//! strictly: a line kmod would skip with a warning is an error here, naming
//! `origin:line`, because a recipe's typo should not silently change the
//! closure. `install` and `remove` are rejected: Kiln cannot run them.
//!
//! The same parser reads depmod's `modules.softdep` and `modules.weakdep`,
//! which use the modprobe.d syntax.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{bail, Result};

use super::index::normalize;

/// `softdep <module-pattern> pre: a b post: c`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Softdep {
    /// An fnmatch pattern over module names, normalized (`-` → `_`).
    pub pattern: String,
    pub pre: Vec<String>,
    pub post: Vec<String>,
    /// The file it came from: kmod reads config files sorted by base name,
    /// and only the first softdep matching a module counts.
    pub origin: String,
}

/// `weakdep <module-pattern> a b` (kmod ≥ 33).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Weakdep {
    pub pattern: String,
    pub modules: Vec<String>,
    pub origin: String,
}

/// `alias <pattern> <module>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    pub pattern: String,
    pub module: String,
}

/// Everything a set of modprobe.d files says that matters for the closure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModprobeConfig {
    pub softdeps: Vec<Softdep>,
    pub weakdeps: Vec<Weakdep>,
    pub aliases: Vec<Alias>,
    /// Normalized module names.
    pub blacklist: BTreeSet<String>,
    /// `options <module> <text>`: parsed so that mistakes are caught, but they
    /// do not change which files are needed.
    pub options: Vec<(String, String)>,
}

impl ModprobeConfig {
    /// Appends another file's rules, as kmod does when it reads several.
    pub fn extend(&mut self, other: ModprobeConfig) {
        self.softdeps.extend(other.softdeps);
        self.weakdeps.extend(other.weakdeps);
        self.aliases.extend(other.aliases);
        self.blacklist.extend(other.blacklist);
        self.options.extend(other.options);
    }
}

/// Parses one modprobe.d file. `origin` names it in errors (`origin:line`).
pub fn parse_modprobe_d(text: &str, origin: &str) -> Result<ModprobeConfig> {
    let mut conf = ModprobeConfig::default();
    for (line_no, line) in logical_lines(text) {
        let at = format!("{origin}:{line_no}");
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some((&cmd, args)) = words.split_first() else {
            continue;
        };
        if cmd.starts_with('#') {
            continue;
        }
        parse_command(&mut conf, cmd, args, origin, &at)?;
    }
    Ok(conf)
}

fn parse_command(
    conf: &mut ModprobeConfig,
    cmd: &str,
    args: &[&str],
    origin: &str,
    at: &str,
) -> Result<()> {
    match (cmd, args) {
        ("alias", [pattern, module]) => conf.aliases.push(Alias {
            pattern: normalize(pattern),
            module: normalize(module),
        }),
        ("blacklist", [module]) => {
            conf.blacklist.insert(normalize(module));
        }
        ("options", [module, rest @ ..]) if !rest.is_empty() => {
            conf.options.push((normalize(module), rest.join(" ")));
        }
        ("softdep", [module, rest @ ..]) if !rest.is_empty() => {
            conf.softdeps.push(parse_softdep(module, rest, origin, at)?)
        }
        ("weakdep", [module, rest @ ..]) if !rest.is_empty() => conf.weakdeps.push(Weakdep {
            pattern: normalize(module),
            modules: rest.iter().map(|s| s.to_string()).collect(),
            origin: origin.to_owned(),
        }),
        ("install" | "remove", _) => bail!(
            "{at}: `{cmd}` commands are not supported: Kiln selects module files and cannot \
             run shell commands at build time; remove the line (or use softdep/alias instead)"
        ),
        ("include" | "config", _) => {
            bail!("{at}: `{cmd}` is deprecated and not read by kmod; remove the line")
        }
        ("alias" | "blacklist" | "options" | "softdep" | "weakdep", _) => {
            bail!(
                "{at}: `{cmd}` has the wrong number of arguments: {}",
                usage(cmd)
            )
        }
        _ => bail!(
            "{at}: unknown command `{cmd}` (expected alias, blacklist, options, softdep or weakdep)"
        ),
    }
    Ok(())
}

fn usage(cmd: &str) -> &'static str {
    match cmd {
        "alias" => "alias <pattern> <module>",
        "blacklist" => "blacklist <module>",
        "options" => "options <module> <option>...",
        "softdep" => "softdep <module> [pre: <module>...] [post: <module>...]",
        _ => "weakdep <module> <module>...",
    }
}

/// kmod's `kmod_config_add_softdep`: words before the first `pre:`/`post:`
/// are ignored (kernels ship `MODULE_SOFTDEP("gcm")` without a prefix, which
/// kmod drops); here that is allowed only in depmod's own file, since in a
/// recipe it is certainly a mistake.
fn parse_softdep(module: &str, words: &[&str], origin: &str, at: &str) -> Result<Softdep> {
    let mut dep = Softdep {
        pattern: normalize(module),
        pre: Vec::new(),
        post: Vec::new(),
        origin: origin.to_owned(),
    };
    let mut target: Option<&mut Vec<String>> = None;
    for &w in words {
        match w {
            "pre:" => target = Some(&mut dep.pre),
            "post:" => target = Some(&mut dep.post),
            _ => match target.as_mut() {
                Some(list) => list.push(w.to_owned()),
                None if is_depmod_file(origin) => {}
                None => bail!(
                    "{at}: softdep module `{w}` is not after `pre:` or `post:` \
                     (write `softdep {module} pre: {w}` or `post: {w}`)"
                ),
            },
        }
    }
    Ok(dep)
}

fn is_depmod_file(origin: &str) -> bool {
    matches!(base_name(origin), "modules.softdep" | "modules.weakdep")
}

/// The file name kmod sorts configuration files by.
pub fn base_name(origin: &str) -> &str {
    Path::new(origin)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(origin)
}

/// kmod's `freadline_wrapped`: a trailing backslash joins the next line.
/// Yields (number of the first physical line, text).
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let (start, mut acc) = pending.take().unwrap_or((i + 1, String::new()));
        match line.strip_suffix('\\') {
            Some(head) => {
                acc.push_str(head);
                pending = Some((start, acc));
            }
            None => {
                acc.push_str(line);
                out.push((start, acc));
            }
        }
    }
    out.extend(pending);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softdep_pre_and_post_lists_are_split() {
        let c = parse_modprobe_d("softdep virtio-net pre: a b post: c\n", "x.conf").unwrap();
        assert_eq!(c.softdeps[0].pattern, "virtio_net");
        assert_eq!(c.softdeps[0].pre, ["a", "b"]);
        assert_eq!(c.softdeps[0].post, ["c"]);
        assert_eq!(c.softdeps[0].origin, "x.conf");
    }

    #[test]
    fn blacklist_alias_and_options_are_normalized() {
        let text =
            "# comment\n\nblacklist pcspkr-x\nalias my-nic e1000e\noptions e1000e IntMode=1 x=2\n";
        let c = parse_modprobe_d(text, "x.conf").unwrap();
        assert!(c.blacklist.contains("pcspkr_x"));
        assert_eq!(
            c.aliases,
            [Alias {
                pattern: "my_nic".into(),
                module: "e1000e".into()
            }]
        );
        assert_eq!(c.options, [("e1000e".into(), "IntMode=1 x=2".into())]);
    }

    #[test]
    fn backslash_joins_continued_lines() {
        let c = parse_modprobe_d("softdep a pre: b \\\n c\nblacklist d\n", "x.conf").unwrap();
        assert_eq!(c.softdeps[0].pre, ["b", "c"]);
        assert!(c.blacklist.contains("d"));
    }

    #[test]
    fn install_line_is_rejected_naming_origin_and_line() {
        let err = parse_modprobe_d("blacklist a\ninstall foo /bin/true\n", "r/m.conf")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("r/m.conf:2: `install`"), "{err}");
    }

    #[test]
    fn remove_line_is_rejected_too() {
        let err = parse_modprobe_d("remove foo /bin/true\n", "m.conf").unwrap_err();
        assert!(err.to_string().starts_with("m.conf:1: `remove`"), "{err}");
    }

    #[test]
    fn unknown_command_and_missing_arguments_are_errors() {
        let err = parse_modprobe_d("blacklst a\n", "m.conf").unwrap_err();
        assert!(err
            .to_string()
            .contains("m.conf:1: unknown command `blacklst`"));
        let err = parse_modprobe_d("\nalias onlyone\n", "m.conf").unwrap_err();
        assert!(err
            .to_string()
            .contains("m.conf:2: `alias` has the wrong number"));
    }

    #[test]
    fn softdep_words_without_pre_or_post_are_errors_in_recipes_but_skipped_from_depmod() {
        let err = parse_modprobe_d("softdep cifs gcm\n", "m.conf").unwrap_err();
        assert!(err.to_string().contains("m.conf:1: softdep module `gcm`"));
        let c = parse_modprobe_d("softdep cifs gcm\n", "/x/modules.softdep").unwrap();
        assert!(c.softdeps[0].pre.is_empty() && c.softdeps[0].post.is_empty());
    }
}

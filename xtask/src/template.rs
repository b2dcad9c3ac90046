//! `{{name}}` templating. A variable must be declared in the recipe and have
//! a value; anything else is an error, never an empty string.
//!
//! Values come from `--var` (a CI job passing a branch name) and inventory
//! fields, and land in files that something parses: a shell sourcing
//! `/etc/kiln-release`, iPXE running a script, the kernel splitting its
//! command line. So every value must be one line of printable text, and
//! each `Syntax` refuses what would change the meaning of the file it lands
//! in (a `"` closing a shell string, a space starting a new iPXE token).
//! Refused, not escaped: escaping right needs the quoting at the very
//! spot, and an error naming the variable, the character and the template
//! line is easy to act on.
//!
//! A leaf: recipe loading renders scripts and checks templates with it, and
//! the initramfs step renders the templates inside its overlays.

use std::collections::BTreeMap;
use std::ops::Range;

/// Why a template could not be rendered, with the byte range in the template.
#[derive(Debug, PartialEq, Eq)]
pub struct TemplateError {
    pub span: Range<usize>,
    pub message: String,
}

/// Variables visible to a template: declared name → value (None = declared, unset).
pub type Vars = BTreeMap<String, Option<String>>;

/// What parses the rendered file, which decides what a value may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    /// Read as data: any one line of printable text.
    Text,
    /// Sourced by a POSIX shell (overlay templates such as
    /// `etc/kiln-release`, which `/init` sources): inside `"…"` no `"`, `$`,
    /// `` ` `` or `\`; inside `'…'` no `'`; unquoted only characters no
    /// shell treats specially.
    Shell,
    /// An iPXE script: iPXE splits a line into tokens at whitespace, a
    /// token `||`, `&&` or `;` ends a command, `#` starts a comment, and
    /// `${…}` expands a setting; so no whitespace, `$` or `#`.
    Ipxe,
    /// A kernel command line: split at whitespace, `"` quotes; neither.
    Cmdline,
}

impl Syntax {
    fn name(self) -> &'static str {
        match self {
            Syntax::Text => "a template",
            Syntax::Shell => "a shell-sourced template",
            Syntax::Ipxe => "an iPXE script",
            Syntax::Cmdline => "a kernel command line",
        }
    }

    /// The first character of `value` this syntax refuses at `before` (the
    /// template's text up to the placeholder), and why.
    fn refuses(self, before: &str, value: &str) -> Option<(char, &'static str)> {
        if let Some(c) = value.chars().find(|c| c.is_control()) {
            return Some((c, "a value must be one line of printable text"));
        }
        let refused = |c: char| match self {
            Syntax::Text => None,
            Syntax::Shell => match shell_quoting(before) {
                Quote::Double => matches!(c, '"' | '$' | '`' | '\\')
                    .then_some("inside double quotes it would end the string or expand"),
                Quote::Single => {
                    (c == '\'').then_some("inside single quotes it would end the string")
                }
                Quote::Comment => None,
                Quote::None => (!(c.is_ascii_alphanumeric() || "._:/@%+=,~^-".contains(c)))
                    .then_some("unquoted, the shell would treat it specially"),
            },
            Syntax::Ipxe => (c.is_whitespace() || c == '$' || c == '#').then_some(
                "iPXE would split the command there, expand a setting or start a comment",
            ),
            Syntax::Cmdline => (c.is_whitespace() || c == '"')
                .then_some("the kernel would split the argument there"),
        };
        value.chars().find_map(|c| refused(c).map(|why| (c, why)))
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Quote {
    None,
    Single,
    Double,
    /// After a `#` that starts a word: nothing there is run.
    Comment,
}

/// The shell quoting in force at the end of `text` (a template up to a
/// placeholder; earlier placeholders count as plain words). Strings may
/// span lines; a `#` starting a word outside quotes comments out the rest
/// of its line, quotes in it included.
fn shell_quoting(text: &str) -> Quote {
    let mut quote = Quote::None;
    let mut chars = text.chars();
    let mut word_start = true;
    while let Some(c) = chars.next() {
        quote = match (quote, c) {
            (Quote::None, '#') if word_start => Quote::Comment,
            (Quote::Comment, '\n') => Quote::None,
            (Quote::None, '\'') => Quote::Single,
            (Quote::None, '"') => Quote::Double,
            (Quote::Single, '\'') | (Quote::Double, '"') => Quote::None,
            (q @ (Quote::None | Quote::Double), '\\') => {
                chars.next();
                q
            }
            (q, _) => q,
        };
        word_start = quote == Quote::None && (c.is_whitespace() || ";&|()".contains(c));
    }
    quote
}

/// `template` with every `{{name}}` replaced by its value, each value
/// checked for `syntax`. The names in `composed` are values Kiln put
/// together itself (a whole kernel command line for a script's `kernel`
/// line), checked where they were made, and taken as they are.
pub fn render(template: &str, vars: &Vars, syntax: Syntax) -> Result<String, TemplateError> {
    render_with(template, vars, syntax, &[])
}

/// `render`, with `composed` values exempt from the syntax check.
pub fn render_with(
    template: &str,
    vars: &Vars,
    syntax: Syntax,
    composed: &[&str],
) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    let mut offset = 0;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let start = offset + open;
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or_else(|| TemplateError {
            span: start..start + 2,
            message: "`{{` is never closed with `}}`".into(),
        })?;
        let name = after[..close].trim();
        let span = start..start + 2 + close + 2;
        let value = lookup(name, vars, span.clone())?;
        if !composed.contains(&name) {
            if let Some((c, why)) = syntax.refuses(&template[..start], value) {
                return Err(TemplateError {
                    span,
                    message: format!(
                        "`{name}` is {value:?}, and {c:?} cannot go into {}: {why}",
                        syntax.name()
                    ),
                });
            }
        }
        out.push_str(value);
        let consumed = open + 2 + close + 2;
        rest = &rest[consumed..];
        offset += consumed;
    }
    out.push_str(rest);
    Ok(out)
}

/// The variable names a template refers to (well-formed `{{name}}` only).
pub fn referenced(template: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else { break };
        names.insert(after[..close].trim().to_string());
        rest = &after[close + 2..];
    }
    names
}

fn lookup<'a>(name: &str, vars: &'a Vars, span: Range<usize>) -> Result<&'a str, TemplateError> {
    match vars.get(name) {
        Some(Some(value)) => Ok(value),
        Some(None) => Err(TemplateError {
            span,
            message: format!(
                "variable `{name}` is declared but has no value: set it with `--var {name}=VALUE` or give it a default"
            ),
        }),
        None => {
            let hint = did_you_mean(name, vars.keys().map(String::as_str));
            Err(TemplateError {
                span,
                message: format!("unknown variable `{name}`: declare it under [variables]{hint}"),
            })
        }
    }
}

/// ` (did you mean `x`?)` for the valid name nearest `unknown`, or nothing:
/// the hint every "unknown …" message ends with.
pub fn did_you_mean<'a>(unknown: &str, valid: impl IntoIterator<Item = &'a str>) -> String {
    nearest(unknown, valid)
        .map(|n| format!(" (did you mean `{n}`?)"))
        .unwrap_or_default()
}

/// The valid name closest to `unknown`, if any is close enough to be a typo.
pub fn nearest<'a>(unknown: &str, valid: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    valid
        .into_iter()
        .map(|v| (strsim::damerau_levenshtein(unknown, v), v))
        .filter(|(d, v)| *d <= 2.max(v.len() / 3))
        .min()
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, Option<&str>)]) -> Vars {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
            .collect()
    }

    #[test]
    fn declared_variables_are_substituted() {
        let v = vars(&[("host", Some("mlab1")), ("site", Some("lga01"))]);
        assert_eq!(
            render("{{host}}.{{ site }}!", &v, Syntax::Text).unwrap(),
            "mlab1.lga01!"
        );
    }

    #[test]
    fn unknown_variable_is_an_error_with_its_span() {
        let v = vars(&[("hostname", Some("x"))]);
        let err = render("a {{hostnme}} b", &v, Syntax::Text).unwrap_err();
        assert_eq!(err.span, 2..13);
        assert!(
            err.message.contains("did you mean `hostname`"),
            "{}",
            err.message
        );
    }

    #[test]
    fn unset_variable_is_an_error_not_an_empty_string() {
        let v = vars(&[("ip", None)]);
        let err = render("ip={{ip}}", &v, Syntax::Text).unwrap_err();
        assert!(err.message.contains("--var ip=VALUE"), "{}", err.message);
    }

    #[test]
    fn referenced_lists_each_variable_once() {
        let names = referenced("{{a}} x {{ b }} {{a}} {{unclosed");
        assert_eq!(names.into_iter().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn unclosed_braces_are_an_error() {
        assert!(render("x {{oops", &Vars::new(), Syntax::Text).is_err());
    }

    #[test]
    fn each_syntax_refuses_what_would_change_its_file() {
        let refused = |template: &str, value: &str, syntax: Syntax| {
            let v = vars(&[("v", Some(value))]);
            render(template, &v, syntax).err().map(|e| e.message)
        };
        // Everywhere: one line of printable text.
        for syntax in [Syntax::Text, Syntax::Shell, Syntax::Ipxe, Syntax::Cmdline] {
            let err = refused("x={{v}}", "http://x\nshell", syntax).unwrap();
            assert!(err.contains("'\\n'") && err.contains("one line"), "{err}");
        }
        assert_eq!(refused("{{v}}", "a b \"c\" $d", Syntax::Text), None);
        // Shell: by the quoting at the placeholder.
        let release = "x\"; reboot -f; \"";
        let err = refused("KILN_RELEASE=\"{{v}}\"", release, Syntax::Shell).unwrap();
        assert!(
            err.contains("`v` is") && err.contains("'\"'") && err.contains("double quotes"),
            "{err}"
        );
        assert_eq!(
            refused("A=\"{{v}}\"", "rc 1; it's (ok)", Syntax::Shell),
            None
        );
        assert!(refused("A=\"{{v}}\"", "$(reboot)", Syntax::Shell).is_some());
        assert!(refused("A='{{v}}'", "it's", Syntax::Shell).is_some());
        assert_eq!(refused("A='{{v}}'", "$x \"y\"", Syntax::Shell), None);
        assert!(refused("A={{v}}", "a;b", Syntax::Shell).is_some());
        assert_eq!(refused("A={{v}}", "2026.11-rc1+x", Syntax::Shell), None);
        // A string spanning lines; a quote in a comment opens nothing.
        assert!(refused("A=\"x\ny\" B={{v}}", "a b", Syntax::Shell).is_some());
        assert_eq!(refused("A=\"x\ny {{v}}\"", "a b", Syntax::Shell), None);
        assert!(refused("# it's\nA={{v}}", "a;b", Syntax::Shell).is_some());
        assert_eq!(
            refused("A=1 # it's {{v}}\nB='{{v}}'", "a b", Syntax::Shell),
            None
        );
        // An escaped quote does not open a string.
        assert!(refused("A=\"\\\"\" B={{v}}", "a b", Syntax::Shell).is_some());
        // iPXE: one token, no expansion, no comment.
        assert!(refused("chain {{v}}", "http://x || shell", Syntax::Ipxe).is_some());
        assert!(refused("chain {{v}}", "${net0/mac}", Syntax::Ipxe).is_some());
        assert_eq!(
            refused("chain {{v}}/a", "http://x:8080/y?a=b&c=d", Syntax::Ipxe),
            None
        );
        // Kernel command line: one argument.
        assert!(refused("ip={{v}}", "1 init=/bin/sh", Syntax::Cmdline).is_some());
        assert!(refused("ip={{v}}", "\"", Syntax::Cmdline).is_some());
        // Values Kiln composed itself are taken as they are.
        let v = vars(&[("cmdline", Some("console=ttyS0 quiet"))]);
        assert!(render("kernel k {{cmdline}}", &v, Syntax::Ipxe).is_err());
        assert_eq!(
            render_with("kernel k {{cmdline}}", &v, Syntax::Ipxe, &["cmdline"]).unwrap(),
            "kernel k console=ttyS0 quiet"
        );
    }
}

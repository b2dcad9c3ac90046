//! `{{name}}` templating. A variable must be declared in the recipe and have
//! a value; anything else is an error, never an empty string.
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

pub fn render(template: &str, vars: &Vars) -> Result<String, TemplateError> {
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
        out.push_str(lookup(name, vars, span)?);
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
            let hint = nearest(name, vars.keys().map(String::as_str))
                .map(|n| format!(" (did you mean `{n}`?)"))
                .unwrap_or_default();
            Err(TemplateError {
                span,
                message: format!("unknown variable `{name}`: declare it under [variables]{hint}"),
            })
        }
    }
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
        assert_eq!(render("{{host}}.{{ site }}!", &v).unwrap(), "mlab1.lga01!");
    }

    #[test]
    fn unknown_variable_is_an_error_with_its_span() {
        let v = vars(&[("hostname", Some("x"))]);
        let err = render("a {{hostnme}} b", &v).unwrap_err();
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
        let err = render("ip={{ip}}", &v).unwrap_err();
        assert!(err.message.contains("--var ip=VALUE"), "{}", err.message);
    }

    #[test]
    fn referenced_lists_each_variable_once() {
        let names = referenced("{{a}} x {{ b }} {{a}} {{unclosed");
        assert_eq!(names.into_iter().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn unclosed_braces_are_an_error() {
        assert!(render("x {{oops", &Vars::new()).is_err());
    }
}

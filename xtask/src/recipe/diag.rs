//! Operator-facing diagnostics for recipe files: file, line, column and a
//! caret under the offending text, rendered with miette.

use std::fmt;
use std::ops::Range;
use std::path::Path;

use miette::{GraphicalReportHandler, GraphicalTheme, NamedSource, SourceSpan};

pub use crate::template::{did_you_mean, nearest};

/// An error located in a text file (a recipe, an overlay template).
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("{message}")]
pub struct SourceError {
    pub message: String,
    #[source_code]
    src: NamedSource<String>,
    #[label("{label}")]
    span: SourceSpan,
    label: String,
    #[help]
    help: Option<String>,
    /// `file:line:col`, kept for the one-line summary.
    location: String,
}

impl SourceError {
    pub fn new(file: &Path, text: &str, span: Range<usize>, message: impl Into<String>) -> Self {
        let span = clamp(span, text.len());
        let (line, col) = line_col(text, span.start);
        let name = file.display().to_string();
        SourceError {
            message: message.into(),
            location: format!("{name}:{line}:{col}"),
            src: NamedSource::new(name, text.to_string()),
            span: span.into(),
            label: "here".into(),
            help: None,
        }
    }

    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    /// The full report: `file:line:col: message` followed by the snippet.
    /// Colourless so that it is stable in logs and golden tests.
    pub fn render(&self) -> String {
        let mut out = format!("{}: {}\n", self.location, self.message);
        let handler = GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
            .with_width(100)
            .with_links(false);
        let mut snippet = String::new();
        if handler.render_report(&mut snippet, self).is_ok() {
            out.push_str(&snippet);
        }
        out
    }
}

/// Several recipe errors at once: an operator fixes them in one pass.
#[derive(Debug)]
pub struct RecipeErrors(pub Vec<SourceError>);

impl fmt::Display for RecipeErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", e.render())?;
        }
        Ok(())
    }
}

impl std::error::Error for RecipeErrors {}

fn clamp(span: Range<usize>, len: usize) -> Range<usize> {
    let start = span.start.min(len);
    let end = span.end.clamp(start, len);
    start..end
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The help for an unknown name: the nearest valid one, if any is close,
/// then all of them, e.g. "did you mean `b`? valid keys here: `a`, `b`".
pub fn unknown_name_help(unknown: &str, valid: &[&str], what: &str) -> String {
    let list = valid
        .iter()
        .map(|v| format!("`{v}`"))
        .collect::<Vec<_>>()
        .join(", ");
    match nearest(unknown, valid.iter().copied()) {
        Some(n) => format!("did you mean `{n}`? valid {what}: {list}"),
        None => format!("valid {what}: {list}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let text = "a = 1\nbb = 2\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        assert_eq!(line_col(text, 9), (2, 4));
    }

    #[test]
    fn nearest_finds_typos_but_not_strangers() {
        let valid = ["overlays", "output", "compression"];
        assert_eq!(nearest("overlay", valid), Some("overlays"));
        assert_eq!(nearest("compresion", valid), Some("compression"));
        assert_eq!(nearest("zzz", valid), None);
    }
}

//! CSV inventories: a header row naming the fields (the TOML keys), then
//! one host per row. A list field (`dns`, `roms`, `mac`) holds its entries
//! separated by spaces or `;`; the host's own variables are columns named
//! `vars.<name>`; an empty cell is an absent field. Blank lines and lines
//! starting with `#` are skipped.
//!
//! The csv crate gives each record's byte offset but not each cell's, so
//! every value is located at its row; messages name the field.

use std::collections::BTreeMap;
use std::ops::Range;

use ::csv::{ReaderBuilder, StringRecord, Trim};
use toml::Spanned;

use super::{slot, unknown_field, Slot, FIELDS};
use crate::recipe::schema::RawHost;
use crate::recipe::{Doc, SourceError};

/// The rows of `doc` as raw hosts; problems go to `errors`.
pub(super) fn hosts(doc: &Doc, errors: &mut Vec<SourceError>) -> Vec<Spanned<RawHost>> {
    // The header is read as a row, so that its position is known and the
    // blank and comment lines before it are skipped the same way.
    let mut reader = ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .comment(Some(b'#'))
        .trim(Trim::All)
        .from_reader(doc.text.as_bytes());
    let mut rows = reader
        .records()
        .filter(|r| !matches!(r, Ok(r) if r.iter().all(str::is_empty)));
    let header = match rows.next() {
        Some(Ok(header)) => header,
        Some(Err(e)) => {
            errors.push(csv_error(doc, &e));
            return Vec::new();
        }
        None => return Vec::new(),
    };
    let Some(columns) = columns(doc, &header, errors) else {
        return Vec::new();
    };
    let mut hosts = Vec::new();
    for row in rows {
        let row = match row {
            Ok(row) => row,
            Err(e) => {
                errors.push(csv_error(doc, &e));
                break;
            }
        };
        match host(doc, &columns, &row) {
            Ok(h) => hosts.push(h),
            Err(e) => errors.push(e),
        }
    }
    hosts
}

/// What a column holds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Column {
    /// One of [`FIELDS`] (not `vars`).
    Field(&'static str),
    /// `vars.<name>`: one of the host's own variables.
    Var(String),
}

/// The header's field names, each known and once; `None` after errors.
fn columns(doc: &Doc, header: &StringRecord, errors: &mut Vec<SourceError>) -> Option<Vec<Column>> {
    let span = row_span(doc, header);
    let before = errors.len();
    let mut columns: Vec<Column> = Vec::new();
    for name in header {
        let column = match name.strip_prefix("vars.") {
            Some(var) => Some(Column::Var(var.to_string())),
            None => FIELDS
                .iter()
                .find(|f| **f == name && **f != "vars")
                .map(|f| Column::Field(f)),
        };
        match column {
            Some(c) if columns.contains(&c) => {
                errors.push(doc.error(span.clone(), format!("column `{name}` appears twice")));
            }
            Some(c) => columns.push(c),
            None => errors.push(unknown_field(
                doc,
                span.clone(),
                format!("unknown column `{name}`"),
                name,
            )),
        }
    }
    (errors.len() == before).then_some(columns)
}

fn host(
    doc: &Doc,
    columns: &[Column],
    row: &StringRecord,
) -> Result<Spanned<RawHost>, SourceError> {
    let span = row_span(doc, row);
    if row.len() != columns.len() {
        let whose = columns
            .iter()
            .zip(row)
            .find(|(c, _)| **c == Column::Field("hostname"))
            .map(|(_, name)| format!("host `{name}`: "))
            .unwrap_or_default();
        let message = format!(
            "{whose}the row has {} cells, the header {}",
            row.len(),
            columns.len()
        );
        return Err(doc.error(span, message));
    }
    let mut raw = RawHost::default();
    let value = |v: &str| Spanned::new(span.clone(), v.to_string());
    for (column, cell) in columns.iter().zip(row) {
        if cell.is_empty() {
            continue;
        }
        let field = match column {
            Column::Field(field) => field,
            Column::Var(name) => {
                let vars = raw.vars.get_or_insert_with(BTreeMap::new);
                vars.insert(name.clone(), value(cell));
                continue;
            }
        };
        match slot(&mut raw, field) {
            Some(Slot::One(s)) => *s = Some(value(cell)),
            Some(Slot::List(s)) => {
                let entries = cell.split(|c: char| c == ';' || c.is_whitespace());
                *s = Some(entries.filter(|e| !e.is_empty()).map(value).collect());
            }
            // `columns` holds known fields only, and `vars` only as `vars.<name>`.
            Some(Slot::Map(_)) | None => {}
        }
    }
    Ok(Spanned::new(span, raw))
}

/// The first line of a record. The csv crate's position is where the
/// reader stood before it, so skip the blank and comment lines it skipped.
fn row_span(doc: &Doc, record: &StringRecord) -> Range<usize> {
    let text = &doc.text;
    let pos = record.position().map_or(0, |p| p.byte());
    let mut start = usize::try_from(pos).unwrap_or(text.len()).min(text.len());
    if !text.is_char_boundary(start) {
        return start..start;
    }
    loop {
        let end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        let line = &text[start..end];
        if end < text.len() && (line.trim().is_empty() || line.starts_with('#')) {
            start = end + 1;
        } else {
            return start..end;
        }
    }
}

fn csv_error(doc: &Doc, e: &::csv::Error) -> SourceError {
    let offset = e.position().map_or(0, |p| p.byte());
    let offset = usize::try_from(offset).unwrap_or(doc.text.len());
    doc.error(offset..offset, format!("not valid CSV: {e}"))
}

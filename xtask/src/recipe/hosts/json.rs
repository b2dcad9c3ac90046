//! JSON inventories: an array of host objects, or `{"host": [...]}` as the
//! TOML form reads. Values are strings, `dns` and `roms` arrays of strings;
//! `null` is an absent field.
//!
//! Values are kept as `RawValue`s borrowed from the file's text, so each
//! one's span is its offset in that text and errors point at its line.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::error::Category;
use serde_json::value::RawValue;
use toml::Spanned;

use super::{slot, unknown_field, Slot};
use crate::recipe::schema::RawHost;
use crate::recipe::{Doc, SourceError};

/// `{"host": [...]}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object with a `host` array")]
struct Table<'a> {
    #[serde(borrow)]
    host: Vec<&'a RawValue>,
}

/// A JSON object's members in file order, duplicates kept, values unparsed.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a host object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(MembersVisitor)
    }
}

/// The hosts of `doc` as raw hosts; problems go to `errors`.
pub(super) fn hosts(doc: &Doc, errors: &mut Vec<SourceError>) -> Vec<Spanned<RawHost>> {
    let objects = match objects(&doc.text) {
        Ok(objects) => objects,
        Err(e) => {
            errors.push(syntax_error(doc, &e));
            return Vec::new();
        }
    };
    let mut hosts = Vec::new();
    for object in objects {
        match host(doc, object) {
            Ok(h) => hosts.push(h),
            Err(e) => errors.push(e),
        }
    }
    hosts
}

fn objects(text: &str) -> serde_json::Result<Vec<&RawValue>> {
    if text.trim_start().starts_with('{') {
        Ok(serde_json::from_str::<Table>(text)?.host)
    } else {
        serde_json::from_str(text)
    }
}

fn host(doc: &Doc, object: &RawValue) -> Result<Spanned<RawHost>, SourceError> {
    let whole = span(doc, object);
    let members: Members = serde_json::from_str(object.get())
        .map_err(|_| doc.error(whole.clone(), "a host is a JSON object of fields"))?;
    let whose = members
        .0
        .iter()
        .find(|(key, _)| key == "hostname")
        .and_then(|(_, v)| serde_json::from_str::<String>(v.get()).ok())
        .map(|name| format!("host `{name}`: "))
        .unwrap_or_default();
    let mut raw = RawHost::default();
    for (key, value) in &members.0 {
        let at = span(doc, value);
        let Some(target) = slot(&mut raw, key) else {
            let message = format!("{whose}unknown key `{key}`");
            return Err(unknown_field(
                doc,
                key_span(doc, &whole, &at, key),
                message,
                key,
            ));
        };
        if target.is_set() {
            let message = format!("{whose}`{key}` appears twice");
            return Err(doc.error(key_span(doc, &whole, &at, key), message));
        }
        if value.get() == "null" {
            continue;
        }
        let wrong = |what: &str| doc.error(at.clone(), format!("{whose}`{key}` must be {what}"));
        match target {
            Slot::One(s) => *s = Some(string(doc, value).ok_or_else(|| wrong("a string"))?),
            Slot::List(s) => {
                *s = Some(strings(doc, value).ok_or_else(|| wrong("an array of strings"))?)
            }
            Slot::Map(s) => {
                let map = string_map(doc, value);
                *s = Some(map.ok_or_else(|| wrong("an object of strings"))?)
            }
        }
    }
    Ok(Spanned::new(whole, raw))
}

fn string(doc: &Doc, value: &RawValue) -> Option<Spanned<String>> {
    let s = serde_json::from_str(value.get()).ok()?;
    Some(Spanned::new(span(doc, value), s))
}

fn strings(doc: &Doc, value: &RawValue) -> Option<Vec<Spanned<String>>> {
    let items: Vec<&RawValue> = serde_json::from_str(value.get()).ok()?;
    items.into_iter().map(|i| string(doc, i)).collect()
}

/// Where `value` lies in `doc`'s text: every `RawValue` here borrows from
/// that text, so its offset is the distance between the two pointers.
fn string_map(doc: &Doc, value: &RawValue) -> Option<BTreeMap<String, Spanned<String>>> {
    let members: Members = serde_json::from_str(value.get()).ok()?;
    let map: Option<BTreeMap<_, _>> = members
        .0
        .into_iter()
        .map(|(k, v)| string(doc, v).map(|s| (k, s)))
        .collect();
    map
}

fn span(doc: &Doc, value: &RawValue) -> Range<usize> {
    let start = (value.get().as_ptr() as usize).saturating_sub(doc.text.as_ptr() as usize);
    start..start + value.get().len()
}

/// The `"key"` before a member's value, or the value when the key is
/// written with escapes.
fn key_span(doc: &Doc, object: &Range<usize>, value: &Range<usize>, key: &str) -> Range<usize> {
    let quoted = format!("\"{key}\"");
    match doc
        .text
        .get(object.start..value.start)
        .and_then(|t| t.rfind(&quoted))
    {
        Some(i) => object.start + i..object.start + i + quoted.len(),
        None => value.clone(),
    }
}

/// serde_json's message at its line and column (bytes, counted from 1):
/// broken JSON, or JSON of the wrong shape.
fn syntax_error(doc: &Doc, e: &serde_json::Error) -> SourceError {
    let line_start: usize = doc
        .text
        .split_inclusive('\n')
        .take(e.line().saturating_sub(1))
        .map(str::len)
        .sum();
    let offset = (line_start + e.column().saturating_sub(1)).min(doc.text.len());
    let offset = (0..=offset)
        .rev()
        .find(|o| doc.text.is_char_boundary(*o))
        .unwrap_or(0);
    let message = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let message = message.strip_suffix(&suffix).unwrap_or(&message);
    let message = match e.classify() {
        Category::Data => {
            format!("an inventory is an array of hosts or {{\"host\": [...]}}: {message}")
        }
        _ => format!("not valid JSON: {message}"),
    };
    doc.error(offset..offset, message)
}

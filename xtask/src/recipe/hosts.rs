//! Host inventories (`recipes/hosts.toml`, or the same fields as CSV or
//! JSON): machines with a static identity, validated once on load. Each
//! host becomes a set of template variables (`{{hostname}}`,
//! `{{ipv4_address}}`, `{{ipv4_netmask}}`…) for per-host kernel arguments
//! and scripts.
//!
//! Architecture invariant: every format is read into [`RawHost`] values
//! with their spans; only [`host`] validates them, so a field means the same
//! and fails with the same message in every format.

mod csv;
mod json;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::path::Path;

use anyhow::{bail, Result};
use toml::Spanned;

use super::schema::{RawHost, RawInventory};
use super::{diag, Doc, RecipeErrors, SourceError};
use crate::arch::Arch;
use crate::template::{self, TemplateError, Vars};

/// One validated host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub hostname: String,
    /// `file:line:col` of its `[[host]]` table, CSV row or JSON object, for
    /// messages.
    pub origin: String,
    /// Template variable → value; a field the host does not have is absent.
    pub vars: BTreeMap<String, String>,
    /// NIC ROM file names the machine needs (`None`: the inventory does not
    /// say; `Some(vec![])`: none). Only their syntax is checked here.
    pub roms: Option<Vec<String>>,
    /// `x86_64` or `arm64`.
    pub arch: Arch,
    /// The machine's MAC addresses, lowercase and colon-separated as iPXE's `${mac}` prints
    /// them; unique across the inventory.
    pub macs: Vec<String>,
}

/// Every variable a host may provide, for "unknown variable" hints and for
/// telling a missing field from a typo.
pub const HOST_VARIABLES: &[&str] = &[
    "hostname",
    "ipv4",
    "ipv4_address",
    "ipv4_prefix",
    "ipv4_netmask",
    "ipv4_gateway",
    "dns1",
    "dns2",
    "ipv6",
    "ipv6_address",
    "ipv6_prefix",
    "ipv6_gateway",
    "mac",
    "macs",
];

impl Host {
    /// `template` rendered with the recipe's `vars` and this host's fields.
    /// A field the host does not have is reported naming the host and the
    /// inventory field; any other error is the template's own.
    pub fn render(
        &self,
        template: &str,
        vars: &Vars,
        syntax: template::Syntax,
    ) -> Result<String, TemplateError> {
        let mut all = vars.clone();
        all.extend(
            HOST_VARIABLES
                .iter()
                .map(|v| (v.to_string(), self.vars.get(*v).cloned())),
        );
        // The host's own `vars` (over a recipe variable of the same name, its default).
        all.extend(
            self.vars
                .iter()
                .filter(|(k, _)| !HOST_VARIABLES.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), Some(v.clone()))),
        );
        template::render(template, &all, syntax).map_err(|mut e| {
            let name = template[e.span.clone()]
                .trim_matches(|c| c == '{' || c == '}')
                .trim();
            if HOST_VARIABLES.contains(&name) {
                e.message = format!(
                    "host `{}` ({}) has no `{}`, which `{{{{{name}}}}}` needs",
                    self.hostname,
                    self.origin,
                    host_field(name)
                );
            }
            e
        })
    }
}

/// Variables Kiln sets itself in some templates: a host may not override them (a host's
/// `imgverify = ""` would turn off the signature checks its iPXE was built for).
const BUILT_IN: &[&str] = &[
    "imgverify",
    "cmdline",
    "kernel",
    "rom_version",
    "model",
    "file",
];

/// The inventory field a host variable comes from.
fn host_field(var: &str) -> &str {
    match var {
        "dns1" | "dns2" => "dns",
        "ipv6_gateway" => "ipv6_gateway",
        v if v.starts_with("ipv6") => "ipv6",
        "ipv4_gateway" => "gateway",
        v if v.starts_with("ipv4") => "ipv4",
        "macs" => "mac",
        v => v,
    }
}

/// The fields of a host as an inventory names them: TOML keys, CSV
/// columns, JSON keys.
const FIELDS: &[&str] = &[
    "hostname",
    "ipv4",
    "gateway",
    "dns",
    "ipv6",
    "ipv6_gateway",
    "roms",
    "arch",
    "mac",
    "vars",
];

/// An inventory's format, from its file name's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Toml,
    Csv,
    Json,
}

impl Format {
    fn of(file: &Path) -> Result<Format> {
        let ext = file.extension().and_then(|e| e.to_str());
        Ok(match ext.map(str::to_ascii_lowercase).as_deref() {
            Some("toml") => Format::Toml,
            Some("csv") => Format::Csv,
            Some("json") => Format::Json,
            _ => bail!(
                "{}: an inventory is a `.toml`, `.csv` or `.json` file",
                file.display()
            ),
        })
    }

    fn no_hosts(self) -> &'static str {
        match self {
            Format::Toml => "the inventory lists no `[[host]]`",
            Format::Csv => "the inventory lists no host: a header row, then one row per host",
            Format::Json => "the inventory lists no host",
        }
    }
}

/// The hosts of a `.toml`, `.csv` or `.json` inventory, validated. Errors
/// are [`RecipeErrors`], each naming the file, line, host and field.
pub fn load(file: &Path) -> Result<Vec<Host>> {
    let format = Format::of(file)?;
    let doc = Doc::read(file)?;
    let mut errors = Vec::new();
    let raw = match format {
        Format::Toml => doc.parse::<RawInventory>()?.host,
        Format::Csv => csv::hosts(&doc, &mut errors),
        Format::Json => json::hosts(&doc, &mut errors),
    };
    let mut hosts = Vec::new();
    for h in raw {
        let span = h.span();
        match host(&doc, span, h.into_inner()) {
            Ok(checked) => hosts.push(checked),
            Err(e) => errors.push(e),
        }
    }
    check_unique(&doc, &hosts, &mut errors);
    if hosts.is_empty() && errors.is_empty() {
        errors.push(doc.error(0..0, format.no_hosts()));
    }
    if !errors.is_empty() {
        return Err(RecipeErrors(errors).into());
    }
    Ok(hosts.into_iter().map(|c| c.host).collect())
}

/// Where a field read from a CSV cell or a JSON value goes in a [`RawHost`].
enum Slot<'a> {
    One(&'a mut Option<Spanned<String>>),
    List(&'a mut Option<Vec<Spanned<String>>>),
    /// `vars`: names to strings (CSV: one `vars.<name>` column each).
    Map(&'a mut Option<BTreeMap<String, Spanned<String>>>),
}

impl Slot<'_> {
    fn is_set(&self) -> bool {
        match self {
            Slot::One(s) => s.is_some(),
            Slot::List(s) => s.is_some(),
            Slot::Map(s) => s.is_some(),
        }
    }
}

/// The slot of `field` (one of [`FIELDS`]); `None` for an unknown name.
fn slot<'a>(raw: &'a mut RawHost, field: &str) -> Option<Slot<'a>> {
    Some(match field {
        "hostname" => Slot::One(&mut raw.hostname),
        "ipv4" => Slot::One(&mut raw.ipv4),
        "gateway" => Slot::One(&mut raw.gateway),
        "dns" => Slot::List(&mut raw.dns),
        "ipv6" => Slot::One(&mut raw.ipv6),
        "ipv6_gateway" => Slot::One(&mut raw.ipv6_gateway),
        "roms" => Slot::List(&mut raw.roms),
        "arch" => Slot::One(&mut raw.arch),
        "mac" => Slot::List(&mut raw.mac),
        "vars" => Slot::Map(&mut raw.vars),
        _ => return None,
    })
}

/// An unknown CSV column or JSON key, with the nearest field as a hint.
fn unknown_field(doc: &Doc, span: Range<usize>, message: String, name: &str) -> SourceError {
    doc.error(span, message)
        .label("unknown field")
        .help(diag::unknown_name_help(name, FIELDS, "fields"))
}

/// A validated host and where its unique fields are written, so that a
/// duplicate points at the field rather than the whole host.
struct Checked {
    host: Host,
    /// (`hostname`, `ipv4`, `ipv6` or `mac`, the value, its span): values no other host may
    /// have.
    unique: Vec<(&'static str, String, Range<usize>)>,
}

/// Errors about one host's fields: "host `name`: `field` why".
struct Blame<'a> {
    doc: &'a Doc,
    host: &'a str,
    /// The whole host, for a missing field.
    span: Range<usize>,
}

impl Blame<'_> {
    fn at(&self, span: Range<usize>, field: &str, why: impl fmt::Display) -> SourceError {
        self.doc
            .error(span, format!("host `{}`: `{field}` {why}", self.host))
    }

    fn required<'r>(
        &self,
        value: &'r Option<Spanned<String>>,
        field: &str,
    ) -> Result<&'r Spanned<String>, SourceError> {
        value
            .as_ref()
            .ok_or_else(|| self.at(self.span.clone(), field, "is missing"))
    }
}

fn host(doc: &Doc, span: Range<usize>, raw: RawHost) -> Result<Checked, SourceError> {
    let hostname = raw
        .hostname
        .as_ref()
        .ok_or_else(|| doc.error(span.clone(), "host without `hostname`"))?;
    let name = hostname.get_ref();
    let blame = Blame {
        doc,
        host: name,
        span: span.clone(),
    };
    check_hostname(name).map_err(|why| blame.at(hostname.span(), "hostname", why))?;
    let mut vars = BTreeMap::from([("hostname".to_string(), name.clone())]);
    let mut unique = vec![("hostname", name.to_ascii_lowercase(), hostname.span())];
    let v4 = ipv4_vars(&blame, &raw, &mut vars)?;
    unique.push(("ipv4", vars["ipv4_address"].clone(), v4));
    dns_vars(&blame, raw.dns.as_deref().unwrap_or_default(), &mut vars)?;
    if let Some(v6) = ipv6_vars(&blame, &raw, &mut vars)? {
        unique.push(("ipv6", vars["ipv6_address"].clone(), v6));
    }
    let roms = raw.roms.as_deref().map(|r| roms(&blame, r)).transpose()?;
    let arch = arch(&blame, raw.arch.as_ref())?;
    let macs = macs(&blame, raw.mac.as_deref().unwrap_or_default())?;
    if let Some(first) = macs.first() {
        vars.insert("mac".into(), first.0.clone());
        let all: Vec<&str> = macs.iter().map(|(m, _)| m.as_str()).collect();
        vars.insert("macs".into(), all.join(" "));
    }
    unique.extend(
        macs.iter()
            .map(|(m, span)| ("mac", m.clone(), span.clone())),
    );
    own_vars(&blame, raw.vars.as_ref(), &mut vars)?;
    let (line, col) = diag::line_col(&doc.text, span.start);
    let host = Host {
        hostname: name.clone(),
        origin: format!("{}:{line}:{col}", doc.file.display()),
        vars,
        roms,
        arch,
        macs: macs.into_iter().map(|(m, _)| m).collect(),
    };
    Ok(Checked { host, unique })
}

/// `ipv4` and `gateway` (both required) as variables; the span of `ipv4`.
fn ipv4_vars(
    blame: &Blame,
    raw: &RawHost,
    vars: &mut BTreeMap<String, String>,
) -> Result<Range<usize>, SourceError> {
    let ipv4 = blame.required(&raw.ipv4, "ipv4")?;
    let (addr, prefix) =
        parse_v4_cidr(ipv4.get_ref()).map_err(|why| blame.at(ipv4.span(), "ipv4", why))?;
    let gateway = blame.required(&raw.gateway, "gateway")?;
    let gw = parse_v4_gateway(gateway.get_ref(), addr, prefix)
        .map_err(|why| blame.at(gateway.span(), "gateway", why))?;
    vars.insert("ipv4".into(), ipv4.get_ref().clone());
    vars.insert("ipv4_address".into(), addr.to_string());
    vars.insert("ipv4_prefix".into(), prefix.to_string());
    vars.insert("ipv4_netmask".into(), netmask(prefix).to_string());
    vars.insert("ipv4_gateway".into(), gw.to_string());
    Ok(ipv4.span())
}

fn dns_vars(
    blame: &Blame,
    dns: &[Spanned<String>],
    vars: &mut BTreeMap<String, String>,
) -> Result<(), SourceError> {
    for (i, d) in dns.iter().enumerate() {
        let ip: IpAddr = d.get_ref().parse().map_err(|_| {
            let why = format!("`{}` is not an IP address", d.get_ref());
            blame.at(d.span(), "dns", why)
        })?;
        vars.insert(format!("dns{}", i + 1), ip.to_string());
    }
    Ok(())
}

/// `ipv6` and `ipv6_gateway` (both optional) as variables; the span of
/// `ipv6`.
fn ipv6_vars(
    blame: &Blame,
    raw: &RawHost,
    vars: &mut BTreeMap<String, String>,
) -> Result<Option<Range<usize>>, SourceError> {
    if let Some(v6) = &raw.ipv6 {
        let (a, p) = parse_v6_cidr(v6.get_ref()).map_err(|why| blame.at(v6.span(), "ipv6", why))?;
        vars.insert("ipv6".into(), v6.get_ref().clone());
        vars.insert("ipv6_address".into(), a.to_string());
        vars.insert("ipv6_prefix".into(), p.to_string());
    }
    if let Some(g) = &raw.ipv6_gateway {
        let ip: Ipv6Addr = g.get_ref().parse().map_err(|_| {
            let why = format!("`{}` is not an IPv6 address", g.get_ref());
            blame.at(g.span(), "ipv6_gateway", why)
        })?;
        vars.insert("ipv6_gateway".into(), ip.to_string());
    }
    Ok(raw.ipv6.as_ref().map(Spanned::span))
}

/// NIC ROM file names as iPXE's make targets end (`bin/808610d3.rom`,
/// `bin/15b31003.mrom`), each once. Whether the recipe builds them is the
/// caller's question.
fn roms(blame: &Blame, raw: &[Spanned<String>]) -> Result<Vec<String>, SourceError> {
    let mut seen = BTreeSet::new();
    for rom in raw {
        let name = rom.get_ref();
        let stem = [".rom", ".mrom", ".efirom"]
            .iter()
            .find_map(|ext| name.strip_suffix(ext));
        let chars_ok = name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !chars_ok || stem.is_none_or(str::is_empty) {
            let why = format!(
                "`{name}` is not a ROM file name (letters, digits, `.`, `_` and `-`, ending `.rom`, `.mrom` or `.efirom`)"
            );
            return Err(blame.at(rom.span(), "roms", why));
        }
        if !seen.insert(name.as_str()) {
            return Err(blame.at(rom.span(), "roms", format!("lists `{name}` twice")));
        }
    }
    Ok(raw.iter().map(|r| r.get_ref().clone()).collect())
}

/// MAC addresses (`52:54:00:12:34:56`, or with `-`, any case) in iPXE's form, lowercase with
/// colons, each with its span. A group (multicast) address or all zeros is no NIC's.
fn macs(
    blame: &Blame,
    raw: &[Spanned<String>],
) -> Result<Vec<(String, Range<usize>)>, SourceError> {
    let mut out: Vec<(String, Range<usize>)> = Vec::new();
    for mac in raw {
        let text = mac.get_ref();
        let why = match parse_mac(text) {
            Some(o) if o.iter().all(|b| *b == 0) => "is all zeros",
            Some(o) if o[0] & 1 == 1 => "is a group (multicast) address, not a NIC's",
            Some(_) => "",
            None => "is not a MAC address (six hex octets, e.g. `52:54:00:12:34:56`)",
        };
        if !why.is_empty() {
            return Err(blame.at(mac.span(), "mac", format!("`{text}` {why}")));
        }
        let normal = normal_mac(text).expect("checked above");
        if out.iter().any(|(m, _)| *m == normal) {
            return Err(blame.at(mac.span(), "mac", format!("lists `{text}` twice")));
        }
        out.push((normal, mac.span()));
    }
    Ok(out)
}

/// Six octets written as iPXE's `${mac}` (`52:54:00:12:34:56`), with `-` instead of `:`, in
/// any case, or as 12 hex digits (`${mac:hexraw}`).
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let hex: Vec<&str> = match text.len() {
        12 => (0..6)
            .map(|i| text.get(2 * i..2 * i + 2))
            .collect::<Option<_>>()?,
        17 => text.split([':', '-']).collect(),
        _ => return None,
    };
    let octets: Vec<u8> = hex
        .iter()
        .map(|h| {
            (h.len() == 2)
                .then(|| u8::from_str_radix(h, 16).ok())
                .flatten()
        })
        .collect::<Option<_>>()?;
    octets.try_into().ok()
}

/// A MAC as iPXE prints `${mac}` (lowercase hex octets joined by `:`), from any form
/// [`parse_mac`] reads; `None` if it is not one.
pub fn normal_mac(text: &str) -> Option<String> {
    let hex: Vec<String> = parse_mac(text)?
        .iter()
        .map(|o| format!("{o:02x}"))
        .collect();
    Some(hex.join(":"))
}

/// The host's own template variables: names of lowercase letters, digits and `_` that are
/// not a host field's variable (a `vars.mac` would hide `{{mac}}`).
fn own_vars(
    blame: &Blame,
    raw: Option<&BTreeMap<String, Spanned<String>>>,
    vars: &mut BTreeMap<String, String>,
) -> Result<(), SourceError> {
    for (name, value) in raw.into_iter().flatten() {
        let field = format!("vars.{name}");
        let ok = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !ok {
            let why = "is not a variable name (lowercase letters, digits and `_`)";
            return Err(blame.at(value.span(), &field, why));
        }
        if HOST_VARIABLES.contains(&name.as_str()) {
            let why = format!("would hide the host's own `{{{{{name}}}}}`; choose another name");
            return Err(blame.at(value.span(), &field, why));
        }
        if BUILT_IN.contains(&name.as_str()) {
            let why = format!("would hide Kiln's `{{{{{name}}}}}`; choose another name");
            return Err(blame.at(value.span(), &field, why));
        }
        vars.insert(name.clone(), value.get_ref().clone());
    }
    Ok(())
}

/// One of iPXE's architectures; the first (`x86_64`) when absent.
fn arch(blame: &Blame, raw: Option<&Spanned<String>>) -> Result<Arch, SourceError> {
    let Some(arch) = raw else {
        return Ok(Arch::DEFAULT);
    };
    if let Some(known) = Arch::from_name(arch.get_ref()) {
        return Ok(known);
    }
    let list: Vec<String> = Arch::ALL.iter().map(|a| format!("`{a}`")).collect();
    let why = format!("`{}` is not one of {}", arch.get_ref(), list.join(", "));
    Err(blame.at(arch.span(), "arch", why))
}

/// RFC 1123 names: dot-separated labels of letters, digits and `-`.
fn check_hostname(name: &str) -> Result<(), String> {
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!(
            "`{name}` is not a valid host name (letters, digits, `-` and dots; labels of 1 to 63 characters)"
        ));
    }
    Ok(())
}

fn parse_v4_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (a, p) = s
        .split_once('/')
        .ok_or_else(|| format!("`{s}` needs a prefix length, e.g. `{s}/24`"))?;
    let addr: Ipv4Addr = a
        .parse()
        .map_err(|_| format!("`{a}` is not an IPv4 address"))?;
    let prefix: u8 = p
        .parse()
        .ok()
        .filter(|p| (1..=32).contains(p))
        .ok_or_else(|| format!("prefix `/{p}` must be 1 to 32"))?;
    let host_bits = u32::from(addr) & !u32::from(netmask(prefix));
    if prefix <= 30 && (host_bits == 0 || host_bits == !u32::from(netmask(prefix))) {
        return Err(format!(
            "`{a}` is the network or broadcast address of /{prefix}"
        ));
    }
    Ok((addr, prefix))
}

fn parse_v4_gateway(s: &str, addr: Ipv4Addr, prefix: u8) -> Result<Ipv4Addr, String> {
    let gw: Ipv4Addr = s
        .parse()
        .map_err(|_| format!("`{s}` is not an IPv4 address"))?;
    let mask = u32::from(netmask(prefix));
    if u32::from(gw) & mask != u32::from(addr) & mask {
        return Err(format!(
            "`{gw}` is outside the host's network {addr}/{prefix}"
        ));
    }
    if gw == addr {
        return Err(format!("`{gw}` is the host's own address"));
    }
    Ok(gw)
}

fn parse_v6_cidr(s: &str) -> Result<(Ipv6Addr, u8), String> {
    let (a, p) = s
        .split_once('/')
        .ok_or_else(|| format!("`{s}` needs a prefix length, e.g. `{s}/64`"))?;
    let addr: Ipv6Addr = a
        .parse()
        .map_err(|_| format!("`{a}` is not an IPv6 address"))?;
    let prefix: u8 = p
        .parse()
        .ok()
        .filter(|p| (1..=128).contains(p))
        .ok_or_else(|| format!("prefix `/{p}` must be 1 to 128"))?;
    Ok((addr, prefix))
}

fn netmask(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0))
}

/// Host names (case-insensitively), addresses and MACs appear once.
fn check_unique(doc: &Doc, hosts: &[Checked], errors: &mut Vec<SourceError>) {
    let mut seen: HashMap<(&str, &str), &str> = HashMap::new();
    for Checked { host: h, unique } in hosts {
        for (field, value, span) in unique {
            if let Some(first) = seen.insert((field, value), &h.hostname) {
                errors.push(doc.error(
                    span.clone(),
                    format!(
                        "host `{}`: `{field}` {value} is already used by host `{first}`",
                        h.hostname
                    ),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<Vec<Host>> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("hosts.toml");
        fs_err::write(&file, text)?;
        load(&file)
    }

    fn error(text: &str) -> String {
        format!("{:#}", load_text(text).unwrap_err())
    }

    const ONE: &str = r#"
[[host]]
hostname = "mlab1-lga01"
ipv4 = "192.0.2.10/26"
gateway = "192.0.2.1"
dns = ["8.8.8.8", "2001:4860:4860::8888"]
ipv6 = "2001:db8::10/64"
"#;

    #[test]
    fn a_host_becomes_template_variables() {
        let hosts = load_text(ONE).unwrap();
        let v = &hosts[0].vars;
        assert_eq!(v["ipv4_address"], "192.0.2.10");
        assert_eq!(v["ipv4_netmask"], "255.255.255.192");
        assert_eq!(v["ipv4_prefix"], "26");
        assert_eq!(v["ipv4_gateway"], "192.0.2.1");
        assert_eq!(v["dns2"], "2001:4860:4860::8888");
        assert_eq!(v["ipv6_prefix"], "64");
        assert!(!v.contains_key("ipv6_gateway"));
        assert!(hosts[0].origin.ends_with(":2:1"), "{}", hosts[0].origin);
    }

    #[test]
    fn bad_addresses_name_the_host_and_field() {
        let bad = ONE.replace("192.0.2.10/26", "192.0.2.300/26");
        assert!(
            error(&bad).contains("host `mlab1-lga01`: `ipv4` `192.0.2.300` is not an IPv4 address")
        );
        let bad = ONE.replace("192.0.2.10/26", "192.0.2.10");
        assert!(error(&bad).contains("`ipv4` `192.0.2.10` needs a prefix length"));
        let bad = ONE.replace("\"192.0.2.1\"", "\"192.0.3.1\"");
        assert!(error(&bad).contains("`gateway` `192.0.3.1` is outside the host's network"));
        let bad = ONE.replace("192.0.2.10/26", "192.0.2.0/26");
        assert!(error(&bad).contains("network or broadcast"));
        let bad = ONE.replace("8.8.8.8", "dns.google");
        assert!(error(&bad).contains("`dns` `dns.google` is not an IP address"));
    }

    #[test]
    fn missing_fields_name_the_host_and_field() {
        let bad = ONE.replace("gateway = \"192.0.2.1\"\n", "");
        assert!(error(&bad).contains("host `mlab1-lga01`: `gateway` is missing"));
        let bad = ONE.replace("hostname = \"mlab1-lga01\"\n", "");
        assert!(error(&bad).contains("host without `hostname`"));
    }

    #[test]
    fn duplicate_names_and_addresses_are_errors() {
        let two = format!("{ONE}{}", ONE.replace("192.0.2.10", "192.0.2.11"));
        let err = error(&two);
        assert!(
            err.contains("`hostname` mlab1-lga01 is already used"),
            "{err}"
        );
        let two = format!("{ONE}{}", ONE.replace("mlab1-lga01", "mlab2-lga01"));
        let err = error(&two);
        assert!(
            err.contains(
                "host `mlab2-lga01`: `ipv4` 192.0.2.10 is already used by host `mlab1-lga01`"
            ),
            "{err}"
        );
    }

    /// The same two hosts in each format.
    const SAME_TOML: &str = r#"
[[host]]
hostname = "mlab1-lga01"
ipv4 = "192.0.2.10/26"
gateway = "192.0.2.1"
dns = ["8.8.8.8", "2001:4860:4860::8888"]
ipv6 = "2001:db8::10/64"
ipv6_gateway = "2001:db8::1"
roms = ["15b31003.mrom", "808610d3.rom"]
arch = "arm64"

[[host]]
hostname = "mlab2-lga01"
ipv4 = "192.0.2.11/26"
gateway = "192.0.2.1"
dns = ["8.8.8.8"]
"#;

    /// Line 2 is the header, line 4 the first host, line 5 the second.
    const SAME_CSV: &str = "\
# hosts of lga01
hostname,ipv4,gateway,dns,ipv6,ipv6_gateway,roms,arch

mlab1-lga01,192.0.2.10/26,192.0.2.1,\"8.8.8.8; 2001:4860:4860::8888\",2001:db8::10/64,2001:db8::1,15b31003.mrom 808610d3.rom,arm64
mlab2-lga01, 192.0.2.11/26 ,192.0.2.1,8.8.8.8,,,,
";

    /// The first host's fields are on lines 3 to 10, the second's on 13 to 16.
    const SAME_JSON: &str = r#"[
  {
    "hostname": "mlab1-lga01",
    "ipv4": "192.0.2.10/26",
    "gateway": "192.0.2.1",
    "dns": ["8.8.8.8", "2001:4860:4860::8888"],
    "ipv6": "2001:db8::10/64",
    "ipv6_gateway": "2001:db8::1",
    "roms": ["15b31003.mrom", "808610d3.rom"],
    "arch": "arm64"
  },
  {
    "hostname": "mlab2-lga01",
    "ipv4": "192.0.2.11/26",
    "gateway": "192.0.2.1",
    "dns": ["8.8.8.8"]
  }
]
"#;

    fn load_as(ext: &str, text: &str) -> Result<Vec<Host>> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join(format!("hosts.{ext}"));
        fs_err::write(&file, text)?;
        load(&file)
    }

    /// Hosts without their origin, which differs between formats.
    fn without_origin(hosts: Vec<Host>) -> Vec<Host> {
        hosts
            .into_iter()
            .map(|h| Host {
                origin: String::new(),
                ..h
            })
            .collect()
    }

    /// Asserts that loading `text` as `hosts.<ext>` fails with an error
    /// whose first line names `line` of the file and contains `message`.
    fn assert_error_at(ext: &str, text: &str, line: usize, message: &str) {
        let err = format!("{:#}", load_as(ext, text).unwrap_err());
        let first = err
            .lines()
            .find(|l| l.contains(message))
            .unwrap_or_else(|| panic!("no `{message}` in:\n{err}"));
        let location = format!("hosts.{ext}:{line}:");
        assert!(first.contains(&location), "not at {location}:\n{err}");
    }

    #[test]
    fn toml_csv_and_json_inventories_load_to_the_same_hosts() {
        let toml = without_origin(load_as("toml", SAME_TOML).unwrap());
        let csv = without_origin(load_as("csv", SAME_CSV).unwrap());
        let json = without_origin(load_as("json", SAME_JSON).unwrap());
        let table = format!("{{\"host\": {SAME_JSON}}}");
        let json_table = without_origin(load_as("json", &table).unwrap());
        assert_eq!(csv, toml);
        assert_eq!(json, toml);
        assert_eq!(json_table, toml);
        let roms = vec!["15b31003.mrom".to_string(), "808610d3.rom".to_string()];
        assert_eq!(toml[0].roms, Some(roms));
        assert_eq!(toml[0].arch, Arch::Arm64);
        assert_eq!(toml[0].vars["dns2"], "2001:4860:4860::8888");
        assert_eq!(toml[1].roms, None);
        assert_eq!(toml[1].arch, Arch::X86_64);
        assert!(!toml[1].vars.contains_key("ipv6"));
    }

    /// The same hosts, the first with two MACs and two variables of its own.
    fn with_identity(ext: &str) -> String {
        match ext {
            "toml" => SAME_TOML.replace(
                "arch = \"arm64\"\n",
                "arch = \"arm64\"\nmac = [\"52:54:00:12:34:56\", \"52-54-00-AB-CD-EF\"]\n\
                 vars = { project = \"mlab-oti\", drac = \"192.0.2.40\" }\n",
            ),
            "csv" => SAME_CSV
                .replace(",roms,arch\n", ",roms,arch,mac,vars.project,vars.drac\n")
                .replace(
                    ",arm64\n",
                    ",arm64,52:54:00:12:34:56 52-54-00-AB-CD-EF,mlab-oti,192.0.2.40\n",
                )
                .replace(",,,,\n", ",,,,,,,\n"),
            _ => SAME_JSON.replace(
                "\"arch\": \"arm64\"\n",
                "\"arch\": \"arm64\", \"mac\": [\"52:54:00:12:34:56\", \"52-54-00-AB-CD-EF\"], \
                 \"vars\": {\"project\": \"mlab-oti\", \"drac\": \"192.0.2.40\"}\n",
            ),
        }
    }

    #[test]
    fn macs_and_own_vars_load_alike_from_every_format() {
        let toml = without_origin(load_as("toml", &with_identity("toml")).unwrap());
        let csv = without_origin(load_as("csv", &with_identity("csv")).unwrap());
        let json = without_origin(load_as("json", &with_identity("json")).unwrap());
        assert_eq!(csv, toml);
        assert_eq!(json, toml);
        // MACs in iPXE's form; the first is `{{mac}}`, all are `{{macs}}`.
        assert_eq!(toml[0].macs, ["52:54:00:12:34:56", "52:54:00:ab:cd:ef"]);
        assert_eq!(toml[0].vars["mac"], "52:54:00:12:34:56");
        assert_eq!(toml[0].vars["macs"], "52:54:00:12:34:56 52:54:00:ab:cd:ef");
        assert_eq!(toml[0].vars["project"], "mlab-oti");
        assert!(toml[1].macs.is_empty() && !toml[1].vars.contains_key("project"));
    }

    #[test]
    fn a_hosts_own_vars_render_over_the_recipes_defaults() {
        let hosts = load_as("toml", &with_identity("toml")).unwrap();
        let recipe = Vars::from([("project".to_string(), Some("default".to_string()))]);
        let template = "{{project}} {{drac}} {{mac}}";
        let text = hosts[0].render(template, &recipe, template::Syntax::Ipxe);
        assert_eq!(text.unwrap(), "mlab-oti 192.0.2.40 52:54:00:12:34:56");
        let text = hosts[1].render("{{project}}", &recipe, template::Syntax::Ipxe);
        assert_eq!(text.unwrap(), "default");
        let err = hosts[1].render("{{mac}}", &recipe, template::Syntax::Ipxe);
        assert!(
            err.unwrap_err().message.contains("host `mlab2-lga01`"),
            "a host without a MAC"
        );
    }

    #[test]
    fn macs_are_checked_and_unique_across_hosts() {
        let with = |mac: &str| with_identity("toml").replace("\"52-54-00-AB-CD-EF\"", mac);
        let err = |text: &str| format!("{:#}", load_as("toml", text).unwrap_err());
        assert!(err(&with("\"52:54:00:12:34\""))
            .contains("`mac` `52:54:00:12:34` is not a MAC address"));
        assert!(err(&with("\"01:00:5e:00:00:01\"")).contains("is a group (multicast) address"));
        assert!(err(&with("\"00:00:00:00:00:00\"")).contains("is all zeros"));
        assert!(err(&with("\"52:54:00:12:34:56\"")).contains("lists `52:54:00:12:34:56` twice"));
        // The second host (last in the file) gets the first's MAC, in other letters.
        let shared = format!("{}mac = [\"52:54:00:AB:CD:EF\"]\n", with_identity("toml"));
        let e = err(&shared);
        assert!(
            e.contains(
                "host `mlab2-lga01`: `mac` 52:54:00:ab:cd:ef is already used by host `mlab1-lga01`"
            ),
            "{e}"
        );
    }

    #[test]
    fn macs_are_read_in_ipxes_forms() {
        let want = Some("52:54:00:ab:cd:ef".to_string());
        assert_eq!(normal_mac("52:54:00:AB:CD:EF"), want);
        assert_eq!(normal_mac("52-54-00-ab-cd-ef"), want);
        assert_eq!(normal_mac("525400abcdef"), want);
        assert_eq!(normal_mac("52:54:00:ab:cd"), None);
        assert_eq!(normal_mac("52:54:00:ab:cd:eg"), None);
        assert_eq!(normal_mac("5:254:00:ab:cd:ef"), None);
        assert_eq!(normal_mac("525400abcdeg"), None);
    }

    #[test]
    fn own_vars_may_not_hide_host_fields() {
        let text = with_identity("toml").replace("project = ", "mac = ");
        let e = format!("{:#}", load_as("toml", &text).unwrap_err());
        assert!(
            e.contains("`vars.mac` would hide the host's own `{{mac}}`"),
            "{e}"
        );
        let text = with_identity("toml").replace("project = ", "imgverify = ");
        let e = format!("{:#}", load_as("toml", &text).unwrap_err());
        assert!(
            e.contains("`vars.imgverify` would hide Kiln's `{{imgverify}}`"),
            "{e}"
        );
        let text = with_identity("toml").replace("project = ", "Project = ");
        let e = format!("{:#}", load_as("toml", &text).unwrap_err());
        assert!(e.contains("`vars.Project` is not a variable name"), "{e}");
        let csv = with_identity("csv").replace("vars.project", "vars.hostname");
        let e = format!("{:#}", load_as("csv", &csv).unwrap_err());
        assert!(e.contains("`vars.hostname` would hide"), "{e}");
    }

    #[test]
    fn origins_name_the_row_or_object() {
        let csv = load_as("csv", SAME_CSV).unwrap();
        assert!(
            csv[0].origin.ends_with("hosts.csv:4:1"),
            "{}",
            csv[0].origin
        );
        assert!(
            csv[1].origin.ends_with("hosts.csv:5:1"),
            "{}",
            csv[1].origin
        );
        let json = load_as("json", SAME_JSON).unwrap();
        assert!(
            json[1].origin.ends_with("hosts.json:12:3"),
            "{}",
            json[1].origin
        );
    }

    #[test]
    fn an_empty_roms_list_differs_from_none() {
        let toml = SAME_TOML.replace(r#"["15b31003.mrom", "808610d3.rom"]"#, "[]");
        assert_eq!(load_as("toml", &toml).unwrap()[0].roms, Some(vec![]));
        let json = SAME_JSON.replace(r#"["15b31003.mrom", "808610d3.rom"]"#, "[]");
        assert_eq!(load_as("json", &json).unwrap()[0].roms, Some(vec![]));
    }

    #[test]
    fn roms_and_arch_are_checked_in_toml() {
        let bad = SAME_TOML.replace("808610d3.rom", "../808610d3.rom");
        let err = format!("{:#}", load_as("toml", &bad).unwrap_err());
        assert!(
            err.contains("host `mlab1-lga01`: `roms` `../808610d3.rom` is not a ROM file name"),
            "{err}"
        );
        let bad = SAME_TOML.replace("\"arm64\"", "\"riscv64\"");
        let err = format!("{:#}", load_as("toml", &bad).unwrap_err());
        assert!(
            err.contains("host `mlab1-lga01`: `arch` `riscv64` is not one of `x86_64`, `arm64`"),
            "{err}"
        );
    }

    #[test]
    fn csv_errors_name_the_host_field_and_row() {
        let ipv4 = "192.0.2.11/26 ,192.0.2.1,";
        let no_gateway = SAME_CSV.replace(ipv4, "192.0.2.11/26 ,,");
        assert_error_at(
            "csv",
            &no_gateway,
            5,
            "host `mlab2-lga01`: `gateway` is missing",
        );
        let bad = SAME_CSV.replace("192.0.2.11/26", "192.0.2.311/26");
        let why = "host `mlab2-lga01`: `ipv4` `192.0.2.311` is not an IPv4 address";
        assert_error_at("csv", &bad, 5, why);
        let dup = SAME_CSV.replace("mlab2-lga01", "mlab1-lga01");
        let why = "host `mlab1-lga01`: `hostname` mlab1-lga01 is already used";
        assert_error_at("csv", &dup, 5, why);
        let dup = SAME_CSV.replace("192.0.2.11/26", "192.0.2.10/26");
        let why = "host `mlab2-lga01`: `ipv4` 192.0.2.10 is already used by host `mlab1-lga01`";
        assert_error_at("csv", &dup, 5, why);
        let bad = SAME_CSV.replace("808610d3.rom", "808610d3.bin");
        let why = "host `mlab1-lga01`: `roms` `808610d3.bin` is not a ROM file name";
        assert_error_at("csv", &bad, 4, why);
        let dup = SAME_CSV.replace("808610d3.rom", "15b31003.mrom");
        let why = "host `mlab1-lga01`: `roms` lists `15b31003.mrom` twice";
        assert_error_at("csv", &dup, 4, why);
        let bad = SAME_CSV.replace(",arm64", ",aarch64");
        let why = "host `mlab1-lga01`: `arch` `aarch64` is not one of `x86_64`, `arm64`";
        assert_error_at("csv", &bad, 4, why);
    }

    #[test]
    fn csv_unknown_columns_suggest_the_nearest_field() {
        let bad = SAME_CSV.replace(",arch\n", ",arc\n");
        assert_error_at("csv", &bad, 2, "unknown column `arc`");
        let err = format!("{:#}", load_as("csv", &bad).unwrap_err());
        assert!(err.contains("did you mean `arch`?"), "{err}");
        let bad = SAME_CSV.replace(",arch\n", ",ipv4\n");
        assert_error_at("csv", &bad, 2, "column `ipv4` appears twice");
    }

    #[test]
    fn csv_rows_have_as_many_cells_as_the_header() {
        let bad = SAME_CSV.replace("8.8.8.8,,,,", "8.8.8.8,,,");
        let why = "host `mlab2-lga01`: the row has 7 cells, the header 8";
        assert_error_at("csv", &bad, 5, why);
    }

    #[test]
    fn json_errors_name_the_host_field_and_line() {
        let ipv4 = "\"192.0.2.11/26\",\n";
        let no_gateway =
            SAME_JSON.replace(&format!("{ipv4}    \"gateway\": \"192.0.2.1\",\n"), ipv4);
        assert_error_at(
            "json",
            &no_gateway,
            12,
            "host `mlab2-lga01`: `gateway` is missing",
        );
        let bad = SAME_JSON.replace("192.0.2.11/26", "192.0.2.311/26");
        let why = "host `mlab2-lga01`: `ipv4` `192.0.2.311` is not an IPv4 address";
        assert_error_at("json", &bad, 14, why);
        let dup = SAME_JSON.replace("mlab2-lga01", "mlab1-lga01");
        let why = "host `mlab1-lga01`: `hostname` mlab1-lga01 is already used";
        assert_error_at("json", &dup, 13, why);
        let dup = SAME_JSON.replace("192.0.2.11/26", "192.0.2.10/26");
        let why = "host `mlab2-lga01`: `ipv4` 192.0.2.10 is already used by host `mlab1-lga01`";
        assert_error_at("json", &dup, 14, why);
        let bad = SAME_JSON.replace("808610d3.rom", "808610d3.bin");
        let why = "host `mlab1-lga01`: `roms` `808610d3.bin` is not a ROM file name";
        assert_error_at("json", &bad, 9, why);
        let bad = SAME_JSON.replace("\"arm64\"", "\"aarch64\"");
        let why = "host `mlab1-lga01`: `arch` `aarch64` is not one of `x86_64`, `arm64`";
        assert_error_at("json", &bad, 10, why);
    }

    #[test]
    fn json_keys_are_fields_given_once() {
        let bad = SAME_JSON.replace(
            "\"gateway\": \"192.0.2.1\",\n    \"dns\": [\"8.8.8.8\"]\n",
            "\"gatway\": \"192.0.2.1\",\n    \"dns\": [\"8.8.8.8\"]\n",
        );
        assert_error_at("json", &bad, 15, "host `mlab2-lga01`: unknown key `gatway`");
        let err = format!("{:#}", load_as("json", &bad).unwrap_err());
        assert!(err.contains("did you mean `gateway`?"), "{err}");
        let dup = SAME_JSON.replace(
            "\"dns\": [\"8.8.8.8\"]\n",
            "\"dns\": [\"8.8.8.8\"],\n    \"ipv4\": \"192.0.2.12/26\"\n",
        );
        assert_error_at("json", &dup, 17, "host `mlab2-lga01`: `ipv4` appears twice");
    }

    #[test]
    fn json_values_are_strings_or_arrays_of_strings() {
        let bad = SAME_JSON.replace("[\"8.8.8.8\"]", "\"8.8.8.8\"");
        let why = "host `mlab2-lga01`: `dns` must be an array of strings";
        assert_error_at("json", &bad, 16, why);
        let bad = SAME_JSON.replace("\"arm64\"", "64");
        assert_error_at(
            "json",
            &bad,
            10,
            "host `mlab1-lga01`: `arch` must be a string",
        );
        let absent = SAME_JSON.replace("\"arm64\"", "null");
        assert_eq!(load_as("json", &absent).unwrap()[0].arch, Arch::X86_64);
    }

    #[test]
    fn json_syntax_errors_give_the_line() {
        let bad = SAME_JSON.replace(
            "\"192.0.2.1\",\n    \"dns\": [\"8.8.8.8\"]",
            "\"192.0.2.1\"\n    \"dns\": [\"8.8.8.8\"]",
        );
        assert_error_at("json", &bad, 16, "not valid JSON: expected `,` or `}`");
    }

    #[test]
    fn json_of_the_wrong_shape_says_what_an_inventory_is() {
        let why = "an inventory is an array of hosts or {\"host\": [...]}: unknown field `hosts`";
        assert_error_at("json", "{\"hosts\": []}", 1, why);
        let bad = format!("[{SAME_JSON}]");
        assert_error_at("json", &bad, 1, "a host is a JSON object of fields");
    }

    #[test]
    fn other_extensions_are_refused() {
        let err = format!("{:#}", load_as("yaml", "host: []").unwrap_err());
        assert!(
            err.contains("hosts.yaml: an inventory is a `.toml`, `.csv` or `.json` file"),
            "{err}"
        );
    }

    #[test]
    fn empty_inventories_are_errors() {
        let err = format!("{:#}", load_as("csv", "# nothing yet\n").unwrap_err());
        assert!(err.contains("the inventory lists no host"), "{err}");
        let err = format!("{:#}", load_as("json", "[]").unwrap_err());
        assert!(err.contains("the inventory lists no host"), "{err}");
    }

    #[test]
    fn every_field_has_a_slot() {
        let mut raw = RawHost::default();
        for field in FIELDS {
            assert!(slot(&mut raw, field).is_some(), "{field}");
        }
        assert!(slot(&mut raw, "dns1").is_none());
    }

    #[test]
    fn host_names_follow_rfc_1123() {
        assert!(check_hostname("mlab1-lga01.measurement-lab.org").is_ok());
        assert!(check_hostname("-bad").is_err());
        assert!(check_hostname("under_score").is_err());
        assert!(check_hostname("a..b").is_err());
    }
}

//! Host inventories (`recipes/hosts.toml`): machines with a static
//! identity, validated once on load. Each host becomes a set of template
//! variables (`{{hostname}}`, `{{ipv4_address}}`, `{{ipv4_netmask}}`…) for
//! per-host kernel arguments and scripts.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::path::Path;

use anyhow::Result;

use super::schema::{RawHost, RawInventory};
use super::{Doc, RecipeErrors, SourceError};

/// One validated host.
#[derive(Debug, Clone)]
pub struct Host {
    pub hostname: String,
    /// `file:line:col` of its `[[host]]` table, for messages.
    pub origin: String,
    /// Template variable → value; a field the host does not have is absent.
    pub vars: BTreeMap<String, String>,
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
];

pub fn load(file: &Path) -> Result<Vec<Host>> {
    let doc = Doc::read(file)?;
    let raw: RawInventory = doc.parse()?;
    let mut errors = Vec::new();
    let mut hosts = Vec::new();
    for h in raw.host {
        let span = h.span();
        match host(&doc, span.clone(), h.into_inner()) {
            Ok(host) => hosts.push((span, host)),
            Err(e) => errors.push(e),
        }
    }
    check_unique(&doc, &hosts, &mut errors);
    if hosts.is_empty() && errors.is_empty() {
        errors.push(doc.error(0..0, "the inventory lists no `[[host]]`"));
    }
    if !errors.is_empty() {
        return Err(RecipeErrors(errors).into());
    }
    Ok(hosts.into_iter().map(|(_, h)| h).collect())
}

fn host(doc: &Doc, span: Range<usize>, raw: RawHost) -> Result<Host, SourceError> {
    let hostname = raw
        .hostname
        .ok_or_else(|| doc.error(span.clone(), "host without `hostname`"))?;
    let name = hostname.get_ref().clone();
    let fail = |s: Range<usize>, field: &str, why: String| {
        doc.error(s, format!("host `{name}`: `{field}` {why}"))
    };
    if let Err(why) = check_hostname(&name) {
        return Err(fail(hostname.span(), "hostname", why));
    }
    let mut vars = BTreeMap::from([("hostname".to_string(), name.clone())]);
    let ipv4 = raw
        .ipv4
        .ok_or_else(|| fail(span.clone(), "ipv4", "is missing".into()))?;
    let (addr, prefix) =
        parse_v4_cidr(ipv4.get_ref()).map_err(|why| fail(ipv4.span(), "ipv4", why))?;
    let gateway = raw
        .gateway
        .ok_or_else(|| fail(span.clone(), "gateway", "is missing".into()))?;
    let gw = parse_v4_gateway(gateway.get_ref(), addr, prefix)
        .map_err(|why| fail(gateway.span(), "gateway", why))?;
    vars.insert("ipv4".into(), ipv4.get_ref().clone());
    vars.insert("ipv4_address".into(), addr.to_string());
    vars.insert("ipv4_prefix".into(), prefix.to_string());
    vars.insert("ipv4_netmask".into(), netmask(prefix).to_string());
    vars.insert("ipv4_gateway".into(), gw.to_string());
    for (i, d) in raw.dns.iter().enumerate() {
        let ip: IpAddr = d.get_ref().parse().map_err(|_| {
            fail(
                d.span(),
                "dns",
                format!("`{}` is not an IP address", d.get_ref()),
            )
        })?;
        vars.insert(format!("dns{}", i + 1), ip.to_string());
    }
    if let Some(v6) = &raw.ipv6 {
        let (a, p) = parse_v6_cidr(v6.get_ref()).map_err(|why| fail(v6.span(), "ipv6", why))?;
        vars.insert("ipv6".into(), v6.get_ref().clone());
        vars.insert("ipv6_address".into(), a.to_string());
        vars.insert("ipv6_prefix".into(), p.to_string());
    }
    if let Some(g) = &raw.ipv6_gateway {
        let ip: Ipv6Addr = g.get_ref().parse().map_err(|_| {
            fail(
                g.span(),
                "ipv6_gateway",
                format!("`{}` is not an IPv6 address", g.get_ref()),
            )
        })?;
        vars.insert("ipv6_gateway".into(), ip.to_string());
    }
    let (line, col) = super::diag::line_col(&doc.text, span.start);
    Ok(Host {
        hostname: name,
        origin: format!("{}:{line}:{col}", doc.file.display()),
        vars,
    })
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

/// Host names (case-insensitively) and addresses appear once.
fn check_unique(doc: &Doc, hosts: &[(Range<usize>, Host)], errors: &mut Vec<SourceError>) {
    let mut seen: HashMap<(String, String), &str> = HashMap::new();
    for (span, h) in hosts {
        for field in ["hostname", "ipv4_address", "ipv6_address"] {
            let Some(value) = h.vars.get(field) else {
                continue;
            };
            let key = (field.to_string(), value.to_ascii_lowercase());
            if let Some(first) = seen.insert(key, &h.hostname) {
                let what = field.trim_end_matches("_address");
                errors.push(doc.error(
                    span.clone(),
                    format!(
                        "host `{}`: `{what}` {value} is already used by host `{first}`",
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
        std::fs::write(&file, text)?;
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

    #[test]
    fn host_names_follow_rfc_1123() {
        assert!(check_hostname("mlab1-lga01.measurement-lab.org").is_ok());
        assert!(check_hostname("-bad").is_err());
        assert!(check_hostname("under_score").is_err());
        assert!(check_hostname("a..b").is_err());
    }
}

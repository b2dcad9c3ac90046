//! `serve --print-dnsmasq`: the dnsmasq configuration that does `serve`'s DHCP and TFTP part
//! for operators who keep dnsmasq: boot files by client architecture (DHCP option 93), the
//! script URL for clients that are iPXE already (user class `iPXE`, so no chain loop), and a
//! fixed lease per inventory host with a MAC.

use std::fmt::Write as _;
use std::path::Path;

use crate::arch::Arch;
use crate::recipe::ipxe::Ipxe;

/// DHCP option 93 client architectures and the stage1 file each boots: BIOS, x86-64 UEFI (7
/// and 9, both used by firmware), arm64 UEFI.
const CLIENTS: &[(&str, &[u8], Arch, &str)] = &[
    ("bios", &[0], Arch::X86_64, "undionly.kpxe"),
    ("efi64", &[7, 9], Arch::X86_64, "ipxe.efi"),
    ("arm64", &[11], Arch::Arm64, "ipxe.efi"),
];

/// The configuration, for the recipe `recipe` (its `[ipxe]` section), the stage1 files under
/// `stage1_dir` (dnsmasq's TFTP root) and scripts at `url`.
pub fn config(recipe: &str, ipxe: &Ipxe, stage1_dir: &Path, url: &str) -> String {
    let url = url.trim_end_matches('/');
    let mut out = String::new();
    let mut line = |text: &str| {
        out.push_str(text);
        out.push('\n');
    };
    line(&format!(
        "# dnsmasq configuration for Kiln's `{recipe}` recipe and its inventory, from\n\
         # `cargo xtask serve --print-dnsmasq`. dnsmasq answers DHCP and TFTP; `cargo xtask\n\
         # serve` answers HTTP at {url}/. Beside another DHCP server, answer PXE only:\n\
         #   dhcp-range=<your subnet's address>,proxy"
    ));
    line("enable-tftp");
    line(&format!("tftp-root={}", stage1_dir.display()));
    line("# A client that runs iPXE already gets its script over HTTP (no chain loop).");
    line("dhcp-userclass=set:ipxe,iPXE");
    line(&format!("dhcp-boot=tag:ipxe,{url}/ipxe?mac=${{netX/mac}}"));
    line("# Other PXE clients get iPXE for their firmware (DHCP option 93).");
    for (tag, arches, arch, file) in CLIENTS {
        let built = ipxe
            .targets
            .get(arch)
            .is_some_and(|ts| ts.iter().any(|t| t.file == *file));
        if !built {
            line(&format!(
                "# (no {arch} {file} in the recipe's targets: {tag} clients get nothing)"
            ));
            continue;
        }
        for a in *arches {
            line(&format!("dhcp-match=set:{tag},option:client-arch,{a}"));
        }
        line(&format!("dhcp-boot=tag:!ipxe,tag:{tag},{arch}/{file}"));
    }
    let hosts: Vec<_> = ipxe.hosts.iter().filter(|h| !h.macs.is_empty()).collect();
    if !hosts.is_empty() {
        line("# Inventory hosts: the address and name each has in the inventory.");
    }
    for h in hosts {
        let _ = writeln!(
            out,
            "dhcp-host={},{},{}",
            h.macs.join(","),
            h.ipv4_address,
            h.hostname
        );
    }
    out
}

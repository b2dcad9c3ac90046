//! `cargo xtask serve`: the lab boot server over a built output directory, on 127.0.0.1. HTTP
//! semantics (GET, HEAD, Range, lengths), per-MAC scripts from the inventory, paths that would
//! leave the output refused, an edited inventory picked up without a restart, Ctrl-C; and the
//! dnsmasq configuration, checked by dnsmasq itself.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::common::*;

/// A running `serve`, stopped with SIGINT when dropped.
struct Serving {
    child: Child,
    port: u16,
    /// Its stdout after the first line: the request log.
    log: std::sync::mpsc::Receiver<String>,
}

impl Serving {
    fn start(recipes: &Path, output: &Path) -> Serving {
        let mut cmd = kiln(recipes, output, &shared_cache());
        cmd.args(["serve", "--http", "127.0.0.1:0"])
            .args(["--var", "stage2_url=http://192.0.2.1/stage2"])
            .stdout(Stdio::piped());
        let mut child = cmd.spawn().expect("starting xtask serve");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("serve said nothing").unwrap();
        let port = first
            .split("http://127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in `{first}`"));
        let (tx, log) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Serving { child, port, log }
    }

    /// Sends `request` (a request line and headers, without the blank line) as written, so
    /// that paths reach the server unnormalised; returns status, headers (lowercase), body.
    fn raw(&self, request: &str) -> (u16, String, Vec<u8>) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "{request}\r\nHost: test\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).unwrap();
        let split = reply
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a reply with headers");
        let head = String::from_utf8_lossy(&reply[..split]).to_ascii_lowercase();
        let status = head[9..12].parse().unwrap();
        (status, head, reply[split + 4..].to_vec())
    }

    fn get(&self, path: &str) -> (u16, String, Vec<u8>) {
        self.raw(&format!("GET {path} HTTP/1.1"))
    }

    /// The next request log line, within ten seconds.
    fn logged(&self) -> String {
        self.log
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("a log line per request")
    }

    fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on the child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().unwrap();
        let rest: Vec<String> = self.log.try_iter().collect();
        assert!(rest.iter().any(|l| l == "serve: stopped"), "{rest:?}");
        status
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const MAC1: &str = "52:54:00:0b:00:11";

/// Default recipes whose first inventory host has a MAC, and an output directory with a
/// kernel, a manifest, and a symlink that points outside it.
fn lab(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let recipes = copy_recipes(dir);
    edit(
        &recipes.join("hosts.toml"),
        "roms = [\"15b31003.mrom\", \"808610d3.rom\"]",
        &format!("roms = [\"15b31003.mrom\", \"808610d3.rom\"]\nmac = [\"{MAC1}\"]"),
    );
    let output = dir.join("output");
    std::fs::create_dir_all(output.join("stage2")).unwrap();
    let kernel: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    std::fs::write(output.join("stage2/stage2_vmlinuz"), kernel).unwrap();
    std::fs::write(output.join("manifest.json"), "{\"artifacts\": []}\n").unwrap();
    std::fs::write(dir.join("secret"), "outside").unwrap();
    std::os::unix::fs::symlink("../../secret", output.join("stage2/escape")).unwrap();
    (recipes, output)
}

#[test]
fn serve_answers_files_and_per_mac_scripts_and_refuses_escapes() {
    let dir = tempfile::tempdir().unwrap();
    let (recipes, output) = lab(dir.path());
    let server = Serving::start(&recipes, &output);
    // Files: whole, HEAD (length, no body), a range.
    let (status, head, body) = server.get("/stage2/stage2_vmlinuz");
    assert_eq!((status, body.len()), (200, 100_000), "{head}");
    assert!(head.contains("content-length: 100000"), "{head}");
    assert!(server
        .logged()
        .ends_with("GET /stage2/stage2_vmlinuz 200 100000"));
    let (status, head, body) = server.raw("HEAD /stage2/stage2_vmlinuz HTTP/1.1");
    assert!(status == 200 && head.contains("content-length: 100000") && body.is_empty());
    server.logged();
    let (status, head, body) =
        server.raw("GET /stage2/stage2_vmlinuz HTTP/1.1\r\nRange: bytes=256-259");
    assert_eq!((status, body), (206, vec![0, 1, 2, 3]), "{head}");
    assert!(
        head.contains("content-range: bytes 256-259/100000"),
        "{head}"
    );
    server.logged();
    let (status, _, body) = server.get("/manifest.json");
    assert_eq!((status, body), (200, b"{\"artifacts\": []}\n".to_vec()));
    server.logged();
    // Scripts: the host with that MAC (in any of iPXE's forms) gets its static identity; any
    // other machine the recipe's own script, which does DHCP. Both chain to --var stage2_url.
    let (status, _, body) = server.get("/ipxe?mac=52-54-00-0B-00-11");
    let script = String::from_utf8(body).unwrap();
    assert_eq!(status, 200);
    assert!(
        script.starts_with("#!ipxe")
            && script.contains("set kiln_ip 192.0.2.11\n")
            && script.contains("chain http://192.0.2.1/stage2/stage1to2.ipxe"),
        "{script}"
    );
    let line = server.logged();
    assert!(
        line.starts_with("http 127.0.0.1:")
            && line.contains(&format!(
                " GET /ipxe?mac=52-54-00-0B-00-11 200 {} host=mlab1-lga0t.example.net",
                script.len()
            )),
        "{line}"
    );
    let (_, _, body) = server.get("/ipxe?mac=52:54:00:99:99:99");
    let default = String::from_utf8(body).unwrap();
    assert!(default.contains("set kiln_ip \n"), "{default}");
    assert!(server.logged().ends_with("host=default"));
    // Nothing outside the output directory, whatever the path says.
    for path in [
        "/../secret",
        "/stage2/../../secret",
        "/stage2/%2e%2e/%2e%2e/secret",
        "/stage2/escape",
    ] {
        let (status, _, body) = server.get(path);
        assert_eq!(status, 403, "{path}");
        assert!(
            !String::from_utf8_lossy(&body).contains("outside"),
            "{path}"
        );
        assert!(server.logged().contains(" 403 "), "{path}");
    }
    assert_eq!(server.get("/stage2/missing").0, 404);
    server.logged();
    assert_eq!(server.raw("POST /manifest.json HTTP/1.1").0, 405);
    server.logged();
    // An inventory edit is picked up by the next script request, without a restart.
    edit(&recipes.join("hosts.toml"), MAC1, "52:54:00:0b:00:21");
    let (_, _, body) = server.get("/ipxe?mac=52:54:00:0b:00:21");
    assert!(String::from_utf8(body)
        .unwrap()
        .contains("set kiln_ip 192.0.2.11\n"));
    assert!(server.logged().contains("host=mlab1-lga0t.example.net"));
    // Ctrl-C stops it cleanly.
    let status = server.stop();
    assert!(status.success(), "{status}");
}

#[test]
fn serve_says_why_it_cannot_listen() {
    let dir = tempfile::tempdir().unwrap();
    let (recipes, output) = lab(dir.path());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = run_err(kiln(&recipes, &output, &shared_cache()).args(["serve", "--http", &addr]));
    assert!(
        err.contains(&format!("cannot listen on {addr}"))
            && err.contains("another server listens there"),
        "{err}"
    );
}

#[test]
fn the_dnsmasq_configuration_is_one_dnsmasq_accepts() {
    if !prereq::program("dnsmasq", "apt-get install dnsmasq-base, or run ci/setup") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (recipes, output) = lab(dir.path());
    let out = run_ok(kiln(&recipes, &output, &shared_cache()).args([
        "serve",
        "--print-dnsmasq",
        "--http",
        "192.0.2.1:8080",
    ]));
    let config = String::from_utf8(out.stdout).unwrap();
    for line in [
        "dhcp-boot=tag:ipxe,http://192.0.2.1:8080/ipxe?mac=${netX/mac}",
        "dhcp-boot=tag:!ipxe,tag:bios,x86_64/undionly.kpxe",
        "dhcp-boot=tag:!ipxe,tag:efi64,x86_64/ipxe.efi",
        "dhcp-boot=tag:!ipxe,tag:arm64,arm64/ipxe.efi",
        &format!("dhcp-host={MAC1},192.0.2.11,mlab1-lga0t.example.net"),
    ] {
        assert!(
            config.lines().any(|l| l == line),
            "no `{line}` in:\n{config}"
        );
    }
    let file = dir.path().join("dnsmasq.conf");
    std::fs::write(&file, &config).unwrap();
    let check = Command::new("dnsmasq")
        .arg("--test")
        .arg(format!("--conf-file={}", file.display()))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "dnsmasq refuses it: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    // Listening on every interface, the URL machines use must be given.
    let err = run_err(kiln(&recipes, &output, &shared_cache()).args([
        "serve",
        "--print-dnsmasq",
        "--http",
        "0.0.0.0:80",
    ]));
    assert!(err.contains("--url"), "{err}");
}

//! A static HTTP/1.1 file server on 127.0.0.1 for chain-boot tests: what a
//! boot server does for iPXE (GET of files under one directory), and no
//! more. One thread per connection, `Connection: close` after each reply.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};

/// A running server; it stops with the process (tests and boot checks are
/// short-lived).
pub struct Server {
    pub port: u16,
    /// Request lines served, in order (`GET /stage2/… 200`).
    pub log: Arc<Mutex<Vec<String>>>,
}

/// Serves `root` on an ephemeral port of 127.0.0.1.
pub fn serve(root: &Path) -> Result<Server> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1")?;
    let port = listener.local_addr()?.port();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (root, served) = (root.to_path_buf(), log.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let (root, served) = (root.clone(), served.clone());
            std::thread::spawn(move || {
                if let Ok(line) = handle(stream, &root) {
                    served.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            });
        }
    });
    Ok(Server { port, log })
}

fn handle(mut stream: TcpStream, root: &Path) -> std::io::Result<String> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // Headers are read and ignored: nothing here depends on them.
    let mut header = String::new();
    while reader.read_line(&mut header)? > 2 {
        header.clear();
    }
    let mut parts = request.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let file = resolve(root, target).filter(|p| p.is_file());
    let status = match (method, &file) {
        ("GET" | "HEAD", Some(path)) => {
            let body = fs_err::read(path)?;
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes())?;
            if method == "GET" {
                stream.write_all(&body)?;
            }
            200
        }
        ("GET" | "HEAD", None) => {
            stream.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )?;
            404
        }
        _ => {
            stream.write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
            405
        }
    };
    stream.flush()?;
    Ok(format!("{method} {target} {status}"))
}

/// Joins stdin/stdout to a TCP connection to `addr` until both sides are
/// done: what QEMU's `guestfwd=tcp:IP:PORT-cmd:…` runs for each guest
/// connection (its `tcp:` target form makes one connection, ever).
pub fn relay(addr: &str) -> Result<()> {
    let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    let mut to_server = stream.try_clone()?;
    let upstream = std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut to_server);
        let _ = to_server.shutdown(std::net::Shutdown::Write);
    });
    let mut from_server = stream;
    let mut stdout = std::io::stdout().lock();
    std::io::copy(&mut from_server, &mut stdout)?;
    // stdout is line-buffered: the reply's tail must leave now. The guest
    // may keep its side open; the server has closed, so the process ends
    // without waiting for `upstream`.
    stdout.flush()?;
    drop(upstream);
    Ok(())
}

/// The file a request path names under `root`; `None` for anything that
/// would leave it.
fn resolve(root: &Path, target: &str) -> Option<PathBuf> {
    let path = target.split('?').next()?.trim_start_matches('/');
    let rel = Path::new(path);
    rel.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| root.join(rel))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn get(port: u16, path: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn files_are_served_and_nothing_outside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        fs_err::create_dir(dir.path().join("stage2")).unwrap();
        fs_err::write(dir.path().join("stage2/a.ipxe"), "#!ipxe\n").unwrap();
        let server = serve(dir.path()).unwrap();
        let ok = get(server.port, "/stage2/a.ipxe");
        assert!(
            ok.starts_with("HTTP/1.1 200") && ok.ends_with("\r\n\r\n#!ipxe\n"),
            "{ok}"
        );
        assert!(get(server.port, "/../etc/passwd").starts_with("HTTP/1.1 404"));
        assert!(get(server.port, "/stage2/missing").starts_with("HTTP/1.1 404"));
    }
}

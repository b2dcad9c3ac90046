//! The HTTP side of `serve` (axum, with tower-http's `ServeFile` for HEAD, Range and lengths).
//! Paths are resolved here rather than by `ServeDir`, because a symlink under `output/` must not
//! lead outside it: the file's canonical path must lie under the root's.

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tower::ServiceExt as _;
use tower_http::services::ServeFile;

use super::scripts::Scripts;

struct Served {
    root: PathBuf,
    scripts: Scripts,
}

pub(super) async fn serve(addr: SocketAddr, root: PathBuf, scripts: Scripts) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| bind_error(addr, &e))?;
    let bound = listener.local_addr()?;
    println!(
        "serving {} on http://{bound}/ (scripts at /ipxe?mac=<mac>: {} inventory hosts with a MAC, the default script for others); Ctrl-C stops",
        root.display(),
        scripts.hosts()
    );
    let served = Arc::new(Served { root, scripts });
    let app = Router::new()
        .route("/ipxe", get(script))
        .fallback(file)
        .with_state(served)
        .layer(middleware::from_fn(log));
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stopped())
    .await
    .context("serving HTTP")?;
    println!("serve: stopped");
    Ok(())
}

/// Why an address cannot be bound, with what to do about it.
fn bind_error(addr: SocketAddr, e: &std::io::Error) -> anyhow::Error {
    let hint = match e.kind() {
        std::io::ErrorKind::PermissionDenied if addr.port() < 1024 => {
            ": ports below 1024 need root or CAP_NET_BIND_SERVICE (or use a port above 1023)"
        }
        std::io::ErrorKind::AddrInUse => ": another server listens there",
        std::io::ErrorKind::AddrNotAvailable => ": no interface of this machine has that address",
        _ => "",
    };
    anyhow::anyhow!("cannot listen on {addr} ({e}){hint}")
}

/// Resolves when Kiln's SIGINT/SIGTERM handler has seen a signal.
async fn stopped() {
    while !crate::tools::interrupt::interrupted() {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[derive(serde::Deserialize)]
struct ScriptQuery {
    mac: Option<String>,
}

/// `/ipxe?mac=<mac>`: that inventory host's script, or the default one.
async fn script(State(served): State<Arc<Served>>, Query(q): Query<ScriptQuery>) -> Response {
    let served = served.clone();
    let script =
        tokio::task::spawn_blocking(move || served.scripts.for_mac(q.mac.as_deref())).await;
    let Ok(script) = script else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let host = script.host.unwrap_or_else(|| "default".into());
    (
        [
            (
                header::CONTENT_TYPE,
                "text/plain; charset=utf-8".to_string(),
            ),
            (header::HeaderName::from_static("x-kiln-host"), host),
        ],
        script.text,
    )
        .into_response()
}

/// Any other path: a file under the root.
async fn file(State(served): State<Arc<Served>>, request: Request) -> Response {
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    match resolve(&served.root, request.uri().path()) {
        Ok(path) => match ServeFile::new(path).oneshot(request).await {
            Ok(response) => response.map(Body::new),
            Err(e) => match e {},
        },
        Err(status) => status.into_response(),
    }
}

/// The file `path` names under `root` (canonical): 403 for a path that would leave it (`..`, a
/// symlink pointing outside), 404 for one that is not there or not a file.
fn resolve(root: &Path, path: &str) -> Result<PathBuf, StatusCode> {
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .map_err(|_| StatusCode::BAD_REQUEST)?;
    let relative = Path::new(decoded.trim_start_matches('/'));
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
        || decoded.contains('\\')
    {
        return Err(StatusCode::FORBIDDEN);
    }
    let full = root.join(relative);
    let real = full.canonicalize().map_err(|_| StatusCode::NOT_FOUND)?;
    if !real.starts_with(root) {
        return Err(StatusCode::FORBIDDEN);
    }
    if !real.is_file() {
        return Err(StatusCode::NOT_FOUND);
    }
    Ok(real)
}

/// One line per request: client, method, path, status, bytes sent.
async fn log(
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let target = request.uri().to_string();
    let response = next.run(request).await;
    let length = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .or_else(|| http_body::Body::size_hint(response.body()).exact());
    let bytes = match method {
        Method::HEAD => 0,
        _ => length.unwrap_or(0),
    };
    let host = response
        .headers()
        .get("x-kiln-host")
        .and_then(|v| v.to_str().ok())
        .map(|h| format!(" host={h}"))
        .unwrap_or_default();
    println!(
        "http {client} {method} {target} {} {bytes}{host}",
        response.status().as_u16()
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_under_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("output");
        fs_err::create_dir_all(root.join("stage2")).unwrap();
        fs_err::write(root.join("stage2/k"), "kernel").unwrap();
        fs_err::write(dir.path().join("secret"), "no").unwrap();
        fs_err::os::unix::fs::symlink("../../secret", root.join("stage2/escape")).unwrap();
        fs_err::os::unix::fs::symlink("k", root.join("stage2/alias")).unwrap();
        let root = root.canonicalize().unwrap();
        assert_eq!(resolve(&root, "/stage2/k"), Ok(root.join("stage2/k")));
        assert_eq!(resolve(&root, "/stage2/alias"), Ok(root.join("stage2/k")));
        assert_eq!(resolve(&root, "/stage2/%6b"), Ok(root.join("stage2/k")));
        for bad in [
            "/../secret",
            "/stage2/../../secret",
            "/stage2/%2e%2e/%2e%2e/secret",
            "/stage2/escape",
        ] {
            assert_eq!(resolve(&root, bad), Err(StatusCode::FORBIDDEN), "{bad}");
        }
        assert_eq!(resolve(&root, "/stage2/none"), Err(StatusCode::NOT_FOUND));
        assert_eq!(resolve(&root, "/stage2"), Err(StatusCode::NOT_FOUND));
    }
}

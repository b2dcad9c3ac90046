//! Object-storage servers on 127.0.0.1 for the remote cache and publish
//! tests: moto's S3 server and gcp-storage-emulator (both from PyPI,
//! installed by ci/setup). Each test starts its own on a free port; a
//! missing server skips the test (`prereq`).

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A server process, stopped on drop.
pub struct Server {
    child: Child,
    pub port: u16,
}

impl Server {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the server now (as a crash or an operator would).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn installed(tool: &'static str) -> bool {
    super::prereq::program(tool, "ci/setup installs ci/requirements.txt with pip")
}

fn start(mut cmd: Command, port: u16) -> Server {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server { child, port };
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{cmd:?} did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    server
}

/// moto's S3 server (credentials not checked).
pub fn moto() -> Option<Server> {
    if !installed("moto_server") {
        return None;
    }
    let port = free_port();
    let mut cmd = Command::new("moto_server");
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
    Some(start(cmd, port))
}

/// moto's S3 server checking signatures against its IAM users: returns the
/// server and the access key id and secret of a user allowed `s3:*`, who
/// has created `bucket`.
pub fn moto_with_auth(bucket: &str) -> Option<(Server, String, String)> {
    if !installed("moto_server") {
        return None;
    }
    let port = free_port();
    let mut cmd = Command::new("moto_server");
    // The three IAM calls below are the only unsigned requests it accepts.
    cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", "3")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()]);
    let server = start(cmd, port);
    let script = r#"
import boto3, json, sys
endpoint, bucket = sys.argv[1], sys.argv[2]
boot = dict(endpoint_url=endpoint, region_name="us-east-1",
            aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
iam = boto3.client("iam", **boot)
iam.create_user(UserName="kiln")
iam.put_user_policy(UserName="kiln", PolicyName="s3", PolicyDocument=json.dumps(
    {"Version": "2012-10-17",
     "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
key = iam.create_access_key(UserName="kiln")["AccessKey"]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id=key["AccessKeyId"],
                  aws_secret_access_key=key["SecretAccessKey"])
s3.create_bucket(Bucket=bucket)
print(key["AccessKeyId"], key["SecretAccessKey"])
"#;
    let text = python(script, &[&server.endpoint(), bucket]);
    let (id, secret) = text.trim().split_once(' ').unwrap();
    Some((server, id.to_string(), secret.to_string()))
}

/// Points `cmd` at an S3 endpoint with these credentials (the standard
/// AWS environment object_store reads).
pub fn s3_env(cmd: &mut Command, endpoint: &str, key: &str, secret: &str) {
    cmd.env("AWS_ACCESS_KEY_ID", key)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_ENDPOINT", endpoint)
        .env("AWS_ALLOW_HTTP", "true");
}

/// Runs a Python script (boto3 comes with moto) and returns its stdout.
pub fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Creates `bucket` on moto (unsigned: moto without auth accepts it).
pub fn create_s3_bucket(server: &Server, bucket: &str) {
    let created = reqwest::blocking::Client::new()
        .put(format!("{}/{bucket}", server.endpoint()))
        .send()
        .unwrap();
    assert!(created.status().is_success(), "{created:?}");
}

/// gcp-storage-emulator with `bucket`, keeping its objects in `data` (so a
/// restart on the same directory finds them), on `port` or a free one.
pub fn gcs_emulator(data: &Path, bucket: &str, port: Option<u16>) -> Option<Server> {
    if !installed("gcp-storage-emulator") {
        return None;
    }
    let port = port.unwrap_or_else(free_port);
    let mut cmd = Command::new("gcp-storage-emulator");
    cmd.arg("-d")
        .arg(data)
        .args(["start", "-q", "--host", "127.0.0.1", "--port"])
        .arg(port.to_string())
        .args(["--default-bucket", bucket]);
    Some(start(cmd, port))
}

/// An object's bytes from the GCS emulator, `None` if it has none.
pub fn gcs_object(server: &Server, bucket: &str, name: &str) -> Option<Vec<u8>> {
    let name: String = name.replace('/', "%2F");
    let r = reqwest::blocking::get(format!(
        "{}/storage/v1/b/{bucket}/o/{name}?alt=media",
        server.endpoint()
    ))
    .unwrap();
    match r.status().as_u16() {
        404 => None,
        200 => Some(r.bytes().unwrap().to_vec()),
        s => panic!("GET {name}: HTTP {s}"),
    }
}

/// A relay in front of `upstream` that passes every connection through
/// until one whose request contains `trigger`: then it runs `on_trigger`
/// (which stops the server) and drops that connection and every later
/// one, as a server that died mid-transfer. Returns the relay's port.
pub fn fault_relay(
    upstream: u16,
    trigger: &'static str,
    on_trigger: impl FnOnce() + Send + 'static,
) -> u16 {
    use std::io::{Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut on_trigger = Some(on_trigger);
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            if on_trigger.is_none() {
                continue; // dropped: the server is gone
            }
            // The request head and the start of its body.
            client
                .set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 8192];
            while head.len() < 16384 {
                match client.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
                let text = String::from_utf8_lossy(&head);
                let bodiless = ["GET ", "HEAD ", "DELETE "]
                    .iter()
                    .any(|m| text.starts_with(m));
                let got_head = text.contains("\r\n\r\n");
                if text.contains(trigger) || (got_head && (bodiless || head.len() > 4096)) {
                    break;
                }
            }
            if String::from_utf8_lossy(&head).contains(trigger) {
                (on_trigger.take().unwrap())();
                continue;
            }
            client.set_read_timeout(None).unwrap();
            let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                continue;
            };
            server.write_all(&head).unwrap();
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c2, &mut s2);
                let _ = s2.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut server, &mut client);
                let _ = client.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    port
}

//! Istio's traffic-management tasks (istio.io/latest/docs/tasks/traffic-management/), replayed
//! end to end on the local mesh with the real `weft` binary, real processes and Istio's own kind
//! of YAML: fault injection, request timeouts, TCP traffic shifting, circuit breaking,
//! mirroring, ingress (HTTP, HTTPS SIMPLE / MUTUAL, PASSTHROUGH), egress (ALLOW_ANY,
//! REGISTRY_ONLY, ServiceEntry, TLS origination), locality failover and endpoint warm-up. Each
//! test asserts what the task shows a user (pages, status codes, response flags in the
//! sidecars' access logs, which endpoint served).
//!
//! The harness (the global lock shared with `local_mesh.rs`, processes stopped on drop, the HTTP
//! client) is in `common/mod.rs`. Small servers the tasks need are Python scripts run under
//! `weft run` (tcp-echo, a slow or failing HTTP app, a TLS server) or threads of this test
//! (an external HTTP server, a TLS server); certificates are generated here with rcgen.
//! Everything binds 127.0.0.1 / 127.0.x.y; every wait is bounded.
//!
//! These tests must not weaken what they check to pass: a failed request is a failure.

mod common;

use common::*;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use std::collections::BTreeMap;
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const JASON: &[(&str, &str)] = &[("end-user", "jason")];
const ANON: &[(&str, &str)] = &[];
/// What productpage shows when reviews did not answer in time.
const REVIEWS_UNAVAILABLE: &str = "Sorry, product reviews are currently unavailable for this book.";
/// What reviews shows when ratings failed.
const RATINGS_UNAVAILABLE: &str = "Ratings service is currently unavailable";

// ---------------------------------------------------------------------------------------------
// Helpers: access logs, YAML, Python apps, the client workload, CONNECT
// ---------------------------------------------------------------------------------------------

/// One access-log line in Istio's default text format.
#[derive(Debug, Clone)]
struct LogEntry {
    method: String,
    path: String,
    status: u16,
    flags: Vec<String>,
    authority: String,
    cluster: String,
}

impl LogEntry {
    fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
}

/// The access-log lines in `text` (other output, e.g. the application's, is skipped).
/// `[START] "METHOD PATH PROTO" CODE FLAGS DETAILS TERM "UPSTREAM_FAILURE" RX TX DUR UST "XFF"
/// "UA" "REQ_ID" "AUTHORITY" "UPSTREAM_HOST" CLUSTER ...`.
fn log_entries(text: &str) -> Vec<LogEntry> {
    text.lines()
        .filter(|l| l.starts_with('['))
        .filter_map(|l| {
            let parts: Vec<&str> = l.split('"').collect();
            if parts.len() < 15 {
                return None;
            }
            let mut req = parts[1].split(' ');
            let method = req.next()?.to_string();
            let path = req.next()?.to_string();
            let mut after = parts[2].split_whitespace();
            let status = after.next()?.parse().ok()?;
            let flags = after
                .next()?
                .split(',')
                .filter(|f| *f != "-")
                .map(str::to_string)
                .collect();
            let cluster = parts[14]
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_string();
            Some(LogEntry {
                method,
                path,
                status,
                flags,
                authority: parts[11].to_string(),
                cluster,
            })
        })
        .collect()
}

/// Writes `text` to `dir/name` and applies it with `weft apply -f`.
fn apply_yaml(control: &str, dir: &Path, name: &str, text: &str) -> Instant {
    let path = dir.join(name);
    write(&path, text);
    apply(control, &path)
}

fn python3_available() -> bool {
    Command::new("python3")
        .args(["-c", "import ssl, http.server, socketserver"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn require_python3() {
    assert!(
        python3_available(),
        "python3 (with ssl, http.server) is needed to run the task's small servers"
    );
}

/// Istio's tcp-echo: echoes each line with a prefix (`one ` for v1, `two ` for v2).
const TCP_ECHO: &str = r#"
import os, sys, socketserver
host, port = os.environ["WEFT_LISTEN_ADDR"].rsplit(":", 1)
prefix = sys.argv[1].encode() + b" "
class H(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(prefix + line)
            self.wfile.flush()
class S(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
print("tcp-echo listening on", host, port, flush=True)
S((host, int(port)), H).serve_forever()
"#;

/// A small HTTP app: answers `served by NAME PATH` after `argv[1]` seconds, with 500 while the
/// file `argv[2]` exists; prints `SEEN HOST PATH` for every request.
const SMALL_HTTP: &str = r#"
import os, sys, time, http.server
host, port = os.environ["WEFT_LISTEN_ADDR"].rsplit(":", 1)
name = os.environ.get("WEFT_WORKLOAD_NAME", "?")
delay = float(sys.argv[1])
flag = sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Head and body go out in two writes: with Nagle, the body would wait for the sidecar's
    # delayed ACK (40 ms) on a connection past its quick-ACK start.
    disable_nagle_algorithm = True
    def do_GET(self):
        time.sleep(delay)
        code = 500 if os.path.exists(flag) else 200
        body = ("served by %s %s\n" % (name, self.path)).encode()
        self.send_response(code)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        # One write per line: handler threads finish together (mirrored copies), and print()
        # with several arguments writes piece by piece, interleaving their lines.
        sys.stdout.write(f"SEEN {self.headers.get('host')} {self.path}\n")
        sys.stdout.flush()
    def log_message(self, *a):
        pass
print(name, "listening on", host, port, flush=True)
http.server.ThreadingHTTPServer((host, int(port)), H).serve_forever()
"#;

/// A TLS server with its own certificate (`argv[1]`, key `argv[2]`), as Istio's my-nginx.
const TLS_SERVER: &str = r#"
import os, ssl, sys, http.server
host, port = os.environ["WEFT_LISTEN_ADDR"].rsplit(":", 1)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"served by my-nginx over TLS\n"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
srv = http.server.ThreadingHTTPServer((host, int(port)), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("my-nginx listening on", host, port, flush=True)
srv.serve_forever()
"#;

/// Writes a script to `dir/name` and returns its path.
fn script(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    write(&path, text);
    path.display().to_string()
}

/// The `sleep` client workload Istio's tasks send requests from; returns its sidecar's explicit
/// outbound proxy address once it is registered.
fn start_client(up: &Up, labels: &str) -> (Proc, SocketAddr) {
    let p = up.run("client", labels, 18999, &["sleep", "600"]);
    let ip = wait_for(Duration::from_secs(30), || up.workload_ip("client"))
        .expect("the client workload did not register within 30 s");
    let addr = format!("{ip}:15001")
        .parse()
        .expect("client outbound address");
    (p, addr)
}

fn wait_synced(up: &Up, names: &[&str]) {
    assert!(
        wait_for(Duration::from_secs(20), || up.synced(names).then_some(())).is_some(),
        "proxies {names:?} not registered and synced within 20 s"
    );
}

/// One GET through a sidecar's explicit proxy (absolute form) on a fresh connection.
fn proxied_get(
    outbound: SocketAddr,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Response, String> {
    let authority = url
        .strip_prefix("http://")
        .and_then(|r| r.split('/').next())
        .unwrap_or("");
    let mut c = HttpClient::new(outbound);
    let mut h = headers.to_vec();
    h.push(("connection", "close"));
    c.get(url, authority, &h)
}

/// Polls `url` through the sidecar until it answers `status` (bounded); returns that response.
fn wait_status(outbound: SocketAddr, url: &str, status: u16, limit: Duration) -> Response {
    let mut last = String::new();
    wait_for(limit, || match proxied_get(outbound, url, &[]) {
        Ok(r) if r.status == status => Some(r),
        Ok(r) => {
            last = format!(
                "HTTP {}: {}",
                r.status,
                r.body.chars().take(200).collect::<String>()
            );
            None
        }
        Err(e) => {
            last = e;
            None
        }
    })
    .unwrap_or_else(|| panic!("GET {url} never answered {status} within {limit:?}; last: {last}"))
}

/// A `CONNECT target` tunnel through a sidecar, established (reads time out after 5 s).
fn open_tunnel(outbound: SocketAddr, target: &str) -> Result<BufReader<TcpStream>, String> {
    let s = TcpStream::connect_timeout(&outbound, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    r.get_mut()
        .write_all(format!("CONNECT {target} HTTP/1.1\r\nhost: {target}\r\n\r\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let status = read_line(&mut r)?;
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("CONNECT {target}: {status}"));
    }
    while !read_line(&mut r)?.is_empty() {}
    Ok(r)
}

/// One line sent through a tunnel, the echoed line returned.
fn tunnel_echo(r: &mut BufReader<TcpStream>, line: &str) -> Result<String, String> {
    r.get_mut()
        .write_all(format!("{line}\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    read_line(r)
}

/// `CONNECT target` through a sidecar, one line sent, the echoed line returned.
fn tcp_exchange(outbound: SocketAddr, target: &str, line: &str) -> Result<String, String> {
    tunnel_echo(&mut open_tunnel(outbound, target)?, line)
}

// ---------------------------------------------------------------------------------------------
// Helpers: certificates (rcgen) and TLS (rustls)
// ---------------------------------------------------------------------------------------------

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate authority that signs the test's leaf certificates.
struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
    der: Vec<u8>,
}

/// A leaf certificate and its key, as PEM (files for the mesh) and DER (for rustls).
struct Leaf {
    cert_pem: String,
    key_pem: String,
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
}

fn new_ca(name: &str) -> Ca {
    let key = rcgen::KeyPair::generate().expect("CA key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let cert = params.self_signed(&key).expect("self-signed CA");
    Ca {
        pem: cert.pem(),
        der: cert.der().to_vec(),
        issuer: rcgen::Issuer::new(params, key),
    }
}

fn leaf(ca: &Ca, name: &str, client: bool) -> Leaf {
    let key = rcgen::KeyPair::generate().expect("leaf key");
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).expect("leaf params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.extended_key_usages = vec![if client {
        rcgen::ExtendedKeyUsagePurpose::ClientAuth
    } else {
        rcgen::ExtendedKeyUsagePurpose::ServerAuth
    }];
    let cert = params.signed_by(&key, &ca.issuer).expect("sign leaf");
    Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().to_vec(),
        key_der: key.serialize_der(),
    }
}

fn client_tls(roots: &[&[u8]], cert: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store
            .add(CertificateDer::from(r.to_vec()))
            .expect("add a root");
    }
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(store);
    let cfg = match cert {
        Some(l) => b
            .with_client_auth_cert(
                vec![CertificateDer::from(l.cert_der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(l.key_der.clone())),
            )
            .expect("client certificate"),
        None => b.with_no_client_auth(),
    };
    Arc::new(cfg)
}

/// `GET path` over TLS to `addr` with `sni` (as `curl --resolve`); returns the response and the
/// server's leaf certificate.
fn tls_get(
    addr: SocketAddr,
    sni: &str,
    cfg: Arc<rustls::ClientConfig>,
    path: &str,
) -> Result<(Response, Vec<u8>), String> {
    let name = ServerName::try_from(sni.to_string()).map_err(|e| format!("SNI {sni}: {e}"))?;
    let conn = rustls::ClientConnection::new(cfg, name).map_err(|e| e.to_string())?;
    let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    sock.set_write_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| format!("TLS handshake: {e}"))?;
    }
    let peer = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .ok_or("no server certificate")?;
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: {sni}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut r = BufReader::new(tls);
    let (resp, _) = read_response(&mut r).map_err(|e| format!("response: {e}"))?;
    Ok((resp, peer))
}

/// What an in-test server saw of one connection.
#[derive(Debug, Clone)]
struct Seen {
    /// The SNI of a TLS connection (None: plain text, or TLS without SNI).
    sni: Option<String>,
    tls: bool,
    request_line: String,
    host: String,
}

/// An HTTP/1.1 server on 127.0.0.1 (plain or TLS) answering 200 `body` to every request and
/// recording what it saw; TLS handshakes that fail are counted. Stopped on drop.
struct TestServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    failed_handshakes: Arc<Mutex<usize>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    fn start(tls: Option<Arc<rustls::ServerConfig>>, body: &'static str) -> TestServer {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = l.local_addr().expect("local addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let failed_handshakes = Arc::new(Mutex::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, failed2, stop2) = (seen.clone(), failed_handshakes.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for s in l.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(s) = s else { continue };
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let (seen, failed, tls) = (seen2.clone(), failed2.clone(), tls.clone());
                std::thread::spawn(move || match tls {
                    None => serve_http(s, None, false, &seen, body),
                    Some(cfg) => {
                        let Ok(conn) = rustls::ServerConnection::new(cfg) else {
                            return;
                        };
                        let mut t = rustls::StreamOwned::new(conn, s);
                        while t.conn.is_handshaking() {
                            if t.conn.complete_io(&mut t.sock).is_err() {
                                *failed.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                                return;
                            }
                        }
                        let sni = t.conn.server_name().map(str::to_string);
                        serve_http(t, sni, true, &seen, body);
                    }
                });
            }
        });
        TestServer {
            addr,
            seen,
            failed_handshakes,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn failed_handshakes(&self) -> usize {
        *self
            .failed_handshakes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves requests on one connection (keep-alive) until it closes.
fn serve_http<S: Read + Write>(
    s: S,
    sni: Option<String>,
    tls: bool,
    seen: &Mutex<Vec<Seen>>,
    body: &str,
) {
    let mut r = BufReader::new(s);
    loop {
        let Ok(request_line) = read_line(&mut r) else {
            return;
        };
        let mut host = String::new();
        loop {
            match read_line(&mut r) {
                Ok(l) if l.is_empty() => break,
                Ok(l) => {
                    if let Some((k, v)) = l.split_once(':')
                        && k.trim().eq_ignore_ascii_case("host")
                    {
                        host = v.trim().to_string();
                    }
                }
                Err(_) => return,
            }
        }
        seen.lock().unwrap_or_else(|p| p.into_inner()).push(Seen {
            sni: sni.clone(),
            tls,
            request_line,
            host,
        });
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if r.get_mut().write_all(resp.as_bytes()).is_err() || r.get_mut().flush().is_err() {
            return;
        }
    }
}

fn server_tls(cert: &Leaf) -> Arc<rustls::ServerConfig> {
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.cert_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_der.clone())),
        )
        .expect("server certificate");
    Arc::new(cfg)
}

// ---------------------------------------------------------------------------------------------
// 1. Fault injection (Istio's Bookinfo task: delay and abort for jason)
// ---------------------------------------------------------------------------------------------

/// Polls product pages with `headers` until one is served by `version` (the routing is in).
fn wait_reviews(c: &mut HttpClient, host: &str, headers: &[(&str, &str)], version: &str) {
    let mut last = String::new();
    let ok = wait_for(Duration::from_secs(15), || {
        match product_page(c, host, headers) {
            Ok(v) if v == version => return Some(()),
            Ok(v) => last = v,
            Err(e) => last = e,
        }
        None
    });
    assert!(
        ok.is_some(),
        "{headers:?} never served by {version} within 15 s; last: {last}"
    );
}

#[test]
fn fault_injection() {
    let _serial = serial();
    let demo = start_demo(&[]);
    let host = demo.host();
    let mut c = demo.client();
    apply(
        &demo.control,
        &networking().join("virtual-service-all-v1.yaml"),
    );
    apply(
        &demo.control,
        &networking().join("virtual-service-reviews-test-v2.yaml"),
    );
    wait_reviews(&mut c, &host, JASON, "reviews-v2");
    wait_reviews(&mut c, &host, ANON, "reviews-v1");

    // Istio's virtual-service-ratings-test-delay.yaml: 7 s delay on ratings for jason. reviews-v2
    // waits for ratings; productpage gives up on reviews (3 s, tried twice) and says so.
    apply(
        &demo.control,
        &networking().join("virtual-service-ratings-test-delay.yaml"),
    );
    let (took, r) = wait_for(Duration::from_secs(30), || {
        let t = Instant::now();
        let r = c.get("/productpage", &host, JASON).ok()?;
        r.body
            .contains(REVIEWS_UNAVAILABLE)
            .then(|| (t.elapsed(), r))
    })
    .expect("jason's page never showed the reviews error within 30 s of the delay");
    eprintln!("jason's page with the 7 s ratings delay took {took:?}");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("ISBN-10"), "no book details: {}", r.body);
    assert!(served_by(&r.body).is_none(), "reviews shown: {}", r.body);
    assert!(
        (Duration::from_millis(2900)..=Duration::from_millis(7500)).contains(&took),
        "jason's page took {took:?} (productpage's reviews timeout: 3 s × 2 attempts)"
    );
    // Everyone else is not delayed.
    for i in 0..10 {
        let t = Instant::now();
        let v = product_page(&mut c, &host, ANON)
            .unwrap_or_else(|e| panic!("anonymous page {i} under the delay: {e}"));
        assert_eq!(v, "reviews-v1");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "an anonymous page took {:?} under jason's delay",
            t.elapsed()
        );
    }
    // reviews-v2's sidecar injected the delay on its call to ratings (DI).
    let di = wait_for(Duration::from_secs(5), || {
        log_entries(&demo.log("reviews-v2-proxy"))
            .into_iter()
            .find(|e| e.path == "/ratings/0" && e.has("DI"))
    });
    assert!(
        di.is_some(),
        "no DI entry for /ratings/0 in reviews-v2's access log:\n{}",
        demo.log("reviews-v2-proxy")
    );

    // Istio's virtual-service-ratings-test-abort.yaml: ratings answers 500 for jason.
    apply(
        &demo.control,
        &networking().join("virtual-service-ratings-test-abort.yaml"),
    );
    let r = wait_for(Duration::from_secs(30), || {
        let r = c.get("/productpage", &host, JASON).ok()?;
        r.body.contains(RATINGS_UNAVAILABLE).then_some(r)
    })
    .expect("jason's page never said the ratings are unavailable within 30 s of the abort");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(served_by(&r.body), Some("reviews-v2"), "{}", r.body);
    assert!(!r.body.contains("<font color="), "stars shown: {}", r.body);
    assert!(r.body.contains("ISBN-10"), "no book details: {}", r.body);
    assert!(!r.body.contains(REVIEWS_UNAVAILABLE), "{}", r.body);
    // Everyone else still gets a complete page (reviews-v1, which does not call ratings).
    let m = mix(&mut c, &host, ANON, 20);
    assert_eq!(count(&m, "reviews-v1"), 20, "{m:?}");
    // The abort is jason's only: reviews-v2 asked directly shows stars to others.
    let ip = demo
        .workload_ip("reviews-v2")
        .expect("reviews-v2 is registered");
    let mut direct = HttpClient::new(format!("{ip}:9080").parse().expect("reviews-v2 address"));
    let r = direct
        .get("/reviews/0", "reviews:9080", &[])
        .expect("GET reviews-v2 /reviews/0");
    assert!(
        r.status == 200 && r.body.contains("\"stars\"") && !r.body.contains(RATINGS_UNAVAILABLE),
        "reviews-v2 for an anonymous user: {r:?}"
    );
    let r = direct
        .get("/reviews/0", "reviews:9080", JASON)
        .expect("GET reviews-v2 /reviews/0 as jason");
    assert!(
        r.status == 200 && r.body.contains(RATINGS_UNAVAILABLE) && !r.body.contains("\"stars\""),
        "reviews-v2 for jason: {r:?}"
    );
    // reviews-v2's sidecar answered the ratings call itself: 500 FI.
    let fi = wait_for(Duration::from_secs(5), || {
        log_entries(&demo.log("reviews-v2-proxy"))
            .into_iter()
            .find(|e| e.path == "/ratings/0" && e.status == 500 && e.has("FI"))
    });
    assert!(
        fi.is_some(),
        "no `500 FI` entry for /ratings/0 in reviews-v2's access log:\n{}",
        demo.log("reviews-v2-proxy")
    );
    drop(demo);
}

// ---------------------------------------------------------------------------------------------
// 2. Request timeouts
// ---------------------------------------------------------------------------------------------

const REVIEWS_TO_V2: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
    - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v2
";

const RATINGS_DELAY_2S: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts:
  - ratings
  http:
  - fault:
      delay:
        percentage:
          value: 100
        fixedDelay: 2s
    route:
    - destination:
        host: ratings
        subset: v1
";

const REVIEWS_TIMEOUT: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v2
    timeout: 0.5s
";

#[test]
fn request_timeouts() {
    let _serial = serial();
    let demo = start_demo(&[]);
    let host = demo.host();
    let mut c = demo.client();
    let dir = demo._tmp.path().to_path_buf();
    apply(
        &demo.control,
        &networking().join("virtual-service-all-v1.yaml"),
    );
    apply_yaml(&demo.control, &dir, "reviews-v2.yaml", REVIEWS_TO_V2);
    apply_yaml(&demo.control, &dir, "ratings-delay.yaml", RATINGS_DELAY_2S);

    // With the 2 s ratings delay the page is complete (black stars from v2) but slow.
    let mut last = String::new();
    let took = wait_for(Duration::from_secs(30), || {
        let t = Instant::now();
        match product_page(&mut c, &host, ANON) {
            Ok(v) if v == "reviews-v2" && t.elapsed() >= Duration::from_millis(1900) => {
                return Some(t.elapsed());
            }
            Ok(v) => last = format!("{v} in {:?}", t.elapsed()),
            Err(e) => last = e,
        }
        None
    })
    .unwrap_or_else(|| panic!("no slow reviews-v2 page within 30 s; last: {last}"));
    assert!(
        took < Duration::from_secs(3),
        "the page took {took:?} with a 2 s ratings delay"
    );

    // reviews with `timeout: 0.5s`: the page comes back in about 1 s (productpage tries twice)
    // without reviews.
    apply_yaml(&demo.control, &dir, "reviews-timeout.yaml", REVIEWS_TIMEOUT);
    wait_for(Duration::from_secs(30), || {
        let r = c.get("/productpage", &host, ANON).ok()?;
        r.body.contains(REVIEWS_UNAVAILABLE).then_some(())
    })
    .expect("the reviews timeout never showed within 30 s");
    for i in 0..3 {
        let t = Instant::now();
        let r = c
            .get("/productpage", &host, ANON)
            .unwrap_or_else(|e| panic!("page {i} under the timeout: {e}"));
        let took = t.elapsed();
        assert_eq!(r.status, 200, "{r:?}");
        assert!(
            r.body.contains(REVIEWS_UNAVAILABLE) && r.body.contains("ISBN-10"),
            "page {i}: {}",
            r.body
        );
        assert!(
            (Duration::from_millis(900)..Duration::from_millis(2000)).contains(&took),
            "page {i} took {took:?} (2 attempts × 0.5 s)"
        );
    }
    // productpage's sidecar timed the calls out: 504 UT, two per page.
    let ut = wait_for(Duration::from_secs(5), || {
        let n = log_entries(&demo.log("productpage-v1-proxy"))
            .into_iter()
            .filter(|e| e.path == "/reviews/0" && e.status == 504 && e.has("UT"))
            .count();
        (n >= 8).then_some(n)
    });
    assert!(
        ut.is_some(),
        "fewer than 8 `504 UT` entries for /reviews/0 in productpage's access log:\n{}",
        demo.log("productpage-v1-proxy")
    );
    drop(demo);
}

// ---------------------------------------------------------------------------------------------
// 3. TCP traffic shifting
// ---------------------------------------------------------------------------------------------

const TCP_ECHO_SERVICES: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: tcp-echo
spec:
  hosts: [tcp-echo.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9000, name: tcp, protocol: TCP}]
  resolution: STATIC
  workloadSelector: {labels: {app: tcp-echo}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: tcp-echo-destination
spec:
  host: tcp-echo
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: tcp-echo
spec:
  hosts:
  - tcp-echo
  tcp:
  - match:
    - port: 9000
    route:
    - destination:
        host: tcp-echo
        port:
          number: 9000
        subset: v1
";

const TCP_ECHO_20_V2: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: tcp-echo
spec:
  hosts:
  - tcp-echo
  tcp:
  - match:
    - port: 9000
    route:
    - destination:
        host: tcp-echo
        port:
          number: 9000
        subset: v1
      weight: 80
    - destination:
        host: tcp-echo
        port:
          number: 9000
        subset: v2
      weight: 20
";

/// `n` connections, one line each; counts replies by prefix. Every reply must echo the line.
fn tcp_mix(outbound: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for i in 0..n {
        let line = format!("hello {i}");
        let reply = tcp_exchange(outbound, "tcp-echo:9000", &line)
            .unwrap_or_else(|e| panic!("connection {i} of {n}: {e}"));
        let (prefix, rest) = reply.split_once(' ').unwrap_or(("", ""));
        assert_eq!(rest, line, "connection {i}: reply {reply:?}");
        *m.entry(prefix.to_string()).or_insert(0) += 1;
    }
    m
}

#[test]
fn tcp_traffic_shifting() {
    let _serial = serial();
    require_python3();
    let tmp = tempfile::tempdir().expect("temp dir");
    let up = Up::new(tmp.path());
    let _cp = up.start("weft-up");
    let echo = script(tmp.path(), "tcp_echo.py", TCP_ECHO);
    let _v1 = up.run(
        "tcp-echo-v1",
        "app=tcp-echo,version=v1",
        9000,
        &["python3", &echo, "one"],
    );
    let _v2 = up.run(
        "tcp-echo-v2",
        "app=tcp-echo,version=v2",
        9000,
        &["python3", &echo, "two"],
    );
    let (_client, outbound) = start_client(&up, "app=client");
    apply_yaml(&up.control, tmp.path(), "tcp-echo.yaml", TCP_ECHO_SERVICES);
    wait_synced(&up, &["client", "tcp-echo-v1", "tcp-echo-v2"]);
    let mut last = String::new();
    let ok = wait_for(Duration::from_secs(30), || {
        match tcp_exchange(outbound, "tcp-echo:9000", "ready?") {
            Ok(r) if r == "one ready?" => return Some(()),
            Ok(r) => last = r,
            Err(e) => last = e,
        }
        None
    });
    assert!(ok.is_some(), "tcp-echo v1 not reachable: {last}");

    // All to v1.
    let m = tcp_mix(outbound, 20);
    assert_eq!(count(&m, "one"), 20, "all to v1: {m:?}");

    // 80 % v1, 20 % v2.
    apply_yaml(
        &up.control,
        tmp.path(),
        "tcp-echo-20-v2.yaml",
        TCP_ECHO_20_V2,
    );
    let shifted = wait_for(Duration::from_secs(15), || {
        tcp_exchange(outbound, "tcp-echo:9000", "shifted?")
            .ok()
            .filter(|r| r == "two shifted?")
    });
    assert!(shifted.is_some(), "v2 never answered within 15 s of 80/20");
    const N: usize = 100;
    let m = tcp_mix(outbound, N);
    let (one, two) = (count(&m, "one"), count(&m, "two"));
    assert_eq!(one + two, N, "only one/two expected: {m:?}");
    let pct = one as f64 * 100.0 / N as f64;
    eprintln!("TCP 80/20 over {N} connections: {m:?}");
    assert!(
        (68.0..=92.0).contains(&pct),
        "v1 got {pct:.0} % of {N} connections (80 ± 12): {m:?}"
    );

    // connectionPool.tcp.idleTimeout on the destination: a tunnel silent for 1 s is closed
    // (without the rule Istio's default, 1 h, applies), one in use is not.
    // All to v1 again (one destination: with weighted ones Istio keeps the default).
    apply_yaml(&up.control, tmp.path(), "tcp-echo.yaml", TCP_ECHO_SERVICES);
    apply_yaml(
        &up.control,
        tmp.path(),
        "tcp-echo-idle.yaml",
        TCP_ECHO_IDLE_TIMEOUT,
    );
    let closed = wait_for(Duration::from_secs(30), || {
        let mut t = open_tunnel(outbound, "tcp-echo:9000").ok()?;
        tunnel_echo(&mut t, "idle?").ok()?;
        // Before the rule arrives the tunnel outlives the 3 s wait; after, it closes in ~1 s.
        t.get_ref()
            .set_read_timeout(Some(Duration::from_secs(3)))
            .ok()?;
        let start = Instant::now();
        match read_line(&mut t) {
            Err(e) if e == "connection closed" => Some(start.elapsed()),
            _ => None,
        }
    });
    let after = closed.expect("an idle tunnel was never closed after idleTimeout: 1s");
    assert!(
        after < Duration::from_millis(2500),
        "closed after {after:?}"
    );
    let mut t = open_tunnel(outbound, "tcp-echo:9000").expect("tunnel");
    for i in 0..6 {
        std::thread::sleep(Duration::from_millis(400));
        let line = format!("busy {i}");
        let reply = tunnel_echo(&mut t, &line)
            .unwrap_or_else(|e| panic!("a tunnel in use was cut after {} ms: {e}", (i + 1) * 400));
        assert_eq!(reply, format!("one {line}"), "all to v1 again");
    }
}

/// The task's DestinationRule with a TCP idle timeout of 1 s.
const TCP_ECHO_IDLE_TIMEOUT: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: tcp-echo-destination
spec:
  host: tcp-echo
  trafficPolicy:
    connectionPool:
      tcp:
        idleTimeout: 1s
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
";

// ---------------------------------------------------------------------------------------------
// 4. Circuit breaking
// ---------------------------------------------------------------------------------------------

/// Istio's task DestinationRule.
const HTTPBIN_CIRCUIT_BREAKER: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: httpbin
spec:
  host: httpbin
  trafficPolicy:
    connectionPool:
      tcp:
        maxConnections: 1
      http:
        http1MaxPendingRequests: 1
        maxRequestsPerConnection: 1
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 3m
      maxEjectionPercent: 100
";

/// A request's status and whether it carried `x-envoy-overloaded: true`, or why it failed.
type Outcome = Result<(u16, bool), String>;

#[test]
fn circuit_breaking() {
    let _serial = serial();
    let tmp = tempfile::tempdir().expect("temp dir");
    let up = Up::new(tmp.path());
    let _cp = up.start("weft-up");
    let _httpbin = up.run(
        "httpbin-v1",
        "app=httpbin,version=v1",
        8000,
        &[WEFT, "app", "httpbin"],
    );
    let (client, outbound) = start_client(&up, "app=client");
    wait_synced(&up, &["client", "httpbin-v1"]);
    apply_yaml(
        &up.control,
        tmp.path(),
        "httpbin-cb.yaml",
        HTTPBIN_CIRCUIT_BREAKER,
    );
    wait_status(
        outbound,
        "http://httpbin:8000/get",
        200,
        Duration::from_secs(30),
    );
    // The DestinationRule is in the client's sidecar (a single request passes either way).
    let admin = SocketAddr::new(outbound.ip(), 15000).to_string();
    let in_force = wait_for(Duration::from_secs(15), || {
        let r = weft(
            &["proxy-config", "clusters", &admin, "-o", "json"],
            Duration::from_secs(10),
        );
        r.stdout.contains("\"max_connections\": 1,").then_some(())
    });
    assert!(
        in_force.is_some(),
        "the client's sidecar never got the connection pool limits"
    );

    const CLIENTS: usize = 20;
    const EACH: usize = 10;
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let threads: Vec<JoinHandle<Vec<Outcome>>> = (0..CLIENTS)
        .map(|_| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut c = HttpClient::new(outbound);
                barrier.wait();
                (0..EACH)
                    .map(|_| {
                        c.get("http://httpbin:8000/get", "httpbin:8000", &[])
                            .map(|r| (r.status, r.header("x-envoy-overloaded") == Some("true")))
                    })
                    .collect()
            })
        })
        .collect();
    let mut codes: BTreeMap<u16, usize> = BTreeMap::new();
    let mut errors = Vec::new();
    let mut overloaded_503 = 0;
    for t in threads {
        for r in t.join().expect("client thread") {
            match r {
                Ok((status, overloaded)) => {
                    *codes.entry(status).or_insert(0) += 1;
                    if status == 503 && overloaded {
                        overloaded_503 += 1;
                    }
                }
                Err(e) => errors.push(e),
            }
        }
    }
    eprintln!("circuit breaking, {CLIENTS} clients × {EACH}: {codes:?}");
    assert!(errors.is_empty(), "requests failed: {errors:?}");
    let (ok, tripped) = (
        codes.get(&200).copied().unwrap_or(0),
        codes.get(&503).copied().unwrap_or(0),
    );
    assert_eq!(
        ok + tripped,
        CLIENTS * EACH,
        "only 200 and 503 expected: {codes:?}"
    );
    assert!(ok > 0, "nothing got through: {codes:?}");
    assert!(tripped > 0, "the circuit breaker never tripped: {codes:?}");
    assert_eq!(
        overloaded_503, tripped,
        "503s without `x-envoy-overloaded: true`"
    );
    // The client's sidecar logged each of them as an overflow (UO).
    let logged = wait_for(Duration::from_secs(5), || {
        let n = log_entries(&client.stdout())
            .iter()
            .filter(|e| e.method == "GET" && e.path == "/get" && e.status == 503 && e.has("UO"))
            .count();
        (n == tripped).then_some(n)
    });
    assert!(
        logged.is_some(),
        "the client's access log does not show {tripped} `503 UO` entries:\n{}",
        tail(&up.logs.join("client.out"), 20)
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Mirroring
// ---------------------------------------------------------------------------------------------

const HTTPBIN_SUBSETS_ALL_V1: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: httpbin
spec:
  host: httpbin
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
    - httpbin
  http:
  - route:
    - destination:
        host: httpbin
        subset: v1
      weight: 100
";

const HTTPBIN_MIRROR_V2: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
    - httpbin
  http:
  - route:
    - destination:
        host: httpbin
        subset: v1
      weight: 100
    mirror:
      host: httpbin
      subset: v2
    mirrorPercentage:
      value: 100.0
";

#[test]
fn mirroring() {
    let _serial = serial();
    require_python3();
    let tmp = tempfile::tempdir().expect("temp dir");
    let up = Up::new(tmp.path());
    let _cp = up.start("weft-up");
    let v1 = up.run(
        "httpbin-v1",
        "app=httpbin,version=v1",
        8000,
        &[WEFT, "app", "httpbin"],
    );
    // v2 is slow: every request takes 2 s there.
    let app = script(tmp.path(), "small_http.py", SMALL_HTTP);
    let no_flag = tmp.path().join("never").display().to_string();
    let v2 = up.run(
        "httpbin-v2",
        "app=httpbin,version=v2",
        8000,
        &["python3", &app, "2", &no_flag],
    );
    let (_client, outbound) = start_client(&up, "app=client");
    apply_yaml(
        &up.control,
        tmp.path(),
        "httpbin-v1.yaml",
        HTTPBIN_SUBSETS_ALL_V1,
    );
    wait_synced(&up, &["client", "httpbin-v1", "httpbin-v2"]);
    // All to v1, nothing mirrored yet.
    wait_for(Duration::from_secs(30), || {
        let r = proxied_get(outbound, "http://httpbin:8000/anything/warmup", &[]).ok()?;
        let t = Instant::now();
        let fast = proxied_get(outbound, "http://httpbin:8000/anything/warmup", &[]).ok()?;
        (r.status == 200 && fast.status == 200 && t.elapsed() < Duration::from_millis(500))
            .then_some(())
    })
    .expect("httpbin v1 not answering (fast) within 30 s");
    for i in 0..5 {
        let url = format!("http://httpbin:8000/anything/before-mirror-{i}");
        let r = proxied_get(outbound, &url, &[]).expect("GET before the mirror");
        assert_eq!(r.status, 200, "{r:?}");
        assert!(
            r.body.contains(&format!("/anything/before-mirror-{i}")),
            "{r:?}"
        );
    }

    // Mirror 100 % to v2.
    apply_yaml(
        &up.control,
        tmp.path(),
        "httpbin-mirror.yaml",
        HTTPBIN_MIRROR_V2,
    );
    let mut probe = 0;
    let mirrored = wait_for(Duration::from_secs(20), || {
        probe += 1;
        let _ = proxied_get(
            outbound,
            &format!("http://httpbin:8000/anything/probe-{probe}"),
            &[],
        );
        sleep_ms(200);
        log_entries(&v2.stdout())
            .iter()
            .any(|e| e.path.starts_with("/anything/probe-"))
            .then_some(())
    });
    assert!(
        mirrored.is_some(),
        "no mirrored request reached v2 within 20 s:\n{}",
        tail(&up.logs.join("httpbin-v2.out"), 20)
    );

    // The primary answers fast, from v1, while every copy takes 2 s at v2.
    const N: usize = 10;
    let t0 = Instant::now();
    for i in 0..N {
        let path = format!("/anything/mirrored-{i}");
        let t = Instant::now();
        let r = proxied_get(outbound, &format!("http://httpbin:8000{path}"), &[])
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(r.status, 200, "{r:?}");
        assert!(
            r.body.contains(&path) && !r.body.contains("served by"),
            "not httpbin v1's answer: {r:?}"
        );
        assert!(
            t.elapsed() < Duration::from_millis(700),
            "{path} took {:?}: the mirror slowed the primary",
            t.elapsed()
        );
    }
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "{N} requests took {:?}",
        t0.elapsed()
    );
    // v2's sidecar got every copy, with the `-shadow` host; v1 got the originals.
    let all = wait_for(Duration::from_secs(10), || {
        let shadow = log_entries(&v2.stdout());
        (0..N)
            .all(|i| {
                shadow.iter().any(|e| {
                    e.path == format!("/anything/mirrored-{i}")
                        && e.authority == "httpbin-shadow:8000"
                        && e.status == 200
                })
            })
            .then_some(())
    });
    assert!(
        all.is_some(),
        "v2's access log lacks some mirrored copies (host httpbin-shadow:8000):\n{}",
        tail(&up.logs.join("httpbin-v2.out"), 40)
    );
    let v2_out = v2.stdout();
    assert!(
        v2_out.contains("SEEN httpbin-shadow:8000 /anything/mirrored-0"),
        "v2's app did not see the shadow host:\n{v2_out}"
    );
    assert!(
        !v2_out.contains("before-mirror"),
        "v2 saw requests from before the mirror:\n{v2_out}"
    );
    let primary = log_entries(&v1.stdout());
    for i in 0..N {
        assert!(
            primary
                .iter()
                .any(|e| e.path == format!("/anything/mirrored-{i}")
                    && e.authority == "httpbin:8000"),
            "v1 did not serve /anything/mirrored-{i}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Ingress: HTTP, HTTPS SIMPLE and MUTUAL, TLS PASSTHROUGH
// ---------------------------------------------------------------------------------------------

fn ingress_config(cert: &Path, key: &Path) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: httpbin-gateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [httpbin.example.com]
  - port: {{number: 443, name: https, protocol: HTTPS}}
    tls:
      mode: SIMPLE
      serverCertificate: {cert}
      privateKey: {key}
    hosts: [httpbin.example.com]
  - port: {{number: 443, name: https-mtls, protocol: HTTPS}}
    tls:
      mode: MUTUAL
      credentialName: mtls-credential
    hosts: [mtls.example.com]
  - port: {{number: 443, name: https-passthrough, protocol: HTTPS}}
    tls:
      mode: PASSTHROUGH
    hosts: [nginx.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts: [httpbin.example.com, mtls.example.com]
  gateways: [httpbin-gateway]
  http:
  - match:
    - uri: {{prefix: /status}}
    - uri: {{prefix: /headers}}
    route:
    - destination:
        host: httpbin
        port: {{number: 8000}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: my-nginx
spec:
  hosts: [my-nginx.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 8443, name: https, protocol: HTTPS}}]
  resolution: STATIC
  workloadSelector: {{labels: {{run: my-nginx}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: nginx
spec:
  hosts: [nginx.example.com]
  gateways: [httpbin-gateway]
  tls:
  - match:
    - port: 443
      sniHosts: [nginx.example.com]
    route:
    - destination:
        host: my-nginx
        port: {{number: 8443}}
",
        cert = cert.display(),
        key = key.display()
    )
}

#[test]
fn ingress_http_https_mutual_passthrough() {
    let _serial = serial();
    require_python3();
    let certs = tempfile::tempdir().expect("temp dir");
    let ca = new_ca("example.com CA");
    let httpbin_cert = leaf(&ca, "httpbin.example.com", false);
    let mtls_cert = leaf(&ca, "mtls.example.com", false);
    let client_cert = leaf(&ca, "client.example.com", true);
    let nginx_ca = new_ca("my-nginx CA");
    let nginx_cert = leaf(&nginx_ca, "nginx.example.com", false);
    let file = |name: &str, text: &str| -> PathBuf {
        let p = certs.path().join(name);
        write(&p, text);
        p
    };
    let cert = file("httpbin.example.com.crt", &httpbin_cert.cert_pem);
    let key = file("httpbin.example.com.key", &httpbin_cert.key_pem);
    let nginx_crt = file("nginx.crt", &nginx_cert.cert_pem);
    let nginx_key = file("nginx.key", &nginx_cert.key_pem);
    let config = ingress_config(&cert, &key);
    let demo = start_demo_with(
        &[
            ("httpbin-gateway.yaml", config.as_str()),
            (
                "credentials/mtls-credential/tls.crt",
                mtls_cert.cert_pem.as_str(),
            ),
            (
                "credentials/mtls-credential/tls.key",
                mtls_cert.key_pem.as_str(),
            ),
            ("credentials/mtls-credential/ca.crt", ca.pem.as_str()),
        ],
        true,
    );
    let https = demo.https.expect("the gateway's port 443");
    let _httpbin = demo.run(
        "httpbin-v1",
        "app=httpbin,version=v1",
        8000,
        &[WEFT, "app", "httpbin"],
    );
    let tls_app = script(certs.path(), "tls_server.py", TLS_SERVER);
    let _nginx = demo.run(
        "my-nginx",
        "run=my-nginx",
        8443,
        &[
            "python3",
            &tls_app,
            &nginx_crt.display().to_string(),
            &nginx_key.display().to_string(),
        ],
    );
    assert!(
        wait_for(Duration::from_secs(30), || demo
            .synced(&["httpbin-v1", "my-nginx", "istio-ingressgateway"])
            .then_some(()))
        .is_some(),
        "workloads not registered and synced within 30 s"
    );
    assert_eq!(config_errors(demo.api), Vec::<String>::new());

    // HTTP on port 80, by Host.
    let mut c = demo.client();
    let mut last = String::new();
    let r = wait_for(Duration::from_secs(30), || {
        match c.get("/status/418", "httpbin.example.com", &[]) {
            Ok(r) if r.status == 418 => return Some(r),
            Ok(r) => last = format!("HTTP {}: {}", r.status, r.body),
            Err(e) => last = e,
        }
        None
    })
    .unwrap_or_else(|| panic!("http://httpbin.example.com/status/418 never 418: {last}"));
    assert_eq!(r.status, 418);
    let r = c
        .get("/headers", "httpbin.example.com", &[])
        .expect("GET /headers over HTTP");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("httpbin.example.com"), "{r:?}");
    // Bookinfo keeps its own gateway on port 80.
    product_page(&mut c, &demo.host(), &[]).expect("the product page next to httpbin");

    // HTTPS SIMPLE: the gateway's certificate (from files), verified against the CA.
    let trust_ca = client_tls(&[&ca.der], None);
    let mut last = String::new();
    let (r, peer) = wait_for(Duration::from_secs(15), || {
        match tls_get(
            https,
            "httpbin.example.com",
            trust_ca.clone(),
            "/status/200",
        ) {
            Ok(x) => return Some(x),
            Err(e) => last = e,
        }
        None
    })
    .unwrap_or_else(|| panic!("https://httpbin.example.com failed: {last}"));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        peer, httpbin_cert.cert_der,
        "not httpbin.example.com's certificate"
    );
    let (r, _) = tls_get(https, "httpbin.example.com", trust_ca.clone(), "/headers")
        .expect("GET /headers over HTTPS");
    assert!(
        r.status == 200 && r.body.contains("\"X-Forwarded-Proto\": \"https\""),
        "{r:?}"
    );

    // MUTUAL: no client certificate → no response; with one → 200.
    let no_cert = tls_get(https, "mtls.example.com", trust_ca.clone(), "/status/200");
    assert!(
        no_cert.is_err(),
        "MUTUAL answered without a client certificate: {no_cert:?}"
    );
    let with_cert = client_tls(&[&ca.der], Some(&client_cert));
    let (r, peer) = tls_get(https, "mtls.example.com", with_cert, "/status/200")
        .expect("MUTUAL with a client certificate");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        peer, mtls_cert.cert_der,
        "not mtls.example.com's certificate"
    );

    // PASSTHROUGH by SNI: the TLS is my-nginx's own (its CA, its certificate).
    let trust_nginx = client_tls(&[&nginx_ca.der], None);
    let mut last = String::new();
    let (r, peer) = wait_for(Duration::from_secs(15), || {
        match tls_get(https, "nginx.example.com", trust_nginx.clone(), "/") {
            Ok(x) => return Some(x),
            Err(e) => last = e,
        }
        None
    })
    .unwrap_or_else(|| panic!("https://nginx.example.com (passthrough) failed: {last}"));
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("served by my-nginx over TLS"), "{r:?}");
    assert_eq!(peer, nginx_cert.cert_der, "not my-nginx's certificate");
    // And the gateway's CA does not vouch for it: the TLS is not the gateway's.
    assert!(
        tls_get(https, "nginx.example.com", trust_ca, "/").is_err(),
        "the passthrough certificate verified against the gateway's CA"
    );
    drop(demo);
}

// ---------------------------------------------------------------------------------------------
// 7. Egress: ALLOW_ANY, REGISTRY_ONLY, ServiceEntry, TLS origination
// ---------------------------------------------------------------------------------------------

const REGISTRY_ONLY: &str = "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: default
  namespace: istio-system
spec:
  outboundTrafficPolicy:
    mode: REGISTRY_ONLY
";

const REGISTRY_ONLY_BODY: &str =
    "weft: REGISTRY_ONLY: the requested host is not a registered service (add a ServiceEntry)";

fn external_service_entry(port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: external
spec:
  hosts: [external.example]
  location: MESH_EXTERNAL
  ports: [{{number: {port}, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
"
    )
}

/// Istio's egress TLS origination shape: port 80 HTTP, the endpoint's TLS port behind it.
fn secure_service_entry(tls_port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: secure-external
spec:
  hosts: [secure.example]
  location: MESH_EXTERNAL
  ports: [{{number: 80, name: http-port, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http-port: {tls_port}}}}}]
"
    )
}

fn secure_destination_rule(ca: &Path) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: secure-external
spec:
  host: secure.example
  trafficPolicy:
    portLevelSettings:
    - port:
        number: 80
      tls:
        mode: SIMPLE
        caCertificates: {}
        sni: secure.example
",
        ca.display()
    )
}

#[test]
fn egress_policies_and_tls_origination() {
    let _serial = serial();
    let tmp = tempfile::tempdir().expect("temp dir");
    let up = Up::new(tmp.path());
    let _cp = up.start("weft-up");
    let (client, outbound) = start_client(&up, "app=client");
    wait_synced(&up, &["client"]);
    let ext = TestServer::start(None, "external says hi\n");
    let port = ext.addr.port();

    // ALLOW_ANY (default): an unknown host passes through (dynamic forward proxy).
    let local_url = format!("http://localhost:{port}/allow-any");
    let r = wait_status(outbound, &local_url, 200, Duration::from_secs(20));
    assert_eq!(r.body, "external says hi\n", "{r:?}");
    assert!(
        ext.seen()
            .iter()
            .any(|s| s.request_line == "GET /allow-any HTTP/1.1"),
        "the external server did not see the request: {:?}",
        ext.seen()
    );

    // REGISTRY_ONLY: the same request gets 502, a body that says why, and NR.
    apply_yaml(&up.control, tmp.path(), "sidecar.yaml", REGISTRY_ONLY);
    let r = wait_status(outbound, &local_url, 502, Duration::from_secs(15));
    assert_eq!(r.body.trim(), REGISTRY_ONLY_BODY, "{r:?}");
    let nr = wait_for(Duration::from_secs(5), || {
        log_entries(&client.stdout())
            .into_iter()
            .find(|e| e.path == "/allow-any" && e.status == 502 && e.has("NR"))
    });
    assert!(
        nr.is_some(),
        "no `502 NR` in the client's access log:\n{}",
        tail(&up.logs.join("client.out"), 20)
    );

    // A ServiceEntry makes the external service reachable again (unknown hosts stay blocked).
    apply_yaml(
        &up.control,
        tmp.path(),
        "external.yaml",
        &external_service_entry(port),
    );
    let ext_url = format!("http://external.example:{port}/registered");
    let r = wait_status(outbound, &ext_url, 200, Duration::from_secs(15));
    assert_eq!(r.body, "external says hi\n", "{r:?}");
    let r = proxied_get(outbound, &local_url, &[]).expect("GET localhost under REGISTRY_ONLY");
    assert_eq!(r.status, 502, "{r:?}");
    let entry = log_entries(&client.stdout())
        .into_iter()
        .find(|e| e.path == "/registered" && e.status == 200);
    assert!(
        entry
            .as_ref()
            .is_some_and(|e| e.cluster == format!("outbound|{port}||external.example")),
        "not served by the ServiceEntry's cluster: {entry:?}"
    );

    // TLS origination: the app speaks plain HTTP to secure.example:80, the sidecar speaks TLS to
    // the server (SNI secure.example, verified against the CA file).
    let ca = new_ca("secure CA");
    let server_cert = leaf(&ca, "secure.example", false);
    let ca_file = tmp.path().join("secure-ca.crt");
    write(&ca_file, &ca.pem);
    let secure = TestServer::start(Some(server_tls(&server_cert)), "hello over TLS\n");
    apply_yaml(
        &up.control,
        tmp.path(),
        "secure.yaml",
        &secure_service_entry(secure.addr.port()),
    );
    // Without the DestinationRule the server gets plain text and refuses it.
    let refused = wait_for(Duration::from_secs(15), || {
        let r = proxied_get(outbound, "http://secure.example/plain", &[]).ok()?;
        (!r.body.contains("REGISTRY_ONLY") && secure.failed_handshakes() > 0).then_some(r)
    })
    .expect("secure.example never reached the TLS server");
    assert_ne!(
        refused.status, 200,
        "plain text to a TLS server: {refused:?}"
    );
    apply_yaml(
        &up.control,
        tmp.path(),
        "secure-dr.yaml",
        &secure_destination_rule(&ca_file),
    );
    let r = wait_status(
        outbound,
        "http://secure.example/",
        200,
        Duration::from_secs(15),
    );
    assert_eq!(r.body, "hello over TLS\n", "{r:?}");
    let seen = secure.seen();
    assert!(
        seen.iter().any(|s| s.tls
            && s.sni.as_deref() == Some("secure.example")
            && s.request_line == "GET / HTTP/1.1"
            && s.host == "secure.example"),
        "the server did not see the request over TLS with SNI secure.example: {seen:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Locality failover
// ---------------------------------------------------------------------------------------------

/// httpbin's `trafficPolicy`: locality-aware round robin, ejecting an endpoint at its first 5xx.
const LOCALITY_FAILOVER: &str = "    loadBalancer:
      simple: ROUND_ROBIN
      localityLbSetting:
        enabled: true
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 3s
      # Split: the app's 5xx still count as 5xx (they are the upstream's answers); a proxy
      # refusing the split fields would keep the cluster without outlier detection.
      splitExternalLocalOriginErrors: true
      consecutiveLocalOriginFailures: 2
";

/// The httpbin tasks' mesh: a local control plane with a DestinationRule for httpbin whose
/// `trafficPolicy` is `policy` (YAML indented under it), and the small HTTP app written out
/// (`python3 APP 0 FLAG` answers 200 while the file FLAG does not exist). Dropped in field
/// order: the control plane, then the temporary directory.
struct HttpbinMesh {
    _cp: Proc,
    up: Up,
    app: String,
    tmp: tempfile::TempDir,
}

fn httpbin_mesh(policy: &str) -> HttpbinMesh {
    require_python3();
    let tmp = tempfile::tempdir().expect("temp dir");
    let up = Up::new(tmp.path());
    write(
        &up.dir.join("httpbin-dr.yaml"),
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: \
             httpbin\nspec:\n  host: httpbin\n  trafficPolicy:\n{policy}"
        ),
    );
    let cp = up.start("weft-up");
    let app = script(tmp.path(), "small_http.py", SMALL_HTTP);
    HttpbinMesh {
        _cp: cp,
        up,
        app,
        tmp,
    }
}

/// Polls (bounded) until `who` answers the client's requests with a 200 while `also()` holds.
fn wait_served_by(outbound: SocketAddr, who: &str, also: impl Fn() -> bool) {
    let mut last = String::new();
    let ok = wait_for(Duration::from_secs(30), || match served(outbound) {
        Ok((200, w)) if w == who && also() => Some(()),
        Ok((s, w)) => {
            last = format!("{s} from {w}");
            None
        }
        Err(e) => {
            last = e;
            None
        }
    });
    assert!(ok.is_some(), "{who} not serving the client: {last}");
}

/// Which workload served a request (`served by NAME PATH`).
fn served(outbound: SocketAddr) -> Result<(u16, String), String> {
    let r = proxied_get(outbound, "http://httpbin:8000/where", &[])?;
    let who = r
        .body
        .strip_prefix("served by ")
        .and_then(|s| s.split(' ').next())
        .unwrap_or("?")
        .to_string();
    Ok((r.status, who))
}

#[test]
fn locality_failover() {
    let _serial = serial();
    let mesh = httpbin_mesh(LOCALITY_FAILOVER);
    let (up, app) = (&mesh.up, &mesh.app);
    let fail_local = mesh.tmp.path().join("fail-local");
    let fail_local_s = fail_local.display().to_string();
    let never = mesh.tmp.path().join("never").display().to_string();
    const T: &str = "topology.kubernetes.io";
    let _local = up.run(
        "httpbin-local",
        &format!("app=httpbin,{T}/region=region1,{T}/zone=zone1"),
        8000,
        &["python3", app, "0", &fail_local_s],
    );
    let _remote = up.run(
        "httpbin-remote",
        &format!("app=httpbin,{T}/region=region1,{T}/zone=zone2"),
        8000,
        &["python3", app, "0", &never],
    );
    let (_client, outbound) =
        start_client(up, &format!("app=client,{T}/region=region1,{T}/zone=zone1"));
    wait_synced(up, &["client", "httpbin-local", "httpbin-remote"]);
    // Both endpoints known and the local one preferred.
    wait_served_by(outbound, "httpbin-local", || up.synced(&["client"]));
    sleep_ms(500);

    // Same zone first: every request stays local (without locality LB, round robin would
    // alternate).
    for i in 0..20 {
        let (s, w) = served(outbound).unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!((s, w.as_str()), (200, "httpbin-local"), "request {i}");
    }

    // The local endpoint fails: one 5xx ejects it; traffic moves to the other zone.
    write(&fail_local, "fail");
    let t_fail = Instant::now();
    let moved = wait_for(Duration::from_secs(5), || {
        matches!(served(outbound), Ok((200, w)) if w == "httpbin-remote").then(Instant::now)
    })
    .expect("traffic did not move to httpbin-remote within 5 s of the local endpoint failing");
    eprintln!("failed over after {:?}", moved - t_fail);
    // Healed at once, it still gets nothing until its ejection (3 s) ends, then traffic returns.
    let _ = std::fs::remove_file(&fail_local);
    let mut during = Vec::new();
    let back = wait_for(Duration::from_secs(15), || {
        let (s, w) = served(outbound).ok()?;
        if w == "httpbin-local" {
            return Some(Instant::now());
        }
        during.push((s, w));
        sleep_ms(100);
        None
    })
    .expect("traffic did not come back to httpbin-local within 15 s");
    let away = back - moved;
    eprintln!("back to the local endpoint {away:?} after failing over");
    assert!(
        during
            .iter()
            .all(|(s, w)| *s == 200 && w == "httpbin-remote"),
        "while ejected: {during:?}"
    );
    assert!(
        away >= Duration::from_millis(2000),
        "the local endpoint came back after {away:?}, before its 3 s ejection ended"
    );
    for i in 0..10 {
        let (s, w) = served(outbound).unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(
            (s, w.as_str()),
            (200, "httpbin-local"),
            "after recovery, request {i}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 9. Warm-up (slow start) of a new endpoint
// ---------------------------------------------------------------------------------------------

/// httpbin's `trafficPolicy` with Istio's `warmup`: a new endpoint starts at 10% of its weight
/// and ramps up linearly over 6 s.
const WARMUP: &str = "    loadBalancer:
      simple: ROUND_ROBIN
      warmup:
        duration: 6s
";

/// Sends `n` requests through the client's sidecar, each answered 200 (else the test fails,
/// naming `when`), and returns the share `who` served.
fn share_served_by(outbound: SocketAddr, who: &str, n: usize, when: &str) -> f64 {
    let mut hits = 0;
    for i in 0..n {
        let (s, w) = served(outbound).unwrap_or_else(|e| panic!("{when}, request {i}: {e}"));
        assert_eq!(s, 200, "{when}, request {i}: status from {w}");
        hits += usize::from(w == who);
    }
    hits as f64 / n as f64
}

#[test]
fn warmup_ramps_up_a_new_endpoint() {
    let _serial = serial();
    let mesh = httpbin_mesh(WARMUP);
    let (up, app) = (&mesh.up, &mesh.app);
    let never = mesh.tmp.path().join("never").display().to_string();
    let _a = up.run(
        "httpbin-a",
        "app=httpbin",
        8000,
        &["python3", app, "0", &never],
    );
    let (_client, outbound) = start_client(up, "app=client");
    wait_synced(up, &["client", "httpbin-a"]);
    wait_served_by(outbound, "httpbin-a", || true);
    // Let httpbin-a's own window pass in the client's sidecar.
    std::thread::sleep(Duration::from_millis(6_500));

    let started_b = Instant::now();
    let _b = up.run(
        "httpbin-b",
        "app=httpbin",
        8000,
        &["python3", app, "0", &never],
    );
    let first_b = wait_for(Duration::from_secs(30), || {
        let (s, w) = served(outbound).ok()?;
        assert_eq!(s, 200, "a request failed while httpbin-b joined");
        (w == "httpbin-b").then(Instant::now)
    })
    .expect("httpbin-b never served a request");
    // Its first requests: weight max(t / 6 s, 10%) against 1, about one request in ten at
    // first — where plain round robin alternates. The client's sidecar may know httpbin-b
    // before its app listens (those picks fail and are retried on httpbin-a), so the bound
    // follows the time since httpbin-b was started.
    let early = share_served_by(outbound, "httpbin-b", 60, "during the warm-up");
    let took = started_b.elapsed().as_secs_f64();
    let w = (took / 6.0).max(0.1);
    let bound = w / (1.0 + w) + 0.1;
    eprintln!(
        "httpbin-b served {:.0}% of 60 requests, {took:.2} s after it started (bound {:.0}%)",
        early * 100.0,
        bound * 100.0
    );
    assert!(
        early > 0.0 && early < bound,
        "httpbin-b served {:.0}% of 60 requests {took:.2} s into a 6 s warm-up (expected at \
         most {:.0}%)",
        early * 100.0,
        bound * 100.0
    );
    // After the window: an even split.
    while first_b.elapsed() < Duration::from_millis(6_500) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let late = share_served_by(outbound, "httpbin-b", 40, "after the warm-up");
    assert!(
        (0.4..=0.6).contains(&late),
        "after the warm-up httpbin-b served {:.0}% of 40 requests",
        late * 100.0
    );
}

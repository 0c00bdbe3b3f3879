//! Shared harness of the end-to-end tests (`local_mesh.rs`, `istio_tasks.rs`): they start the
//! real `weft` binary (`weft demo`, `weft up`, `weft run`, `weft apply`) and talk to it with a
//! small std-only HTTP/1.1 client.
//!
//! Every test takes one global lock — a mutex within a test binary and a lock file across the
//! binaries — because the control plane allocates 127.0.x.y addresses by probing port 15000, so
//! two meshes starting at once could race for the same address. Servers bind only 127.0.0.1 /
//! 127.0.x.y on free ports; every wait is bounded; every process started is stopped on drop
//! (SIGTERM, then SIGKILL after 5 s — `weft` stops its own children), also when a test fails, in
//! which case the logs of what was started are printed.

// Each test binary uses a different part of the harness.
#![allow(dead_code)]

use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub const WEFT: &str = env!("CARGO_BIN_EXE_weft");

/// One mesh at a time within a test binary (see the module doc).
static SERIAL: Mutex<()> = Mutex::new(());

/// The lock shared by the end-to-end test binaries (they run as separate processes).
const LOCK_FILE: &str = "weft-e2e.lock";
/// A lock file older than this is left over from a test process that died without cleaning up.
const LOCK_STALE: Duration = Duration::from_secs(600);
/// How long a test waits for the other binaries' tests before giving up.
const LOCK_WAIT: Duration = Duration::from_secs(1200);

/// Held for the whole of a test: the in-process mutex, then the cross-process lock file.
pub struct Serial {
    _file: FileLock,
    _guard: MutexGuard<'static, ()>,
}

/// One mesh at a time, across every e2e test binary (`local_mesh`, `istio_tasks`).
pub fn serial() -> Serial {
    let guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let file = FileLock::acquire(&std::env::temp_dir().join(LOCK_FILE));
    Serial {
        _file: file,
        _guard: guard,
    }
}

/// An exclusive lock file (`create_new`), holding the owner's pid; removed on drop. A file
/// whose owner is gone or that is older than `LOCK_STALE` is taken over.
struct FileLock {
    path: PathBuf,
}

impl FileLock {
    fn acquire(path: &Path) -> FileLock {
        let me = std::process::id().to_string();
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
            {
                Ok(mut f) => {
                    let _ = f.write_all(me.as_bytes());
                    return FileLock {
                        path: path.to_path_buf(),
                    };
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner = std::fs::read_to_string(path).unwrap_or_default();
                    if lock_is_stale(path, owner.trim()) {
                        // Re-read just before removing so a fresh owner is not evicted.
                        if std::fs::read_to_string(path).unwrap_or_default() == owner {
                            let _ = std::fs::remove_file(path);
                        }
                        continue;
                    }
                }
                Err(e) => panic!("cannot create the lock file {}: {e}", path.display()),
            }
            assert!(
                Instant::now() < deadline,
                "another e2e test held {} for more than {LOCK_WAIT:?}",
                path.display()
            );
            sleep_ms(100);
        }
    }
}

fn lock_is_stale(path: &Path, owner: &str) -> bool {
    let gone = owner
        .parse::<u32>()
        .is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
    let old = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > LOCK_STALE);
    gone || old
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub fn networking() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/bookinfo/networking")
}

/// `n` distinct free ports on 127.0.0.1 (all bound at once so they differ).
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

pub fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// Polls `f` every 100 ms until it returns `Some` or `limit` passes.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        sleep_ms(100);
    }
}

pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// A `weft` process whose stdout/stderr go to files; stopped on drop.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub out: PathBuf,
    pub err: PathBuf,
    /// More logs to show if the test fails (e.g. the demo's per-process logs).
    pub extra_logs: Option<PathBuf>,
}

impl Proc {
    pub fn start(name: &str, logs: &Path, args: &[&str]) -> Proc {
        std::fs::create_dir_all(logs).expect("create log dir");
        let out = logs.join(format!("{name}.out"));
        let err = logs.join(format!("{name}.err"));
        let child = Command::new(WEFT)
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("create stdout log"))
            .stderr(std::fs::File::create(&err).expect("create stderr log"))
            .spawn()
            .expect("start weft");
        Proc {
            name: name.to_string(),
            child,
            out,
            err,
            extra_logs: None,
        }
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    pub fn assert_running(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!(
                "{} exited ({st}):\n{}\n{}",
                self.name,
                tail(&self.out, 30),
                tail(&self.err, 30)
            );
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill_now(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            sleep_ms(50);
        }
        self.kill_now();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "---- {} stdout (tail) ----\n{}",
                self.name,
                tail(&self.out, 40)
            );
            eprintln!(
                "---- {} stderr (tail) ----\n{}",
                self.name,
                tail(&self.err, 60)
            );
            if let Some(dir) = &self.extra_logs
                && let Ok(rd) = std::fs::read_dir(dir)
            {
                let mut files: Vec<PathBuf> = rd
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "log"))
                    .collect();
                files.sort();
                for f in files {
                    let t = tail(&f, 15);
                    if !t.trim().is_empty() {
                        eprintln!("---- {} (tail) ----\n{t}", f.display());
                    }
                }
            }
        }
    }
}

/// What a finished `weft` command printed.
#[derive(Debug)]
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a `weft` command to completion (killed after `limit`).
pub fn weft(args: &[&str], limit: Duration) -> Ran {
    let mut child = Command::new(WEFT)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start weft");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        sleep_ms(20);
    };
    let ran = Ran {
        code: status.and_then(|s| s.code()),
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    };
    assert!(
        status.is_some(),
        "weft {args:?} did not finish within {limit:?}: {ran:?}"
    );
    ran
}

// ---------------------------------------------------------------------------------------------
// A small HTTP/1.1 client (keep-alive, Content-Length or chunked bodies)
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub struct HttpClient {
    pub addr: SocketAddr,
    pub conn: Option<BufReader<TcpStream>>,
}

impl HttpClient {
    pub fn new(addr: SocketAddr) -> Self {
        HttpClient { addr, conn: None }
    }

    pub fn get(
        &mut self,
        target: &str,
        host: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response, String> {
        self.send("GET", target, host, headers, b"")
    }

    /// Sends one request (on the kept-alive connection if there is one). Never retries.
    pub fn send(
        &mut self,
        method: &str,
        target: &str,
        host: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, String> {
        let result = self.exchange(method, target, host, headers, body);
        match result {
            Ok((resp, keep)) => {
                if !keep {
                    self.conn = None;
                }
                Ok(resp)
            }
            Err(e) => {
                self.conn = None;
                Err(format!("{method} {target} via {}: {e}", self.addr))
            }
        }
    }

    fn exchange(
        &mut self,
        method: &str,
        target: &str,
        host: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(Response, bool), String> {
        if self.conn.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))
                .map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(15)))
                .map_err(|e| e.to_string())?;
            s.set_write_timeout(Some(Duration::from_secs(5)))
                .map_err(|e| e.to_string())?;
            let _ = s.set_nodelay(true);
            self.conn = Some(BufReader::new(s));
        }
        let conn = self.conn.as_mut().ok_or("no connection")?;
        let mut req = format!("{method} {target} HTTP/1.1\r\nhost: {host}\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            req.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        conn.get_mut()
            .write_all(&bytes)
            .map_err(|e| format!("write: {e}"))?;
        read_response(conn)
    }
}

pub fn read_line<R: BufRead>(r: &mut R) -> Result<String, String> {
    let mut line = String::new();
    let n = r.read_line(&mut line).map_err(|e| format!("read: {e}"))?;
    if n == 0 {
        return Err("connection closed".into());
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Reads one response; the flag says whether the connection can be reused.
pub fn read_response<R: BufRead>(r: &mut R) -> Result<(Response, bool), String> {
    let status_line = read_line(r).map_err(|e| format!("{e} before a response"))?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(r)?;
        if line.is_empty() {
            break;
        }
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line {line:?}"))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    let mut keep = version == "HTTP/1.1" && find("connection").as_deref() != Some("close");
    let mut body = Vec::new();
    if find("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        loop {
            let size_line = read_line(r)?;
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size {size_line:?}"))?;
            if size == 0 {
                while !read_line(r)?.is_empty() {}
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])
                .map_err(|e| format!("read chunk: {e}"))?;
            read_line(r)?;
        }
    } else if let Some(len) = find("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| format!("bad content-length {len}"))?;
        body.resize(len, 0);
        r.read_exact(&mut body)
            .map_err(|e| format!("read body: {e}"))?;
    } else if !(status == 204 || status == 304 || (100..200).contains(&status)) {
        r.read_to_end(&mut body)
            .map_err(|e| format!("read body: {e}"))?;
        keep = false;
    }
    Ok((
        Response {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        },
        keep,
    ))
}

/// One GET on a fresh connection, for the control plane's API.
pub fn api_get(api: SocketAddr, path: &str) -> Result<Json, String> {
    let mut c = HttpClient::new(api);
    let r = c.get(path, &api.to_string(), &[("connection", "close")])?;
    if r.status != 200 {
        return Err(format!("GET {path}: HTTP {}: {}", r.status, r.body));
    }
    serde_json::from_str(&r.body).map_err(|e| format!("GET {path}: {e}: {}", r.body))
}

// ---------------------------------------------------------------------------------------------
// Bookinfo pages
// ---------------------------------------------------------------------------------------------

/// Which reviews version rendered the page (`<u id="served-by">reviews-v2</u>`).
pub fn served_by(body: &str) -> Option<&str> {
    let start = body.find("id=\"served-by\">")? + "id=\"served-by\">".len();
    let len = body[start..].find('<')?;
    Some(&body[start..start + len])
}

/// A complete, healthy product page: 200, book details, reviews with the stars their version
/// shows, no "unavailable". Returns the reviews version.
pub fn check_page(r: &Response) -> Result<String, String> {
    let brief = || r.body.chars().take(600).collect::<String>();
    if r.status != 200 {
        return Err(format!("HTTP {}: {}", r.status, brief()));
    }
    if r.body.contains("unavailable") {
        return Err(format!("page says unavailable: {}", brief()));
    }
    if !r.body.contains("ISBN-10") {
        return Err(format!("no book details: {}", brief()));
    }
    let v = served_by(&r.body)
        .ok_or_else(|| format!("no reviews on the page: {}", brief()))?
        .to_string();
    let stars_ok = match v.as_str() {
        "reviews-v1" => !r.body.contains("<font color="),
        "reviews-v2" => r.body.contains("<font color=\"black\">") && !r.body.contains("\"red\""),
        "reviews-v3" => r.body.contains("<font color=\"red\">") && !r.body.contains("\"black\""),
        _ => false,
    };
    if !stars_ok {
        return Err(format!("{v} page with the wrong stars: {}", brief()));
    }
    Ok(v)
}

pub fn product_page(
    c: &mut HttpClient,
    host: &str,
    headers: &[(&str, &str)],
) -> Result<String, String> {
    let r = c.get("/productpage", host, headers)?;
    check_page(&r)
}

/// `n` product pages; every one must be healthy. Counts per reviews version.
pub fn mix(
    c: &mut HttpClient,
    host: &str,
    headers: &[(&str, &str)],
    n: usize,
) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for i in 0..n {
        match product_page(c, host, headers) {
            Ok(v) => *counts.entry(v).or_insert(0) += 1,
            Err(e) => panic!("request {i} of {n} (headers {headers:?}) failed: {e}"),
        }
    }
    counts
}

pub fn count(m: &BTreeMap<String, usize>, v: &str) -> usize {
    m.get(v).copied().unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// The demo mesh
// ---------------------------------------------------------------------------------------------

pub struct Demo {
    pub _proc: Proc,
    pub gw: SocketAddr,
    /// The gateway's port 443 (with `start_demo_with(_, true)`).
    pub https: Option<SocketAddr>,
    pub api: SocketAddr,
    pub control: String,
    pub conf: PathBuf,
    pub _tmp: tempfile::TempDir,
}

impl Demo {
    /// Where the demo writes its processes' logs (`NAME.log`, `NAME-proxy.log`).
    pub fn logs(&self) -> PathBuf {
        self.conf.join(".weft")
    }

    /// A proxy's access log, e.g. `reviews-v2-proxy`.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.logs().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// `weft run` against the demo's control plane (logs under the demo's temp dir).
    pub fn run(&self, name: &str, labels: &str, port: u16, cmd: &[&str]) -> Proc {
        weft_run(
            &self.control,
            &self._tmp.path().join("logs"),
            name,
            labels,
            port,
            cmd,
        )
    }

    pub fn workload_ip(&self, name: &str) -> Option<String> {
        workload_ip(self.api, name)
    }

    pub fn synced(&self, names: &[&str]) -> bool {
        synced(self.api, names)
    }

    pub fn host(&self) -> String {
        self.gw.to_string()
    }

    pub fn client(&self) -> HttpClient {
        HttpClient::new(self.gw)
    }
}

/// Starts `weft demo` on free ports with a watched directory holding the demo's files plus
/// `extra` (name, text), waits for "Weft demo mesh is up." and for a healthy product page.
pub fn start_demo(extra: &[(&str, &str)]) -> Demo {
    start_demo_with(extra, false)
}

/// `start_demo`, with the gateway's port 443 on a free local port (`--https-port`) when `https`.
/// `extra` names may have directories (`credentials/NAME/tls.crt`).
pub fn start_demo_with(extra: &[(&str, &str)], https: bool) -> Demo {
    let tmp = tempfile::tempdir().expect("temp dir");
    let conf = tmp.path().join("conf");
    std::fs::create_dir_all(&conf).expect("conf dir");
    for f in [
        "services.yaml",
        "bookinfo-gateway.yaml",
        "destination-rule-all.yaml",
    ] {
        std::fs::copy(networking().join(f), conf.join(f)).expect("copy demo config");
    }
    for (name, text) in extra {
        let path = conf.join(name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("create extra config dir");
        }
        std::fs::write(path, text).expect("write extra config");
    }
    let p = free_ports(5);
    let gw: SocketAddr = ([127, 0, 0, 1], p[0]).into();
    let xds = format!("127.0.0.1:{}", p[1]);
    let api: SocketAddr = ([127, 0, 0, 1], p[2]).into();
    let admin = format!("127.0.0.1:{}", p[3]);
    let conf_s = conf.display().to_string();
    let gw_port = p[0].to_string();
    let api_s = api.to_string();
    let https_port = p[4].to_string();
    let mut args = vec![
        "demo",
        "--port",
        &gw_port,
        "--xds",
        &xds,
        "--api",
        &api_s,
        "--gateway-admin",
        &admin,
        "--dir",
        &conf_s,
    ];
    if https {
        args.extend(["--https-port", https_port.as_str()]);
    }
    let mut proc = Proc::start("weft-demo", &tmp.path().join("logs"), &args);
    proc.extra_logs = Some(conf.join(".weft"));
    let up = wait_for(Duration::from_secs(90), || {
        proc.assert_running();
        proc.stdout()
            .contains("Weft demo mesh is up.")
            .then_some(())
    });
    assert!(
        up.is_some(),
        "the demo did not print that it is up within 90 s"
    );
    let demo = Demo {
        _proc: proc,
        gw,
        https: https.then(|| SocketAddr::from(([127, 0, 0, 1], p[4]))),
        api,
        control: format!("http://{api}"),
        conf,
        _tmp: tmp,
    };
    let mut c = demo.client();
    let host = demo.host();
    let mut last = String::new();
    let ok = wait_for(Duration::from_secs(60), || {
        match product_page(&mut c, &host, &[]) {
            Ok(_) => Some(()),
            Err(e) => {
                last = e;
                None
            }
        }
    });
    assert!(
        ok.is_some(),
        "no healthy /productpage within 60 s; last: {last}"
    );
    demo
}

/// Applies `file` through `weft apply` and returns when the command returned.
pub fn apply(control: &str, file: &Path) -> Instant {
    let f = file.display().to_string();
    let r = weft(
        &["apply", "-f", &f, "--control", control],
        Duration::from_secs(30),
    );
    assert_eq!(r.code, Some(0), "weft apply -f {f}: {r:?}");
    Instant::now()
}

pub fn config_errors(api: SocketAddr) -> Vec<String> {
    let v = api_get(api, "/api/v1/errors").expect("GET /api/v1/errors");
    v["errors"]
        .as_array()
        .expect("an errors list")
        .iter()
        .map(|e| e.as_str().unwrap_or_default().to_string())
        .collect()
}

/// Writes a file so that the watcher sees a change (new mtime and content).
pub fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write config file");
}

// ---------------------------------------------------------------------------------------------
// 4. Restarting the control plane does not interrupt traffic
// ---------------------------------------------------------------------------------------------

pub struct Up {
    pub xds: String,
    pub api: SocketAddr,
    pub control: String,
    pub dir: PathBuf,
    pub logs: PathBuf,
}

impl Up {
    pub fn new(tmp: &Path) -> Up {
        let p = free_ports(2);
        let dir = tmp.join("conf");
        std::fs::create_dir_all(&dir).expect("conf dir");
        let api: SocketAddr = ([127, 0, 0, 1], p[1]).into();
        Up {
            xds: format!("127.0.0.1:{}", p[0]),
            api,
            control: format!("http://{api}"),
            dir,
            logs: tmp.join("logs"),
        }
    }

    /// Starts `weft up DIR` and waits until its API answers.
    pub fn start(&self, name: &str) -> Proc {
        let dir = self.dir.display().to_string();
        let api = self.api.to_string();
        let mut p = Proc::start(
            name,
            &self.logs,
            &["up", &dir, "--xds", &self.xds, "--api", &api],
        );
        let ready = wait_for(Duration::from_secs(20), || {
            p.assert_running();
            api_get(self.api, "/ready").ok()
        });
        assert!(
            ready.is_some(),
            "the control plane's API did not answer within 20 s"
        );
        p
    }

    /// `weft run --name NAME --labels LABELS --port PORT -- CMD...`.
    pub fn run(&self, name: &str, labels: &str, port: u16, cmd: &[&str]) -> Proc {
        weft_run(&self.control, &self.logs, name, labels, port, cmd)
    }

    /// The address of a connected workload.
    pub fn workload_ip(&self, name: &str) -> Option<String> {
        workload_ip(self.api, name)
    }

    /// Whether every named proxy is connected with all its types ACKed.
    pub fn synced(&self, names: &[&str]) -> bool {
        synced(self.api, names)
    }
}

/// `weft run --control CONTROL --name NAME --labels LABELS --port PORT -- CMD...`, its output
/// (the application's and its sidecar's, access logs included) in `logs/NAME.out|err`.
pub fn weft_run(
    control: &str,
    logs: &Path,
    name: &str,
    labels: &str,
    port: u16,
    cmd: &[&str],
) -> Proc {
    let port = port.to_string();
    let mut args = vec![
        "run",
        "--control",
        control,
        "--name",
        name,
        "--labels",
        labels,
        "--port",
        port.as_str(),
        "--",
    ];
    args.extend_from_slice(cmd);
    Proc::start(name, logs, &args)
}

/// The address of a connected workload.
pub fn workload_ip(api: SocketAddr, name: &str) -> Option<String> {
    let v = api_get(api, "/api/v1/workloads").ok()?;
    v["workloads"]
        .as_array()?
        .iter()
        .find(|w| w["name"] == name)
        .and_then(|w| w["ip"].as_str())
        .map(str::to_string)
}

/// Whether every named proxy is connected with all its types ACKed.
pub fn synced(api: SocketAddr, names: &[&str]) -> bool {
    let Ok(v) = api_get(api, "/debug/syncz") else {
        return false;
    };
    let nodes = v.as_array().cloned().unwrap_or_default();
    names.iter().all(|n| {
        nodes.iter().any(|node| {
            node["node_id"]
                .as_str()
                .is_some_and(|id| id.contains(&format!("~{n}.")))
                && node["per_type"]
                    .as_object()
                    .is_some_and(|m| !m.is_empty() && m.values().all(|t| t["state"] == "SYNCED"))
        })
    })
}

//! End-to-end tests of the local mesh (`weft demo`, `weft up`, `weft run`, `weft apply`,
//! `weft analyze`, `weft proxy-status`, `weft proxy-config`): they start the real `weft` binary
//! with real clients (a small HTTP/1.1 client over `TcpStream`, Python `grpcio`) and check
//! what a user would see.
//!
//! Every test takes the harness's global lock (one mesh at a time, across test binaries); the
//! harness (processes stopped on drop, the HTTP client, the demo and `weft up` helpers) is in
//! `common/mod.rs`.
//!
//! These tests must not weaken what they check to pass: a failed request is a failure.

mod common;

use common::*;
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Requests in a loop on `threads` kept-alive connections until stopped, checking each response.
struct Load {
    t0: Instant,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<LoadStats>>,
}

/// What a load thread saw; failure times are offsets from the start of the load.
#[derive(Debug, Default)]
struct LoadStats {
    ok: u64,
    failed: u64,
    /// The first failures and the last one.
    errors: Vec<String>,
    last_error: Option<String>,
}

impl Load {
    fn start(
        addr: SocketAddr,
        threads: usize,
        target: &'static str,
        host: String,
        check: fn(&Response) -> Result<(), String>,
    ) -> Load {
        let t0 = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                let host = host.clone();
                std::thread::spawn(move || {
                    let mut c = HttpClient::new(addr);
                    let mut st = LoadStats::default();
                    while !stop.load(Ordering::Relaxed) {
                        let at = t0.elapsed();
                        match c.get(target, &host, &[]).and_then(|r| check(&r)) {
                            Ok(()) => st.ok += 1,
                            Err(e) => {
                                st.failed += 1;
                                let e = format!("+{:.3}s: {}", at.as_secs_f64(), e.trim_end());
                                if st.errors.len() < 5 {
                                    st.errors.push(e);
                                } else {
                                    st.last_error = Some(e);
                                }
                            }
                        }
                        sleep_ms(5);
                    }
                    st
                })
            })
            .collect();
        Load { t0, stop, threads }
    }

    /// Seconds since the load started (to place events among failures).
    fn offset(&self) -> String {
        format!("+{:.3}s", self.t0.elapsed().as_secs_f64())
    }

    /// Stops the loop and sums what the threads saw.
    fn finish(mut self) -> LoadStats {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = LoadStats::default();
        for t in self.threads.drain(..) {
            let st = t.join().unwrap_or_else(|_| LoadStats {
                failed: 1,
                errors: vec!["load thread panicked".into()],
                ..Default::default()
            });
            total.ok += st.ok;
            total.failed += st.failed;
            total.errors.extend(st.errors);
            total.errors.extend(st.last_error);
        }
        total
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn page_ok(r: &Response) -> Result<(), String> {
    check_page(r).map(|_| ())
}

/// One kind of request of a traffic-shifting step and what it must show once the change is in.
struct Expect {
    headers: &'static [(&'static str, &'static str)],
    /// Versions allowed under the new config.
    allowed: &'static [&'static str],
    /// Versions proving the new config (not possible under the previous one).
    new: &'static [&'static str],
}

/// Polls until 20 consecutive rounds conform to `expects`; returns how long after `applied`
/// the first response proving the change of that run was requested.
fn converge(demo: &Demo, applied: Instant, expects: &[Expect]) -> Duration {
    let mut c = demo.client();
    let host = demo.host();
    let deadline = applied + Duration::from_secs(15);
    let mut run = 0;
    let mut first_new: Option<Instant> = None;
    let mut seen = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "the new routing did not show within 15 s; last responses: {seen:?}"
        );
        let mut round_ok = true;
        for e in expects {
            let at = Instant::now();
            let v = product_page(&mut c, &host, e.headers)
                .unwrap_or_else(|err| panic!("request failed while the change applied: {err}"));
            if seen.len() >= 30 {
                seen.remove(0);
            }
            seen.push(format!("{:?}→{v}", e.headers));
            if !e.allowed.contains(&v.as_str()) {
                round_ok = false;
            } else if first_new.is_none() && e.new.contains(&v.as_str()) {
                first_new = Some(at);
            }
        }
        if round_ok {
            run += 1;
        } else {
            run = 0;
            first_new = None;
        }
        if run >= 20
            && let Some(t) = first_new
        {
            return t.saturating_duration_since(applied);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. The demo serves every service
// ---------------------------------------------------------------------------------------------

#[test]
fn demo_serves_every_service() {
    let _serial = serial();
    let demo = start_demo(&[]);
    let host = demo.host();
    let mut c = demo.client();

    // The page: book details, reviews from some version with the stars that version shows.
    let r = c.get("/productpage", &host, &[]).expect("GET /productpage");
    let v = check_page(&r).expect("a healthy product page");
    assert!(r.body.contains("ISBN"), "no book details: {}", r.body);
    assert!(r.body.contains("The Comedy of Errors"), "{}", r.body);
    assert!(["reviews-v1", "reviews-v2", "reviews-v3"].contains(&v.as_str()));

    // Without a VirtualService every version serves (round robin or close to it).
    let counts = mix(&mut c, &host, &[], 60);
    for v in ["reviews-v1", "reviews-v2", "reviews-v3"] {
        assert!(
            count(&counts, v) > 0,
            "{v} never served in 60 requests: {counts:?}"
        );
    }

    // The JSON API.
    let r = c
        .get("/api/v1/products", &host, &[])
        .expect("GET /api/v1/products");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.contains("application/json")),
        "{r:?}"
    );
    let products: Json = serde_json::from_str(&r.body).expect("products JSON");
    assert_eq!(products[0]["id"], 0, "{products}");
    assert_eq!(products[0]["title"], "The Comedy of Errors", "{products}");
    let r = c
        .get("/api/v1/products/0/reviews", &host, &[])
        .expect("GET reviews API");
    assert_eq!(r.status, 200, "{r:?}");
    let reviews: Json = serde_json::from_str(&r.body).expect("reviews JSON");
    assert!(
        reviews["reviews"].as_array().is_some_and(|a| !a.is_empty()),
        "{reviews}"
    );

    // Sign in as jason: a session cookie, then the page greets him.
    let r = c
        .send(
            "POST",
            "/login",
            &host,
            &[("content-type", "application/x-www-form-urlencoded")],
            b"username=jason&passwd=jason",
        )
        .expect("POST /login");
    assert_eq!(r.status, 302, "{r:?}");
    let cookie = r
        .header("set-cookie")
        .expect("a session cookie")
        .to_string();
    assert!(cookie.starts_with("session=jason"), "{cookie}");
    let session = cookie.split(';').next().unwrap_or_default().to_string();
    let r = c
        .get("/productpage", &host, &[("cookie", session.as_str())])
        .expect("GET /productpage as jason");
    check_page(&r).expect("a healthy page for jason");
    assert!(
        r.body.contains("<b id=\"user\">jason</b>"),
        "not signed in: {}",
        r.body
    );
    drop(demo);
}

// ---------------------------------------------------------------------------------------------
// 2. Shifting traffic with Istio's own YAML, without a failed request
// ---------------------------------------------------------------------------------------------

#[test]
fn shifting_traffic_with_istio_yaml() {
    let _serial = serial();
    let demo = start_demo(&[]);
    let host = demo.host();
    let load = Load::start(demo.gw, 4, "/productpage", host.clone(), page_ok);
    let mut c = demo.client();
    const N: usize = 500;
    const ANON: &[(&str, &str)] = &[];
    const JASON: &[(&str, &str)] = &[("end-user", "jason")];
    let mut latencies = Vec::new();
    let mut applied_at = Vec::new();

    // All to v1.
    let t = apply(
        &demo.control,
        &networking().join("virtual-service-all-v1.yaml"),
    );
    applied_at.push(load.offset());
    let d = converge(
        &demo,
        t,
        &[Expect {
            headers: ANON,
            allowed: &["reviews-v1"],
            new: &["reviews-v1"],
        }],
    );
    latencies.push(("virtual-service-all-v1", d));
    let m = mix(&mut c, &host, ANON, N);
    assert_eq!(count(&m, "reviews-v1"), N, "all-v1: {m:?}");

    // 50/50 v1/v3.
    let t = apply(
        &demo.control,
        &networking().join("virtual-service-reviews-50-v3.yaml"),
    );
    applied_at.push(load.offset());
    let d = converge(
        &demo,
        t,
        &[Expect {
            headers: ANON,
            allowed: &["reviews-v1", "reviews-v3"],
            new: &["reviews-v3"],
        }],
    );
    latencies.push(("virtual-service-reviews-50-v3", d));
    let m = mix(&mut c, &host, ANON, N);
    let (v1, v3) = (count(&m, "reviews-v1"), count(&m, "reviews-v3"));
    assert_eq!(v1 + v3, N, "50-v3: only v1 and v3 expected: {m:?}");
    for (v, n) in [("v1", v1), ("v3", v3)] {
        let pct = n as f64 * 100.0 / N as f64;
        assert!(
            (43.0..=57.0).contains(&pct),
            "50-v3: {v} got {pct:.1} % (50 ± 7): {m:?}"
        );
    }

    // jason to v2, everyone else to v1.
    let t = apply(
        &demo.control,
        &networking().join("virtual-service-reviews-test-v2.yaml"),
    );
    applied_at.push(load.offset());
    let d = converge(
        &demo,
        t,
        &[
            Expect {
                headers: JASON,
                allowed: &["reviews-v2"],
                new: &["reviews-v2"],
            },
            Expect {
                headers: ANON,
                allowed: &["reviews-v1"],
                new: &[],
            },
        ],
    );
    latencies.push(("virtual-service-reviews-test-v2", d));
    let m = mix(&mut c, &host, JASON, N);
    assert_eq!(
        count(&m, "reviews-v2"),
        N,
        "test-v2 with end-user: jason: {m:?}"
    );
    let m = mix(&mut c, &host, ANON, N);
    assert_eq!(
        count(&m, "reviews-v1"),
        N,
        "test-v2 without end-user: {m:?}"
    );
    // Signed in through the page (cookie) counts as jason too.
    let r = c
        .send(
            "POST",
            "/login",
            &host,
            &[("content-type", "application/x-www-form-urlencoded")],
            b"username=jason",
        )
        .expect("POST /login");
    let session = r
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_string();
    let m = mix(&mut c, &host, &[("cookie", session.as_str())], 20);
    assert_eq!(count(&m, "reviews-v2"), 20, "signed in as jason: {m:?}");

    // All to v3.
    let t = apply(
        &demo.control,
        &networking().join("virtual-service-reviews-v3.yaml"),
    );
    applied_at.push(load.offset());
    let d = converge(
        &demo,
        t,
        &[
            Expect {
                headers: ANON,
                allowed: &["reviews-v3"],
                new: &["reviews-v3"],
            },
            Expect {
                headers: JASON,
                allowed: &["reviews-v3"],
                new: &["reviews-v3"],
            },
        ],
    );
    latencies.push(("virtual-service-reviews-v3", d));
    let m = mix(&mut c, &host, ANON, N);
    assert_eq!(count(&m, "reviews-v3"), N, "v3: {m:?}");

    let st = load.finish();
    eprintln!(
        "apply → new routing observed: {latencies:?}; background requests: {} ok, {} failed",
        st.ok, st.failed
    );
    assert_eq!(
        st.failed, 0,
        "background requests failed while applying (applies at {applied_at:?}): {:#?}",
        st.errors
    );
    assert!(
        st.ok >= 100,
        "the background load barely ran ({} requests)",
        st.ok
    );
    for (file, d) in &latencies {
        assert!(
            *d <= Duration::from_secs(1),
            "{file}: the new routing showed {d:?} after `weft apply` returned (≤ 1 s)"
        );
    }
    drop(demo);
}

// ---------------------------------------------------------------------------------------------
// 3. A broken file in the watched directory: reported, and the last good config keeps serving
// ---------------------------------------------------------------------------------------------

const REVIEWS_V3: &str = "apiVersion: networking.istio.io/v1
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
        subset: v3
";

/// Line 7 has a stray `]`.
const BROKEN_SYNTAX: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: details
spec:
  hosts: [details]
  http: ]
";

/// `weight: 150` on line 13.
const REVIEWS_V1_BAD_WEIGHT: &str = "apiVersion: networking.istio.io/v1
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
        subset: v1
      weight: 150
";

const REVIEWS_V1: &str = "apiVersion: networking.istio.io/v1
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
        subset: v1
      weight: 100
";

const DETAILS_V1: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: details
spec:
  hosts: [details]
  http:
  - route:
    - destination: {host: details, subset: v1}
";

#[test]
fn broken_file_keeps_serving() {
    let _serial = serial();
    let demo = start_demo(&[("reviews.yaml", REVIEWS_V3)]);
    let host = demo.host();
    let mut c = demo.client();
    let v3 = || Expect {
        headers: &[],
        allowed: &["reviews-v3"],
        new: &["reviews-v3"],
    };
    converge(&demo, Instant::now(), &[v3()]);
    assert_eq!(config_errors(demo.api), Vec::<String>::new());
    let load = Load::start(demo.gw, 2, "/productpage", host.clone(), page_ok);

    // A syntactically broken new file: reported with file and line; nothing changes.
    let broken = demo.conf.join("broken.yaml");
    write(&broken, BROKEN_SYNTAX);
    let want = format!("{}:7:", broken.display());
    let errs = wait_for(Duration::from_secs(5), || {
        let e = config_errors(demo.api);
        e.iter().any(|e| e.starts_with(&want)).then_some(e)
    });
    assert!(
        errs.is_some(),
        "no error naming {want} within 5 s: {:?}",
        config_errors(demo.api)
    );
    let m = mix(&mut c, &host, &[], 100);
    assert_eq!(
        count(&m, "reviews-v3"),
        100,
        "routing changed after a broken file: {m:?}"
    );

    // A bad field in the file in force: reported with file, line and field path; its previous
    // content keeps serving.
    let reviews = demo.conf.join("reviews.yaml");
    write(&reviews, REVIEWS_V1_BAD_WEIGHT);
    let want = format!("{}:13:", reviews.display());
    let errs = wait_for(Duration::from_secs(5), || {
        let e = config_errors(demo.api);
        e.iter().any(|e| e.starts_with(&want)).then_some(e)
    })
    .unwrap_or_else(|| {
        panic!(
            "no error naming {want} within 5 s: {:?}",
            config_errors(demo.api)
        )
    });
    let e = errs
        .iter()
        .find(|e| e.starts_with(&want))
        .cloned()
        .unwrap_or_default();
    assert!(
        e.contains("spec.http[0].route[0].weight"),
        "no field path: {e}"
    );
    assert!(
        errs.iter().any(|e| e.contains("broken.yaml")),
        "the first error went away while broken.yaml is still broken: {errs:?}"
    );
    let m = mix(&mut c, &host, &[], 100);
    assert_eq!(
        count(&m, "reviews-v3"),
        100,
        "routing changed after a bad field: {m:?}"
    );

    // Fixing both files clears the errors, and the fixed content applies.
    write(&broken, DETAILS_V1);
    write(&reviews, REVIEWS_V1);
    let cleared = wait_for(Duration::from_secs(5), || {
        config_errors(demo.api).is_empty().then_some(())
    });
    assert!(
        cleared.is_some(),
        "errors not cleared after the fix: {:?}",
        config_errors(demo.api)
    );
    converge(
        &demo,
        Instant::now(),
        &[Expect {
            headers: &[],
            allowed: &["reviews-v1"],
            new: &["reviews-v1"],
        }],
    );

    let st = load.finish();
    assert_eq!(
        st.failed, 0,
        "requests failed around broken config: {:#?}",
        st.errors
    );
    assert!(
        st.ok >= 50,
        "the background load barely ran ({} requests)",
        st.ok
    );
    drop(demo);
}

fn httpbin_ok(r: &Response) -> Result<(), String> {
    if r.status == 200 && r.body.contains("\"url\": \"http://httpbin:8000/get\"") {
        Ok(())
    } else {
        Err(format!(
            "HTTP {}: {}",
            r.status,
            r.body.chars().take(300).collect::<String>()
        ))
    }
}

#[test]
fn control_plane_restart_does_not_interrupt_traffic() {
    let _serial = serial();
    let tmp = tempfile::tempdir().expect("temp dir");
    let up = Up::new(tmp.path());
    let mut cp = up.start("weft-up");
    let _httpbin = up.run(
        "httpbin-v1",
        "app=httpbin,version=v1",
        8000,
        &[WEFT, "app", "httpbin"],
    );
    let _client = up.run("client", "app=client", 18999, &["sleep", "300"]);
    let ip = wait_for(Duration::from_secs(30), || up.workload_ip("client"))
        .expect("the client workload did not register within 30 s");
    let outbound: SocketAddr = format!("{ip}:15001")
        .parse()
        .expect("client outbound address");
    let mut c = HttpClient::new(outbound);
    let mut last = String::new();
    let ok = wait_for(Duration::from_secs(30), || {
        match c
            .get("http://httpbin:8000/get", "httpbin:8000", &[])
            .and_then(|r| httpbin_ok(&r))
        {
            Ok(()) => Some(()),
            Err(e) => {
                last = e;
                None
            }
        }
    });
    assert!(
        ok.is_some(),
        "httpbin not reachable through the client's sidecar: {last}"
    );
    assert!(
        wait_for(Duration::from_secs(10), || up
            .synced(&["client", "httpbin-v1"])
            .then_some(()))
        .is_some(),
        "proxies not synced"
    );

    let load = Load::start(
        outbound,
        2,
        "http://httpbin:8000/get",
        "httpbin:8000".into(),
        httpbin_ok,
    );
    sleep_ms(1000);
    let killed_at = load.offset();
    cp.kill_now();
    sleep_ms(3000);
    let restarted = Instant::now();
    let restarted_at = load.offset();
    cp = up.start("weft-up-restarted");
    let restart_ready_at = load.offset();
    let synced = wait_for(Duration::from_secs(20), || {
        up.synced(&["client", "httpbin-v1"]).then_some(())
    });
    assert!(
        synced.is_some(),
        "the proxies did not reconnect and sync within 20 s of the restart"
    );
    eprintln!(
        "proxies resynced {:?} after the restart",
        restarted.elapsed()
    );
    // Keep sending well past the first pushes of the new control plane.
    sleep_ms(3000);

    // A change after the restart reaches the proxies (they are connected to the new one).
    let vs = tmp.path().join("httpbin-header.yaml");
    write(
        &vs,
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts: [httpbin]
  http:
  - route:
    - destination: {host: httpbin}
    headers:
      response:
        set: {x-weft-restarted: 'yes'}
",
    );
    apply(&up.control, &vs);
    let mut c = HttpClient::new(outbound);
    let seen = wait_for(Duration::from_secs(10), || {
        let r = c.get("http://httpbin:8000/get", "httpbin:8000", &[]).ok()?;
        (r.header("x-weft-restarted") == Some("yes")).then_some(())
    });
    assert!(
        seen.is_some(),
        "the VirtualService applied after the restart never took effect"
    );

    let st = load.finish();
    let timeline = format!(
        "control plane SIGKILLed at {killed_at}, restarted at {restarted_at} (API up at {restart_ready_at})"
    );
    eprintln!(
        "requests through the restart: {} ok, {} failed; {timeline}",
        st.ok, st.failed
    );
    assert_eq!(
        st.failed, 0,
        "requests failed across the control-plane restart; {timeline}; failures: {:#?}",
        st.errors
    );
    assert!(st.ok >= 100, "the load barely ran ({} requests)", st.ok);
    cp.assert_running();
}

// ---------------------------------------------------------------------------------------------
// 5. Proxyless gRPC (Python grpcio) follows a weighted split
// ---------------------------------------------------------------------------------------------

const GREETER_CONFIG: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: greeter
spec:
  hosts: [greeter.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 50051, name: grpc, protocol: GRPC}]
  resolution: STATIC
  workloadSelector: {labels: {app: greeter}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: greeter
spec:
  host: greeter
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: greeter
spec:
  hosts: [greeter]
  http:
  - route:
    - destination: {host: greeter, subset: v1}
      weight: 80
    - destination: {host: greeter, subset: v2}
      weight: 20
";

const GRPC_CLIENT: &str = r#"
import sys, grpc

def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])

def encode(name):
    data = name.encode()
    return b"\x0a" + varint(len(data)) + data

def decode(data):
    # HelloReply: field 1 (string message).
    i = 0
    while i < len(data):
        key = data[i]; i += 1
        shift = n = 0
        while True:
            b = data[i]; i += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        if key == 0x0a:
            return data[i:i + n].decode()
        i += n
    return ""

channel = grpc.insecure_channel("xds:///greeter.default.svc.cluster.local:50051")
call = channel.unary_unary("/helloworld.Greeter/SayHello")
for i in range(int(sys.argv[1])):
    reply = call(encode("weft"), timeout=30, wait_for_ready=True)
    print("REPLY", decode(reply), flush=True)
channel.close()
"#;

fn grpcio_available() -> bool {
    Command::new("python3")
        .args(["-c", "import grpc"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn proxyless_grpc_follows_weighted_split() {
    let _serial = serial();
    if !grpcio_available() {
        eprintln!(
            "SKIPPED proxyless_grpc_follows_weighted_split: python3 cannot `import grpc` (run scripts/test-deps)"
        );
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let up = Up::new(tmp.path());
    write(&up.dir.join("greeter.yaml"), GREETER_CONFIG);
    let _cp = up.start("weft-up");
    let _v1 = up.run(
        "greeter-v1",
        "app=greeter,version=v1",
        50051,
        &[WEFT, "app", "greeter", "--version", "v1"],
    );
    let _v2 = up.run(
        "greeter-v2",
        "app=greeter,version=v2",
        50051,
        &[WEFT, "app", "greeter", "--version", "v2"],
    );
    let both = wait_for(Duration::from_secs(30), || {
        (up.workload_ip("greeter-v1").is_some() && up.workload_ip("greeter-v2").is_some())
            .then_some(())
    });
    assert!(both.is_some(), "the greeters did not register within 30 s");
    assert!(
        wait_for(Duration::from_secs(10), || up
            .synced(&["greeter-v1", "greeter-v2"])
            .then_some(()))
        .is_some(),
        "greeter sidecars not synced"
    );
    assert_eq!(config_errors(up.api), Vec::<String>::new());

    let bootstrap = tmp.path().join("xds-bootstrap.json");
    write(
        &bootstrap,
        &serde_json::json!({
            "xds_servers": [{"server_uri": up.xds, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
            "node": {"id": "grpc-client~1", "user_agent_name": "gRPC Python"}
        })
        .to_string(),
    );
    let script = tmp.path().join("greeter_client.py");
    write(&script, GRPC_CLIENT);
    let out_path = tmp.path().join("client.out");
    let err_path = tmp.path().join("client.err");
    const CALLS: usize = 300;
    let mut py = Command::new("python3")
        .arg(&script)
        .arg(CALLS.to_string())
        .env("GRPC_XDS_BOOTSTRAP", &bootstrap)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("client log"))
        .stderr(std::fs::File::create(&err_path).expect("client log"))
        .spawn()
        .expect("start python3");
    let deadline = Instant::now() + Duration::from_secs(75);
    let status = loop {
        if let Ok(Some(st)) = py.try_wait() {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = py.kill();
            let _ = py.wait();
            break None;
        }
        sleep_ms(100);
    };
    let out = std::fs::read_to_string(&out_path).unwrap_or_default();
    let err = tail(&err_path, 40);
    assert!(
        status.is_some_and(|s| s.success()),
        "the gRPC client failed or timed out ({status:?}); stderr:\n{err}\nstdout tail:\n{}",
        tail(&out_path, 5)
    );
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for line in out.lines().filter_map(|l| l.strip_prefix("REPLY ")) {
        *counts.entry(line.to_string()).or_insert(0) += 1;
    }
    let v1 = count(&counts, "Hello weft from greeter-v1");
    let v2 = count(&counts, "Hello weft from greeter-v2");
    assert_eq!(v1 + v2, CALLS, "unexpected replies: {counts:?}");
    let pct = v1 as f64 * 100.0 / CALLS as f64;
    eprintln!("proxyless gRPC split: {counts:?} ({pct:.1} % v1)");
    assert!(
        (72.0..=88.0).contains(&pct),
        "v1 got {pct:.1} % of {CALLS} calls (80 ± 8): {counts:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. weft analyze, and weft apply refusing invalid files
// ---------------------------------------------------------------------------------------------

const MISSING_SUBSET: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: reviews
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v9}
";

/// A DestinationRule with a field Weft does not implement (`proxyProtocol`, line 11) beside
/// fields it does.
const UNIMPLEMENTED_DR: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: ratings
spec:
  host: ratings
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
      warmupDurationSecs: 30s
    proxyProtocol: {version: V1}
    outlierDetection:
      splitExternalLocalOriginErrors: true
";

/// A valid DestinationRule, then a VirtualService with `weight: 150` on line 21.
const INVALID_APPLY: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
---
apiVersion: networking.istio.io/v1
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
      weight: 150
";

#[test]
fn analyze_and_errors() {
    let _serial = serial();
    let net = networking().display().to_string();
    let r = weft(&["analyze", &net], Duration::from_secs(30));
    assert_eq!(
        r.code,
        Some(0),
        "weft analyze of Istio's Bookinfo YAML: {r:?}"
    );

    let tmp = tempfile::tempdir().expect("temp dir");
    let bad_dir = tmp.path().join("missing-subset");
    std::fs::create_dir_all(&bad_dir).expect("dir");
    write(&bad_dir.join("reviews.yaml"), MISSING_SUBSET);
    let r = weft(
        &["analyze", &bad_dir.display().to_string()],
        Duration::from_secs(30),
    );
    assert_eq!(
        r.code,
        Some(1),
        "a missing subset must fail analysis: {r:?}"
    );
    assert!(r.stdout.contains("IST0101"), "no IST0101: {r:?}");
    assert!(
        r.stdout.contains("v9"),
        "the missing subset is not named: {r:?}"
    );

    // Valid Istio that Weft would not act on: a warning naming file, line and field, exit 0.
    let warn_dir = tmp.path().join("unimplemented");
    std::fs::create_dir_all(&warn_dir).expect("dir");
    let warn_file = warn_dir.join("dr.yaml");
    write(&warn_file, UNIMPLEMENTED_DR);
    let r = weft(
        &["analyze", &warn_dir.display().to_string()],
        Duration::from_secs(30),
    );
    assert_eq!(
        r.code,
        Some(0),
        "warnings alone must not fail analysis: {r:?}"
    );
    assert!(
        r.stdout.contains(&format!(
            "{}:11:5 DestinationRule default/ratings: `spec.trafficPolicy.proxyProtocol` is not implemented yet",
            warn_file.display()
        )),
        "no warning for proxyProtocol: {r:?}"
    );
    for implemented in ["splitExternalLocalOriginErrors", "warmupDurationSecs"] {
        assert!(
            !r.stdout.contains(implemented),
            "an implemented field was reported: {r:?}"
        );
    }

    // `weft apply` of an invalid file: refused whole, with file:line and field.
    let up = Up::new(tmp.path());
    let _cp = up.start("weft-up");
    let bad = tmp.path().join("invalid.yaml");
    write(&bad, INVALID_APPLY);
    let bad_s = bad.display().to_string();
    let r = weft(
        &["apply", "-f", &bad_s, "--control", &up.control],
        Duration::from_secs(30),
    );
    assert_ne!(r.code, Some(0), "an invalid file was accepted: {r:?}");
    assert!(
        r.stderr.contains(&format!("{bad_s}:21:")),
        "no file:line in stderr: {r:?}"
    );
    assert!(
        r.stderr.contains("spec.http[0].route[0].weight"),
        "no field path in stderr: {r:?}"
    );
    for kind in ["vs", "dr"] {
        let g = weft(
            &["get", kind, "--control", &up.control],
            Duration::from_secs(30),
        );
        assert_eq!(g.code, Some(0), "{g:?}");
        assert!(
            g.stdout.contains("No resources found."),
            "something was applied ({kind}): {g:?}"
        );
    }

    // The same file once fixed applies, and `weft get vs` shows it (so the check above can fail).
    let good = tmp.path().join("valid.yaml");
    write(&good, &INVALID_APPLY.replace("weight: 150", "weight: 100"));
    apply(&up.control, &good);
    let g = weft(
        &["get", "vs", "--control", &up.control],
        Duration::from_secs(30),
    );
    assert!(
        g.stdout.contains("VirtualService") && g.stdout.contains("reviews"),
        "weft get vs does not list the applied VirtualService: {g:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. proxy-status and proxy-config
// ---------------------------------------------------------------------------------------------

#[test]
fn proxy_status_and_config() {
    let _serial = serial();
    let demo = start_demo(&[]);
    let mut last = None;
    let synced = wait_for(Duration::from_secs(20), || {
        let r = weft(
            &["proxy-status", "--control", &demo.control],
            Duration::from_secs(30),
        );
        let rows: Vec<String> = r
            .stdout
            .lines()
            .filter(|l| l.starts_with("sidecar~") || l.starts_with("router~"))
            .map(str::to_string)
            .collect();
        let ok = r.code == Some(0)
            && rows.len() == 7
            && rows.iter().all(|l| l.matches("SYNCED").count() == 4)
            && !r.stdout.contains("NACK");
        last = Some(r);
        ok.then_some(rows)
    });
    let rows =
        synced.unwrap_or_else(|| panic!("proxy-status never showed 7 SYNCED proxies: {last:?}"));
    for name in [
        "productpage-v1",
        "details-v1",
        "ratings-v1",
        "reviews-v1",
        "reviews-v2",
        "reviews-v3",
        "istio-ingressgateway",
    ] {
        assert!(
            rows.iter().any(|r| r.contains(&format!("~{name}."))),
            "{name} missing: {rows:#?}"
        );
    }

    let r = weft(
        &[
            "proxy-config",
            "routes",
            "productpage-v1",
            "--control",
            &demo.control,
        ],
        Duration::from_secs(30),
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(
        r.stdout.contains("outbound|9080|"),
        "no outbound|9080| clusters in routes: {r:?}"
    );
    assert!(
        r.stdout.contains("reviews.default.svc.cluster.local:9080"),
        "{r:?}"
    );

    let r = weft(
        &[
            "proxy-config",
            "clusters",
            "productpage-v1",
            "--control",
            &demo.control,
        ],
        Duration::from_secs(30),
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(
        r.stdout
            .contains("outbound|9080|v1|reviews.default.svc.cluster.local"),
        "no subset cluster for reviews v1: {r:?}"
    );
    drop(demo);
}

//! End-to-end tests of the `httpbin` binary on 127.0.0.1 (raw HTTP/1.1, bounded).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(20);

struct Httpbin {
    addr: SocketAddr,
    child: Child,
}

impl Httpbin {
    fn start() -> Httpbin {
        let mut child = Command::new(env!("CARGO_BIN_EXE_httpbin"))
            .env_clear()
            .env("WEFT_LISTEN_ADDR", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn httpbin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let first = rx.recv_timeout(TIMEOUT).expect("httpbin started");
        let addr = first
            .split("listening on ")
            .nth(1)
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
        Httpbin { addr, child }
    }
}

impl Drop for Httpbin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Resp {
    status: u16,
    body: String,
}

impl Resp {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad response {text:?}"));
    Resp {
        status,
        body: body.to_owned(),
    }
}

fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    request(addr, "GET", path, headers, "")
}

#[test]
fn status_endpoint() {
    let h = Httpbin::start();
    for code in [200u16, 204, 418, 503] {
        assert_eq!(get(h.addr, &format!("/status/{code}"), &[]).status, code);
    }
    assert_eq!(get(h.addr, "/status/abc", &[]).status, 400);
    assert_eq!(get(h.addr, "/status/1000", &[]).status, 400);
    assert_eq!(get(h.addr, "/health", &[]).status, 200);
    assert_eq!(get(h.addr, "/nope", &[]).status, 404);
}

#[test]
fn headers_ip_get() {
    let h = Httpbin::start();
    let r = get(
        h.addr,
        "/headers",
        &[("x-request-id", "abc"), ("X-B3-TraceId", "t1")],
    );
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["headers"]["X-Request-Id"], "abc");
    assert_eq!(v["headers"]["X-B3-Traceid"], "t1");
    assert_eq!(v["headers"]["Host"], "example.test");

    assert_eq!(
        get(h.addr, "/ip", &[]).json(),
        serde_json::json!({"origin": "127.0.0.1"})
    );

    let v = get(h.addr, "/get?a=1&b=two&a=3", &[("User-Agent", "t/1")]).json();
    assert_eq!(v["args"], serde_json::json!({"a": ["1", "3"], "b": "two"}));
    assert_eq!(v["headers"]["User-Agent"], "t/1");
    assert_eq!(v["origin"], "127.0.0.1");
    assert_eq!(v["url"], "http://example.test/get?a=1&b=two&a=3");
}

#[test]
fn anything_echoes_method_and_body() {
    let h = Httpbin::start();
    let v = request(
        h.addr,
        "PUT",
        "/anything/x?k=v",
        &[("Content-Type", "application/json")],
        r#"{"hello":"world"}"#,
    )
    .json();
    assert_eq!(v["method"], "PUT");
    assert_eq!(v["data"], r#"{"hello":"world"}"#);
    assert_eq!(v["json"], serde_json::json!({"hello": "world"}));
    assert_eq!(v["args"]["k"], "v");
    assert_eq!(v["url"], "http://example.test/anything/x?k=v");

    let v = request(
        h.addr,
        "POST",
        "/anything",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        "a=1&b=x+y",
    )
    .json();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["form"], serde_json::json!({"a": "1", "b": "x y"}));
    assert_eq!(v["json"], serde_json::Value::Null);
}

#[test]
fn delay_sleeps_then_answers() {
    let h = Httpbin::start();
    let start = Instant::now();
    let r = get(h.addr, "/delay/1", &[("x-test", "1")]);
    let took = start.elapsed();
    assert_eq!(r.status, 200);
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert_eq!(r.json()["headers"]["X-Test"], "1");
    assert_eq!(get(h.addr, "/delay/-1", &[]).status, 400);
    assert_eq!(get(h.addr, "/delay/x", &[]).status, 400);
}

#[test]
fn sigterm_exits_cleanly() {
    let mut h = Httpbin::start();
    {
        let mut s = TcpStream::connect(h.addr).expect("connect");
        let _ = s.write_all(b"\xff\xfe not http \r\n\r\n");
    }
    assert_eq!(get(h.addr, "/health", &[]).status, 200);
    let ok = Command::new("kill")
        .args(["-TERM", &h.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
    let deadline = Instant::now() + TIMEOUT;
    let st = loop {
        if let Some(st) = h.child.try_wait().expect("try_wait") {
            break st;
        }
        assert!(Instant::now() < deadline, "httpbin ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(st.success(), "{st:?}");
}

//! End-to-end tests of the `greeter` binary with a tonic client on 127.0.0.1.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use greeter::GreeterClient;
use greeter::pb::{HealthCheckRequest, HelloRequest, ServingStatus};
use tonic::transport::{Channel, Endpoint};

const TIMEOUT: Duration = Duration::from_secs(20);

struct Greeter {
    addr: SocketAddr,
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Greeter {
    fn start(version: &str) -> Greeter {
        let mut child = Command::new(env!("CARGO_BIN_EXE_greeter"))
            .args(["--version", version, "--listen", "127.0.0.1:0"])
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn greeter");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let first = lines.recv_timeout(TIMEOUT).expect("greeter started");
        let addr = first
            .split("listening on ")
            .nth(1)
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
        Greeter { addr, child, lines }
    }

    async fn client(&self) -> GreeterClient<Channel> {
        let ch = Endpoint::from_shared(format!("http://{}", self.addr))
            .expect("endpoint")
            .connect_timeout(TIMEOUT)
            .timeout(TIMEOUT)
            .connect()
            .await
            .expect("connect");
        GreeterClient::new(ch)
    }
}

impl Drop for Greeter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn say_hello_per_version_and_health() {
    let v1 = Greeter::start("v1");
    let v2 = Greeter::start("v2");
    let mut c1 = v1.client().await;
    let mut c2 = v2.client().await;
    let r = c1
        .say_hello(HelloRequest {
            name: "Weft".into(),
        })
        .await
        .expect("SayHello v1");
    assert_eq!(r.into_inner().message, "Hello Weft from greeter-v1");
    let r = c2
        .say_hello(HelloRequest {
            name: "Weft".into(),
        })
        .await
        .expect("SayHello v2");
    assert_eq!(r.into_inner().message, "Hello Weft from greeter-v2");

    for service in ["", "helloworld.Greeter"] {
        let h = c1
            .health_check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health");
        assert_eq!(h.into_inner().status, ServingStatus::Serving as i32);
    }
    let err = c1
        .health_check(HealthCheckRequest {
            service: "nope.Svc".into(),
        })
        .await
        .expect_err("unknown service");
    assert_eq!(err.code(), tonic::Code::NotFound);

    let logged = std::iter::from_fn(|| v1.lines.recv_timeout(Duration::from_secs(5)).ok())
        .any(|l| l.contains("SayHello name=\"Weft\" OK"));
    assert!(logged, "one log line per request");
}

#[tokio::test]
async fn unknown_method_is_unimplemented() {
    let g = Greeter::start("v1");
    let ch = Endpoint::from_shared(format!("http://{}", g.addr))
        .expect("endpoint")
        .timeout(TIMEOUT)
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.expect("ready");
    let res: Result<tonic::Response<HelloRequest>, tonic::Status> = grpc
        .unary(
            tonic::Request::new(HelloRequest { name: "x".into() }),
            http::uri::PathAndQuery::from_static("/helloworld.Greeter/SayGoodbye"),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    assert_eq!(
        res.expect_err("unimplemented").code(),
        tonic::Code::Unimplemented
    );
}

#[test]
fn sigterm_exits_cleanly_and_bad_version_is_rejected() {
    let mut g = Greeter::start("v2");
    let ok = Command::new("kill")
        .args(["-TERM", &g.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
    let deadline = Instant::now() + TIMEOUT;
    let st = loop {
        if let Some(st) = g.child.try_wait().expect("try_wait") {
            break st;
        }
        assert!(Instant::now() < deadline, "greeter ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(st.success(), "{st:?}");

    let st = Command::new(env!("CARGO_BIN_EXE_greeter"))
        .args(["--version", "banana"])
        .env_clear()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run");
    assert_eq!(st.code(), Some(2));
}

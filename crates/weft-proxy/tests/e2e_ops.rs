//! End-to-end operational tests of `weft-proxy`: live reload (SIGHUP and file watch) under
//! load with zero failed requests, listener removal, invalid rewrites that keep the old config,
//! the admin endpoint (/ready, /config_dump, /stats/prometheus, /logging, /quitquitquit),
//! access logs in Envoy's default text format and in JSON, graceful drain on SIGTERM, and
//! config errors that name the offending field path.
//!
//! Everything runs on 127.0.0.1 under a deadline; expectations follow Envoy's semantics plus
//! the reload/drain contract of the Weft design.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------------------------
// Live reload
// ---------------------------------------------------------------------------------------------

/// Listener `main` on `port` (and `extra` on `extra_port` if given) routing everything to
/// `target`, tagging responses with `x-config-version: VER`.
fn versioned(
    port: u16,
    extra_port: Option<u16>,
    a: &EchoServer,
    b: &EchoServer,
    target: &str,
    ver: &str,
    cluster_b_extra: &str,
) -> String {
    let vhosts = format!(
        r#"
        - name: all
          domains: ["*"]
          routes:
          - match: {{ prefix: "/" }}
            route: {{ cluster: {target} }}
            response_headers_to_add:
            - header: {{ key: x-config-version, value: "{ver}" }}
        "#
    );
    let mut listeners = vec![http_listener("main", port, &vhosts).build()];
    if let Some(p) = extra_port {
        listeners.push(http_listener("extra", p, &vhosts).build());
    }
    bootstrap(
        &listeners,
        &[
            cluster("a", &[a.addr], ""),
            cluster("b", &[b.addr], cluster_b_extra),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_three_times_under_load_without_failures() -> Result<()> {
    within(180, async {
        let a = EchoServer::start("a").await?;
        let b = EchoServer::start("b").await?;
        let port = free_port();
        let cfg = |target: &str, ver: &str| versioned(port, None, &a, &b, target, ver, "");
        let proxy = Proxy::start_with(&cfg("a", "cfg-v1"), &["--concurrency", "2"]).await?;
        let addr = local(port);

        let total = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(Mutex::new(Vec::<String>::new()));
        let started = Instant::now();
        let mut workers = Vec::new();
        for w in 0..8 {
            let (total, stop, failures) = (total.clone(), stop.clone(), failures.clone());
            workers.push(tokio::spawn(async move {
                let http = Http::h1();
                while !(stop.load(Ordering::SeqCst) && total.load(Ordering::SeqCst) >= 2000)
                    && started.elapsed() < Duration::from_secs(90)
                {
                    match http.get(addr, "/load").await {
                        Ok(r) if r.status == 200 => {}
                        Ok(r) => failures
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(format!("worker {w}: status {} {:?}", r.status, r.text())),
                        Err(e) => failures
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(format!("worker {w}: {e:#}")),
                    }
                    total.fetch_add(1, Ordering::SeqCst);
                }
            }));
        }
        let wait_total = async |n: usize| {
            eventually(
                &format!("{n} requests done"),
                Duration::from_secs(30),
                async || (total.load(Ordering::SeqCst) >= n).then_some(()),
            )
            .await
        };
        wait_total(300).await?;
        for (i, (target, ver)) in [("b", "cfg-v2"), ("a", "cfg-v3"), ("b", "cfg-v4")]
            .into_iter()
            .enumerate()
        {
            proxy.reload(&cfg(target, ver), ver).await?;
            let seen = total.load(Ordering::SeqCst);
            wait_total(seen + 300)
                .await
                .with_context(|| format!("traffic after reload {}", i + 1))?;
        }
        stop.store(true, Ordering::SeqCst);
        for w in workers {
            w.await?;
        }
        let failures = failures.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let done = total.load(Ordering::SeqCst);
        ensure!(
            failures.is_empty(),
            "{} of {done} requests failed across reloads; first: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        ensure!(done >= 2000, "only {done} requests");
        let r = Http::h1_fresh().get(addr, "/after").await?;
        ensure!(
            r.upstream() == "b" && r.header("x-config-version") == Some("cfg-v4"),
            "a new connection must see the last config: {:?} {:?}",
            r.upstream(),
            r.header("x-config-version")
        );
        ensure!(proxy.exit_status().is_none());
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_by_file_watch_alone() -> Result<()> {
    within(60, async {
        let a = EchoServer::start("a").await?;
        let b = EchoServer::start("b").await?;
        let port = free_port();
        let proxy = Proxy::start(&versioned(port, None, &a, &b, "a", "cfg-v1", "")).await?;
        let r = Http::h1_fresh().get(local(port), "/").await?;
        ensure!(r.upstream() == "a");
        // No signal: the proxy watches its bootstrap file.
        proxy.overwrite_bootstrap_in_place(&versioned(port, None, &a, &b, "b", "cfg-v2", ""))?;
        proxy.wait_config_dump_contains("cfg-v2").await?;
        let r = Http::h1_fresh().get(local(port), "/").await?;
        ensure!(
            r.upstream() == "b" && r.header("x-config-version") == Some("cfg-v2"),
            "after the watched rewrite: {:?}",
            r.header("x-config-version")
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_removing_a_listener_stops_accepting_on_it() -> Result<()> {
    within(60, async {
        let a = EchoServer::start("a").await?;
        let b = EchoServer::start("b").await?;
        let (p1, p2) = (free_port(), free_port());
        let proxy = Proxy::start(&versioned(p1, Some(p2), &a, &b, "a", "cfg-v1", "")).await?;
        for p in [p1, p2] {
            let r = Http::h1_fresh().get(local(p), "/").await?;
            ensure!(r.status == 200, "port {p}: {}", r.status);
        }
        proxy
            .reload(&versioned(p1, None, &a, &b, "a", "cfg-v2", ""), "cfg-v2")
            .await?;
        eventually(
            "the removed listener to refuse connections",
            WAIT,
            async || {
                tokio::net::TcpStream::connect(local(p2))
                    .await
                    .is_err()
                    .then_some(())
            },
        )
        .await?;
        let r = Http::h1_fresh().get(local(p1), "/").await?;
        ensure!(r.status == 200 && r.header("x-config-version") == Some("cfg-v2"));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_with_invalid_config_keeps_serving_the_old_one() -> Result<()> {
    within(60, async {
        let a = EchoServer::start("a").await?;
        let b = EchoServer::start("b").await?;
        let port = free_port();
        let proxy = Proxy::start(&versioned(port, None, &a, &b, "a", "cfg-v1", "")).await?;
        let bad = versioned(port, None, &a, &b, "b", "cfg-bad", "bogus_field: 1");
        proxy.write_bootstrap(&bad)?;
        proxy.signal("HUP")?;
        eventually(
            "the rejected reload to be logged with its field path",
            WAIT,
            async || {
                names_field(&proxy.logs(), "static_resources.clusters[1]", "bogus_field")
                    .then_some(())
            },
        )
        .await?;
        ensure!(
            proxy.exit_status().is_none(),
            "an invalid reload must not stop the proxy"
        );
        let r = Http::h1_fresh().get(local(port), "/").await?;
        ensure!(
            r.status == 200
                && r.upstream() == "a"
                && r.header("x-config-version") == Some("cfg-v1"),
            "the old config must keep serving: {} {:?}",
            r.status,
            r.header("x-config-version")
        );
        let dump = proxy.config_dump_text().await?;
        ensure!(dump.contains("cfg-v1") && !dump.contains("cfg-bad"));
        // A later valid rewrite still applies.
        proxy
            .reload(&versioned(port, None, &a, &b, "b", "cfg-v2", ""), "cfg-v2")
            .await?;
        let r = Http::h1_fresh().get(local(port), "/").await?;
        ensure!(r.upstream() == "b");
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Admin
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_ready_config_dump_and_prometheus_stats() -> Result<()> {
    within(60, async {
        let web = EchoServer::start("web").await?;
        let port = free_port();
        let proxy = Proxy::start(&simple_http_bootstrap(port, &[web.addr])).await?;
        let r = proxy.admin_get("/ready").await?;
        ensure!(r.status == 200, "/ready {}", r.status);
        for _ in 0..3 {
            ensure!(Http::h1().get(local(port), "/").await?.status == 200);
        }
        let dump = proxy.config_dump().await?;
        let configs = dump["configs"]
            .as_array()
            .with_context(|| format!("config_dump has no configs[]: {dump}"))?;
        let types: Vec<&str> = configs.iter().filter_map(|c| c["@type"].as_str()).collect();
        for t in [
            "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
            "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
        ] {
            ensure!(types.contains(&t), "config_dump lacks {t}: {types:?}");
        }
        let text = dump.to_string();
        ensure!(
            text.contains("\"main\"") && text.contains("\"web\""),
            "names missing: {text}"
        );
        ensure!(text.contains(&port.to_string()), "listener port missing");
        let v = proxy
            .wait_stat(
                "envoy_cluster_upstream_rq_total",
                &[("envoy_cluster_name", "web")],
                ">= 3",
                |v| v >= 3.0,
            )
            .await?;
        ensure!(
            v == 3.0,
            "envoy_cluster_upstream_rq_total = {v}, 3 requests were sent"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_logging_level_can_be_raised() -> Result<()> {
    within(60, async {
        let web = EchoServer::start("web").await?;
        let port = free_port();
        let proxy = Proxy::start_with(
            &simple_http_bootstrap(port, &[web.addr]),
            &["--concurrency", "1", "-l", "info"],
        )
        .await?;
        let r = proxy.admin_post("/logging?level=debug").await?;
        ensure!(
            r.status == 200,
            "POST /logging?level=debug: {} {}",
            r.status,
            r.text()
        );
        // HTTP/1.1, h2c and a protocol error: a proxy at debug level says something about
        // at least one of them.
        let before = proxy.logs().len();
        let addr = local(port);
        eventually("debug output after traffic", WAIT, async || {
            let _ = Http::h1_fresh().get(addr, "/t1").await;
            let _ = Http::h2c().get(addr, "/t2").await;
            let _ = raw_http(addr, b"BAD\x01 request\r\n\r\n").await;
            let logs = proxy.logs();
            logs.get(before..)?
                .to_ascii_lowercase()
                .contains("debug")
                .then_some(())
        })
        .await?;
        let bad = proxy.admin_post("/logging?level=nonsense").await?;
        ensure!(
            (400..500).contains(&bad.status),
            "an unknown level must be refused, got {}",
            bad.status
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_quitquitquit_exits_cleanly() -> Result<()> {
    within(60, async {
        let web = EchoServer::start("web").await?;
        let port = free_port();
        let proxy = Proxy::start(&simple_http_bootstrap(port, &[web.addr])).await?;
        let r = proxy.admin_post("/quitquitquit").await?;
        ensure!(r.status == 200, "POST /quitquitquit: {}", r.status);
        let st = proxy.wait_exit(WAIT).await?;
        ensure!(st.success(), "exit status {st}");
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Access logs
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_default_text_and_json_formats() -> Result<()> {
    within(60, async {
        let web = EchoServer::start("web").await?;
        let port = free_port();
        let vhosts = r#"
            - name: al
              domains: ["al.test"]
              routes:
              - match: { prefix: "/al/" }
                route: { cluster: web }
        "#;
        let logs = r#"
            access_log:
            - name: envoy.access_loggers.file
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
                path: "{{DIR}}/access.log"
            - name: envoy.access_loggers.file
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
                path: "{{DIR}}/access.json"
                log_format:
                  json_format:
                    start_time: "%START_TIME%"
                    method: "%REQ(:METHOD)%"
                    path: "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"
                    protocol: "%PROTOCOL%"
                    response_code: "%RESPONSE_CODE%"
                    response_flags: "%RESPONSE_FLAGS%"
                    upstream_cluster: "%UPSTREAM_CLUSTER%"
                    authority: "%REQ(:AUTHORITY)%"
        "#;
        let yaml = bootstrap(
            &[http_listener("main", port, vhosts).no_access_log().hcm(logs).build()],
            &[cluster("web", &[web.addr], "")],
        );
        let proxy = Proxy::start(&yaml).await?;
        let h = Http::h1();
        let ok = h
            .send(local(port), Req::get("/al/text").host("al.test").header("user-agent", "weft-e2e/1"))
            .await?;
        ensure!(ok.status == 200 && ok.text() == "web");
        let nr = h
            .send(local(port), Req::get("/none").host("al.test").header("user-agent", "weft-e2e/1"))
            .await?;
        ensure!(nr.status == 404);

        let line = proxy.wait_access("/al/text", |l| l.path == "/al/text").await?;
        let re = regex::Regex::new(&format!(
            r#"^\[\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{{3}}Z\] "GET /al/text HTTP/1\.1" 200 - 0 3 \d+ \d+ "-" "weft-e2e/1" "[0-9a-f-]{{36}}" "al\.test" "127\.0\.0\.1:{}"$"#,
            web.port()
        ))?;
        ensure!(re.is_match(&line.raw), "not Envoy's default format: {:?}", line.raw);
        let line = proxy.wait_access("/none", |l| l.path == "/none").await?;
        ensure!(
            line.code == 404 && line.has_flag("NR") && line.raw.ends_with("\"al.test\" \"-\""),
            "{:?}",
            line.raw
        );

        let entries = eventually("two JSON access log entries", WAIT, async || {
            let v: Vec<serde_json::Value> = proxy
                .file_lines("access.json")
                .iter()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            (v.len() >= 2).then_some(v)
        })
        .await?;
        let code_is = |e: &serde_json::Value, c: u64| {
            e["response_code"].as_u64() == Some(c)
                || e["response_code"].as_str().and_then(|s| s.parse().ok()) == Some(c)
        };
        let ok = entries
            .iter()
            .find(|e| e["path"] == "/al/text")
            .context("no JSON entry for /al/text")?;
        ensure!(
            code_is(ok, 200)
                && ok["response_flags"] == "-"
                && ok["method"] == "GET"
                && ok["protocol"] == "HTTP/1.1"
                && ok["upstream_cluster"] == "web"
                && ok["authority"] == "al.test",
            "{ok}"
        );
        let nr = entries
            .iter()
            .find(|e| e["path"] == "/none")
            .context("no JSON entry for /none")?;
        ensure!(code_is(nr, 404) && nr["response_flags"] == "NR", "{nr}");
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Drain on SIGTERM
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_request_then_exits_zero() -> Result<()> {
    within(60, async {
        let web = EchoServer::start("web").await?;
        let port = free_port();
        let proxy = Proxy::start_with(
            &simple_http_bootstrap(port, &[web.addr]),
            &["--concurrency", "1", "--drain-time-s", "5"],
        )
        .await?;
        let addr = local(port);
        let inflight = tokio::spawn(async move { Http::h1().get(addr, "/delay/1500").await });
        eventually("the slow request to reach the upstream", WAIT, async || {
            (web.active() == 1).then_some(())
        })
        .await?;
        proxy.signal("TERM")?;
        let r = inflight
            .await?
            .context("the in-flight request was cut by SIGTERM")?;
        ensure!(
            r.status == 200 && r.upstream() == "web",
            "in-flight request: {}",
            r.status
        );
        let st = proxy.wait_exit(Duration::from_secs(15)).await?;
        ensure!(st.success(), "exit status after drain: {st}");
        // Its access-log line was written before the process exited.
        ensure!(
            proxy
                .access_log_lines()
                .iter()
                .filter_map(|l| AccessLine::parse(l))
                .any(|l| l.path == "/delay/1500" && l.code == 200),
            "no access-log line for the drained request: {:?}",
            proxy.access_log_lines()
        );
        Ok(())
    })
    .await
}

/// SIGTERM closes idle keep-alive connections at once (graceful shutdown of each connection),
/// so the proxy exits as soon as they are closed instead of waiting out the drain time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_idle_keep_alive_connections_at_once() -> Result<()> {
    within(60, async {
        let web = EchoServer::start("web").await?;
        let port = free_port();
        let proxy = Proxy::start_with(
            &simple_http_bootstrap(port, &[web.addr]),
            &["--concurrency", "1", "--drain-time-s", "20"],
        )
        .await?;
        let mut s = connect(local(port)).await?;
        s.write_all(b"GET /idle HTTP/1.1\r\nHost: x\r\n\r\n")
            .await?;
        let head = read_until(&mut s, b"\r\n\r\n", Duration::from_secs(5)).await?;
        ensure!(
            head.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        // The connection is now idle and kept alive.
        let t = Instant::now();
        proxy.signal("TERM")?;
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
            .await
            .context("the idle connection was not closed on SIGTERM")??;
        let st = proxy.wait_exit(Duration::from_secs(10)).await?;
        ensure!(st.success(), "exit status after drain: {st}");
        ensure!(
            t.elapsed() < Duration::from_secs(5),
            "exit took {:?}: the idle connection held the drain",
            t.elapsed()
        );
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Config errors
// ---------------------------------------------------------------------------------------------

/// True if `out` names the field `field` under `parent`: either as one path
/// (`parent.field`) or as the parent's path plus the field's name.
fn names_field(out: &str, parent: &str, field: &str) -> bool {
    out.contains(&format!("{parent}.{field}")) || (out.contains(parent) && out.contains(field))
}

/// The proxy must refuse `yaml` (non-zero exit) and say in which file and which field.
async fn expect_config_error(yaml: &str, parent: &str, field: &str) -> Result<()> {
    let (st, out) = Proxy::run_to_exit(yaml, &[], WAIT).await?;
    ensure!(
        !st.success(),
        "a bad bootstrap must fail; exit {st}, output:\n{out}"
    );
    ensure!(
        names_field(&out, parent, field),
        "the error must name {parent}.{field}; output:\n{out}"
    );
    ensure!(
        out.contains("bootstrap.yaml: "),
        "the error must name the bootstrap file; output:\n{out}"
    );
    Ok(())
}

/// [`expect_config_error`] for a bootstrap whose one cluster, `web`, carries `extra`.
async fn expect_cluster_error(extra: &str, parent: &str, field: &str) -> Result<()> {
    let web = EchoServer::start("web").await?;
    let yaml = bootstrap(
        &[http_listener("main", free_port(), &vhost_to("all", "\"*\"", "web")).build()],
        &[cluster("web", &[web.addr], extra)],
    );
    expect_config_error(&yaml, parent, field).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_error_unknown_field_names_its_path() -> Result<()> {
    within(60, async {
        expect_cluster_error("bogus_field: 1", "static_resources.clusters[0]", "bogus_field")
            .await?;

        let web = EchoServer::start("web").await?;
        let port = free_port();
        let vhosts = "- name: all\n  domains: [\"*\"]\n  bogus_vhost_field: 1\n  routes:\n  - match: { prefix: \"/\" }\n    route: { cluster: web }\n";
        let yaml = bootstrap(
            &[http_listener("main", port, vhosts).build()],
            &[cluster("web", &[web.addr], "")],
        );
        expect_config_error(&yaml, "virtual_hosts[0]", "bogus_vhost_field").await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_error_unsupported_feature_names_its_path() -> Result<()> {
    within(60, async {
        expect_cluster_error(
            r#"
            health_checks:
            - timeout: 1s
              interval: 1s
              unhealthy_threshold: 1
              healthy_threshold: 1
              http_health_check: { path: /healthz }
            "#,
            "static_resources.clusters[0]",
            "health_checks",
        )
        .await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_error_route_to_unknown_cluster() -> Result<()> {
    within(60, async {
        let web = EchoServer::start("web").await?;
        let port = free_port();
        let yaml = bootstrap(
            &[http_listener("main", port, &vhost_to("all", "\"*\"", "nope_cluster")).build()],
            &[cluster("web", &[web.addr], "")],
        );
        expect_config_error(&yaml, "", "nope_cluster").await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_error_refused_value_names_file_cluster_and_field() -> Result<()> {
    within(60, async {
        expect_cluster_error(
            "lb_policy: LEAST_REQUEST\nleast_request_lb_config: {slow_start_config: \
             {slow_start_window: 10s, aggression: {default_value: 0, runtime_key: k}}}",
            "cluster \"web\": `least_request_lb_config.slow_start_config.aggression",
            "default_value",
        )
        .await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_error_malformed_yaml_and_missing_file() -> Result<()> {
    within(60, async {
        let (st, out) = Proxy::run_to_exit(
            "admin: { address: { socket_address: { address: 127.0.0.1, port_value: {{ADMIN_PORT}} } } }\nstatic_resources: [unclosed\n",
            &[],
            WAIT,
        )
        .await?;
        ensure!(!st.success(), "malformed YAML must fail; output:\n{out}");
        let out = run_tool(PROXY_BIN, &["-c", "/nonexistent/weft-e2e/bootstrap.yaml"]).await?;
        ensure!(!out.ok(), "a missing bootstrap must fail: {out}");
        ensure!(
            format!("{}{}", out.stdout, out.stderr).contains("/nonexistent/weft-e2e/bootstrap.yaml"),
            "the error must name the file: {out}"
        );
        Ok(())
    })
    .await
}

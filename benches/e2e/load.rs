//! The load generator process.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use crate::cpu::CpuSnapshot;
use crate::support::knob;
use crate::{user_id, TARGET, USERS};

pub(crate) type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// The request for user `n`: the same for A and B.
pub(crate) fn request(users: &[http::HeaderValue], n: usize) -> Request<Empty<Bytes>> {
    Request::get("/")
        .header(header::HOST, "127.0.0.1")
        .header("x-user", users[n % users.len()].clone())
        .body(Empty::new())
        .expect("request")
}

/// Sends one request; whether it got `200` with body `3`.
pub(crate) async fn exchange(sender: &mut Sender, req: Request<Empty<Bytes>>) -> bool {
    if sender.ready().await.is_err() {
        return false;
    }
    let Ok(res) = sender.send_request(req).await else {
        return false;
    };
    let ok = res.status() == StatusCode::OK;
    match res.into_body().collect().await {
        Ok(body) => ok && body.to_bytes() == "3",
        Err(_) => false,
    }
}

pub(crate) fn load_generator() {
    let target: SocketAddr = std::env::var(TARGET)
        .expect("BYOK_E2E_TARGET")
        .parse()
        .expect("target address");
    assert_eq!(
        target.ip(),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        "the load generator only targets 127.0.0.1"
    );
    let seconds: f64 = knob("BYOK_E2E_SECONDS", 3.0);
    let duration = Duration::from_secs_f64(seconds.clamp(0.01, 600.0));
    let concurrency: usize = knob("BYOK_E2E_CONCURRENCY", 32);
    let max_requests: u64 = knob("BYOK_E2E_MAX_REQUESTS", 10_000_000);
    let per_connection = (max_requests / concurrency as u64).max(1);
    let rate: f64 = knob("BYOK_E2E_RATE", 0.0);
    // With a rate, each connection sends on its own schedule, spread over the interval.
    let interval = (rate > 0.0).then(|| Duration::from_secs_f64(concurrency as f64 / rate));
    let users: Vec<http::HeaderValue> = (0..USERS)
        .map(|n| http::HeaderValue::from_str(&user_id(n)).expect("header value"))
        .collect();

    // One thread: the generator takes at most one CPU from the server.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let mut senders = Vec::with_capacity(concurrency);
        for c in 0..concurrency {
            let stream = tokio::net::TcpStream::connect(target)
                .await
                .expect("connect");
            stream.set_nodelay(true).ok();
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .expect("handshake");
            tokio::spawn(async move {
                connection.await.ok();
            });
            // One request per connection, so the server has accepted them all.
            assert!(
                exchange(&mut sender, request(&users, c)).await,
                "first request failed"
            );
            senders.push(sender);
        }
        println!("ready");
        std::io::stdout().flush().expect("flush");
        let mut go = String::new();
        std::io::stdin().read_line(&mut go).expect("read go");
        if go.trim() != "go" {
            return;
        }

        let cpu_before = CpuSnapshot::now();
        let start = Instant::now();
        let deadline = start + duration;
        let expected = ((duration.as_secs_f64() * 150_000.0 / concurrency as f64) as u64)
            .min(per_connection) as usize;
        let tasks: Vec<_> = senders
            .into_iter()
            .enumerate()
            .map(|(c, mut sender)| {
                let users = users.clone();
                tokio::spawn(async move {
                    let mut latencies: Vec<u64> = Vec::with_capacity(expected);
                    let mut errors = 0u64;
                    let mut n = c * 37;
                    let mut next =
                        interval.map(|i| start + i.mul_f64(c as f64 / concurrency as f64));
                    while (latencies.len() as u64 + errors) < per_connection
                        && Instant::now() < deadline
                    {
                        if let (Some(at), Some(interval)) = (next.as_mut(), interval) {
                            tokio::time::sleep_until((*at).into()).await;
                            *at += interval;
                        }
                        let req = request(&users, n);
                        n += 1;
                        let sent = Instant::now();
                        if exchange(&mut sender, req).await {
                            latencies.push(sent.elapsed().as_nanos() as u64);
                        } else {
                            errors += 1;
                            if sender.is_closed() {
                                break;
                            }
                        }
                    }
                    (sender, latencies, errors)
                })
            })
            .collect();
        let mut open = Vec::with_capacity(concurrency);
        let mut latencies = Vec::new();
        let mut errors = 0;
        for task in tasks {
            let (sender, lat, err) = task.await.expect("connection task");
            open.push(sender);
            latencies.extend(lat);
            errors += err;
        }
        let elapsed = start.elapsed();
        // The server reads its CPU time now, before any connection closes.
        println!("done");
        std::io::stdout().flush().expect("flush");
        let (sched_ns, ticks_ns, _) = cpu_before.until(&CpuSnapshot::now());

        latencies.sort_unstable();
        let pct = |p: f64| -> u64 {
            if latencies.is_empty() {
                0
            } else {
                latencies[((latencies.len() - 1) as f64 * p).round() as usize]
            }
        };
        println!(
            "result requests={} errors={} elapsed_ns={} p50_ns={} p99_ns={} cpu_ns={}",
            latencies.len(),
            errors,
            elapsed.as_nanos(),
            pct(0.50),
            pct(0.99),
            sched_ns.unwrap_or(ticks_ns)
        );
        std::io::stdout().flush().expect("flush");
        drop(open);
    });
}

//! EC2's DescribeSnapshots over 10,000 snapshots through the server on
//! loopback: requests per second and latency percentiles, every request
//! SigV4-signed (service `ec2`) by the client and checked by the server,
//! quotas off, client and server sharing the machine's cores.
//!
//! One in ten snapshots carries the tag `batch=keep`. Two workloads, each
//! run by 8 concurrent clients paging to the end: `all`, 1,000 snapshots a
//! page; `tagged`, the filter `tag:batch=keep` at 100 a page (each page
//! scans about 1,000 snapshots to fill). Run: `cargo bench --bench ec2`.

use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use blocksnap::engine::NewSnapshot;
use blocksnap::server::{Authentication, Credentials, RateLimits, ServerConfig};
use blocksnap::testing::LoopbackServer;
use blocksnap::{Engine, EngineConfig};
use bytes::Bytes;
use futures::stream::{self, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const SNAPSHOTS: usize = 10_000;
const CLIENTS: usize = 8;
/// Complete listings each client pages through, per workload.
const LISTINGS: usize = 12;

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn signed(address: SocketAddr, form: &str) -> hyper::Request<Full<Bytes>> {
    let host = address.to_string();
    let headers = [
        (
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
        ),
        ("host", host.as_str()),
    ];
    let identity =
        aws_credential_types::Credentials::new("AKIDBENCH", "bench-secret", None, None, "bench")
            .into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("ec2")
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .expect("params")
        .into();
    let request = SignableRequest::new(
        "POST",
        "/",
        headers.iter().copied(),
        SignableBody::Bytes(form.as_bytes()),
    )
    .expect("signable");
    let (instructions, _) = sign(request, &params).expect("sign").into_parts();
    let mut builder = hyper::Request::builder()
        .method("POST")
        .uri(format!("http://{host}/"))
        .header(headers[0].0, headers[0].1);
    for (name, value) in instructions.headers() {
        builder = builder.header(name, value);
    }
    builder
        .body(Full::new(Bytes::from(form.to_string())))
        .expect("request")
}

/// The text of `<name>` in `xml`, if there.
fn element<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{name}>"))?;
    Some(&xml[start..start + end])
}

/// Pages through one listing; returns each request's latency and the
/// snapshots listed.
async fn list_all(client: &HttpClient, address: SocketAddr, query: &str) -> (Vec<Duration>, usize) {
    let mut latencies = Vec::new();
    let mut listed = 0;
    let mut token: Option<String> = None;
    loop {
        let mut form = format!("Action=DescribeSnapshots&Version=2016-11-15&{query}");
        if let Some(token) = &token {
            form.push_str("&NextToken=");
            form.push_str(&percent_encode(token));
        }
        let started = Instant::now();
        let response = client
            .request(signed(address, &form))
            .await
            .expect("request");
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        latencies.push(started.elapsed());
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, 200, "{text}");
        listed += text.matches("<snapshotId>").count();
        match element(&text, "nextToken") {
            Some(next) => token = Some(next.to_string()),
            None => return (latencies, listed),
        }
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(byte).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let at = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

fn main() {
    let store = tempfile::tempdir().expect("tempdir");
    let made = Instant::now();
    {
        let engine = Engine::open(store.path()).expect("open");
        for n in 0..SNAPSHOTS {
            let mut request = NewSnapshot::new(1);
            let batch = if n % 10 == 0 { "keep" } else { "other" };
            request.tags = vec![("batch".into(), batch.into()), ("n".into(), n.to_string())];
            request.description = Some(format!("snapshot {n}"));
            let writer = engine.writer(request).expect("start");
            writer.complete().expect("complete");
        }
    }
    println!(
        "made {SNAPSHOTS} snapshots in {:.1} s",
        made.elapsed().as_secs_f64()
    );
    let credentials = Credentials::parse("AKIDBENCH bench-secret 000000000000").expect("keys");
    let storage = Engine::local_storage(store.path()).expect("storage");
    let server = LoopbackServer::start_on(
        ServerConfig {
            rate_limits: RateLimits::unlimited(),
            ..ServerConfig::new(Authentication::SigV4(Arc::new(credentials)))
        },
        EngineConfig::default(),
        storage,
        store,
    );
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(CLIENTS)
        .build_http();
    for (name, query, expected) in [
        ("all, 1000 a page", "MaxResults=1000", SNAPSHOTS),
        (
            "tag:batch=keep, 100 a page",
            "Filter.1.Name=tag%3Abatch&Filter.1.Value.1=keep&MaxResults=100",
            SNAPSHOTS / 10,
        ),
    ] {
        let started = Instant::now();
        let outcomes: Vec<(Vec<Duration>, usize)> = server.runtime.block_on(
            stream::iter(0..CLIENTS * LISTINGS)
                .map(|_| list_all(&client, server.address, query))
                .buffer_unordered(CLIENTS)
                .collect(),
        );
        let elapsed = started.elapsed();
        let mut latencies: Vec<Duration> = Vec::new();
        for (listing, listed) in outcomes {
            assert_eq!(listed, expected, "{name}: every snapshot once");
            latencies.extend(listing);
        }
        latencies.sort_unstable();
        println!(
            "DescribeSnapshots, {name}: {} requests in {:.2} s = {:.0} requests/s; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            latencies.len(),
            elapsed.as_secs_f64(),
            latencies.len() as f64 / elapsed.as_secs_f64(),
            percentile(&latencies, 0.5).as_secs_f64() * 1000.0,
            percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
            latencies.last().copied().unwrap_or_default().as_secs_f64() * 1000.0,
        );
    }
}

//! Abuse limits: per-key token buckets (429 with `Retry-After`), a body
//! deadline (408), JSON content types (415), and open mode's rules
//! (loopback only; cross-site browser requests refused).

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use reqwest::blocking::Response;
use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{error_code, read, serve_expecting_exit, TestServer};

const ADMIN: &str = "admin-secret-0123456789";
const INGEST_A: &str = "ingest-a-secret-0123456789";
const INGEST_B: &str = "ingest-b-secret-0123456789";

/// The bucket depth the rate tests use: rates of 1/s, so once these are
/// spent a refusal comes long before a token is back.
const BURST: usize = 5;

fn send(server: &TestServer, method: Method, path: &str, body: Option<Value>) -> Response {
    let mut request = server.request(method, path);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().unwrap()
}

/// Sends the request until it is refused with 429 (at most 60 times);
/// returns how many were answered before and the refusal.
fn until_refused(
    server: &TestServer,
    method: Method,
    path: &str,
    body: Value,
) -> (usize, Response) {
    for answered in 0..60 {
        let body = (method != Method::GET).then(|| body.clone());
        let response = send(server, method.clone(), path, body);
        if response.status() == 429 {
            return (answered, response);
        }
        assert!(
            response.status().is_success(),
            "{method} {path}: {}",
            response.status()
        );
    }
    panic!("{method} {path} was never rate limited");
}

/// Asserts a 429 is the spec's: `Retry-After` in whole seconds (at least
/// 1) and the JSON error body.
fn assert_rate_limited(response: Response) {
    assert_eq!(response.status(), 429);
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After is whole seconds");
    assert!((1..=60).contains(&retry), "Retry-After: {retry}");
    let (_, body) = read(response);
    assert_eq!(error_code(&body), "rate_limited", "{body}");
}

/// The value of `abacus_http_rate_limited_total{scope="..."}`, 0 when absent.
fn rate_limited_total(server: &TestServer, scope: &str) -> f64 {
    let text = server
        .request(Method::GET, "/metrics")
        .send()
        .unwrap()
        .text()
        .unwrap();
    let head = format!("abacus_http_rate_limited_total{{scope=\"{scope}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&head))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[test]
fn each_key_has_its_own_ingest_and_admin_buckets() {
    let burst = BURST.to_string();
    let mut server = TestServer::start_with(&[
        ("ABACUS_AUTH__ADMIN_KEYS", &format!("[\"{ADMIN}\"]")),
        (
            "ABACUS_AUTH__INGEST_KEYS",
            &format!("[\"{INGEST_A}\", \"{INGEST_B}\"]"),
        ),
        ("ABACUS_LIMITS__INGEST_RPS", "1"),
        ("ABACUS_LIMITS__ADMIN_RPS", "1"),
        ("ABACUS_LIMITS__BURST", &burst),
    ]);
    server.use_token(Some(ADMIN));
    server.running_experiment("rl", json!({})); // 2 of the admin key's admin tokens

    // Ingest key A spends its bucket on assignments and is refused.
    server.use_token(Some(INGEST_A));
    let assign = "/v1/experiments/rl/assignment?unit_id=u1&log_exposure=false";
    let (answered, refused) = until_refused(&server, Method::GET, assign, json!(null));
    assert!(answered >= BURST, "only {answered} answered before the 429");
    assert_rate_limited(refused);
    assert!(rate_limited_total(&server, "ingest") >= 1.0);
    // Probes and metrics are never limited.
    for _ in 0..3 * BURST {
        assert_eq!(server.get("/healthz").0, 200);
    }

    // Key B is unaffected, on assignments and on events.
    server.use_token(Some(INGEST_B));
    assert_eq!(server.get(assign).0, 200);
    let (status, body) = server.post("/v1/events", json!({"type": "view", "unit_id": "u1"}));
    assert_eq!(status, 202, "{body}");

    // The admin key's ingest bucket is separate from its admin bucket:
    // spending the first (POST /v1/assignments and events share it) leaves
    // the admin routes open.
    server.use_token(Some(ADMIN));
    let (answered, refused) = until_refused(
        &server,
        Method::POST,
        "/v1/assignments",
        json!({"unit_id": "u2", "log_exposure": false}),
    );
    assert!(answered >= BURST, "only {answered} answered before the 429");
    assert_rate_limited(refused);
    let (status, body) = server.get("/v1/experiments");
    assert_eq!(status, 200, "{body}");

    // And the admin bucket runs out on its own.
    let before = rate_limited_total(&server, "admin");
    let (_, refused) = until_refused(&server, Method::GET, "/v1/experiments", json!(null));
    assert_rate_limited(refused);
    assert!(rate_limited_total(&server, "admin") > before);
    assert!(rate_limited_total(&server, "ingest") >= 2.0);
}

#[test]
fn a_rate_of_zero_is_unlimited_and_open_mode_limits_by_address() {
    // Rates 0 (the default): a burst of 1 does not matter.
    let server = TestServer::start_with(&[("ABACUS_LIMITS__BURST", "1")]);
    server.running_experiment("free", json!({}));
    for i in 0..100 {
        let (status, body) = server.get(&format!(
            "/v1/experiments/free/assignment?unit_id=u{i}&log_exposure=false"
        ));
        assert_eq!(status, 200, "request {i}: {body}");
        assert_eq!(server.get("/v1/experiments/free").0, 200, "request {i}");
    }
    assert_eq!(rate_limited_total(&server, "ingest"), 0.0);
    drop(server);

    // Open mode, ingest limited: the client's address stands in for a key;
    // the admin routes (rate 0) stay unlimited.
    let server = TestServer::start_with(&[
        ("ABACUS_LIMITS__INGEST_RPS", "1"),
        ("ABACUS_LIMITS__BURST", "3"),
    ]);
    server.running_experiment("open", json!({}));
    let (answered, refused) = until_refused(
        &server,
        Method::POST,
        "/v1/events",
        json!({"type": "view", "unit_id": "u"}),
    );
    assert!(answered >= 3, "only {answered} answered before the 429");
    assert_rate_limited(refused);
    for i in 0..30 {
        assert_eq!(server.get("/v1/experiments").0, 200, "admin request {i}");
    }
}

/// Reads what the server sends on `stream` until its head and JSON body
/// are in, while trickling one more byte of the request body every 200 ms
/// (at most 100 times).
fn trickle_until_answered(mut stream: TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..100 {
        // Writing may fail once the server has answered and closed.
        let _ = stream.write_all(b" ");
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if String::from_utf8_lossy(&answer).contains("}}") {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("read: {e}; so far {}", String::from_utf8_lossy(&answer)),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn a_trickled_body_is_cut_off_with_408() {
    let server = TestServer::start_with(&[
        ("ABACUS_SERVER__BODY_TIMEOUT_MS", "1000"),
        ("ABACUS_SERVER__CLIENT_REQUEST_TIMEOUT_MS", "1000"),
    ]);
    let started = Instant::now();
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    write!(
        stream,
        "POST /v1/assignments HTTP/1.1\r\nHost: {}\r\ncontent-type: application/json\r\n\
         content-length: 1000\r\n\r\n",
        server.addr()
    )
    .unwrap();
    let answer = trickle_until_answered(stream);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"request_timeout\""), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));

    // Headers trickled past client_request_timeout_ms are cut off too
    // (actix answers 408 or just closes).
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = Vec::new();
    let closed = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    assert!(
        closed.is_ok() || answer.starts_with("HTTP/1.1 408"),
        "{closed:?}"
    );

    // The server is fine, and a body sent at once is read as usual.
    assert_eq!(server.get("/healthz").0, 200);
    let (status, body) = server.post("/v1/assignments", json!({"unit_id": "u"}));
    assert_eq!(status, 200, "{body}");
}

#[test]
fn bodies_need_a_json_content_type_and_bodiless_actions_do_not() {
    let server = TestServer::start();
    let experiment = json!({
        "key": "ct", "name": "ct",
        "variants": [{"key": "control", "weight": 1}, {"key": "treatment", "weight": 1}],
    })
    .to_string();
    let with = |method: Method, path: &str, content_type: Option<&str>, body: &str| {
        let mut request = server.request(method, path).body(body.to_owned());
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        read(request.send().unwrap())
    };
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let (status, body) = with(Method::POST, "/v1/experiments", ct, &experiment);
        assert_eq!(
            (status, error_code(&body)),
            (415, "unsupported_media_type"),
            "{ct:?}"
        );
    }
    let (status, body) = with(
        Method::POST,
        "/v1/experiments",
        Some("application/json; charset=utf-8"),
        &experiment,
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = with(
        Method::PATCH,
        "/v1/experiments/ct",
        Some("application/merge-patch+json"),
        r#"{"coverage": 0.5}"#,
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = with(
        Method::POST,
        "/v1/events",
        None,
        r#"{"type":"v","unit_id":"u"}"#,
    );
    assert_eq!((status, error_code(&body)), (415, "unsupported_media_type"));

    // Lifecycle actions without a body need no content type...
    let (status, body) = server.post_empty("/v1/experiments/ct/start");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "running", "{body}");
    let (status, body) = server.post_empty("/v1/experiments/ct/pause");
    assert_eq!(status, 200, "{body}");
    // ...but one that carries a body does, with or without a declared length.
    let (status, body) = with(
        Method::POST,
        "/v1/experiments/ct/complete",
        None,
        r#"{"winner": "treatment"}"#,
    );
    assert_eq!((status, error_code(&body)), (415, "unsupported_media_type"));
    let chunked = server
        .request(Method::POST, "/v1/experiments/ct/complete")
        .body(reqwest::blocking::Body::new(std::io::Cursor::new(
            br#"{"winner": "treatment"}"#.to_vec(),
        )))
        .send()
        .unwrap();
    let (status, body) = read(chunked);
    assert_eq!((status, error_code(&body)), (415, "unsupported_media_type"));
    let (status, body) = server.post(
        "/v1/experiments/ct/complete",
        json!({"winner": "treatment"}),
    );
    assert_eq!(status, 200, "{body}");
}

#[test]
fn open_mode_refuses_cross_site_browser_requests() {
    let server = TestServer::start();
    let own = format!("http://{}", server.addr());
    let call = |method: Method, path: &str, origin: Option<&str>| {
        let mut request = server.request(method.clone(), path);
        if method == Method::POST {
            request = request.json(&json!({"unit_id": "u"}));
        }
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        read(request.send().unwrap())
    };
    for origin in ["http://evil.example", "null", "http://127.0.0.1:1"] {
        for (method, path) in [
            (Method::GET, "/v1/experiments"),
            (Method::POST, "/v1/assignments"),
        ] {
            let (status, body) = call(method.clone(), path, Some(origin));
            assert_eq!(
                (status, error_code(&body)),
                (403, "forbidden"),
                "{method} {path} from {origin}"
            );
        }
    }
    for origin in [Some(own.as_str()), None] {
        assert_eq!(call(Method::GET, "/v1/experiments", origin).0, 200);
        assert_eq!(call(Method::POST, "/v1/assignments", origin).0, 200);
    }
    // The dashboard page itself is served to anyone; its API calls are
    // same-origin.
    assert_eq!(
        server
            .request(Method::GET, "/")
            .header("origin", "http://evil.example")
            .send()
            .unwrap()
            .status(),
        200
    );
}

#[test]
fn open_mode_on_a_public_address_is_refused_at_start() {
    let (code, output) = serve_expecting_exit(
        &[("ABACUS_SERVER__BIND", "0.0.0.0:0")],
        Duration::from_secs(30),
    );
    assert!(matches!(code, Some(c) if c != 0), "exit {code:?}: {output}");
    assert!(output.contains("auth"), "{output}");
    assert!(!output.contains("listening"), "{output}");
}

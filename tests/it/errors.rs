//! Bad input gets the spec's JSON error body and a fitting 4xx; nothing
//! makes the server answer 500 or fall over.

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{error_code, read, TestServer};

fn experiment(variants: Value) -> Value {
    json!({"key": "bad", "name": "bad", "variants": variants})
}

#[test]
fn malformed_json_is_400() {
    let server = TestServer::start();
    for raw in ["{", "not json", "{\"key\": \"a\",}", "{} {}"] {
        let response = server
            .request(Method::POST, "/v1/experiments")
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .unwrap();
        let (status, body) = read(response);
        assert_eq!(
            (status, error_code(&body)),
            (400, "malformed_json"),
            "{raw}"
        );
    }
}

#[test]
fn invalid_experiments_are_422_naming_the_field() {
    let server = TestServer::start();
    let two =
        |w0: Value, w1: Value| json!([{"key": "a", "weight": w0}, {"key": "b", "weight": w1}]);
    let cases = [
        (
            experiment(two(json!(0), json!(1))),
            "validation_failed",
            "variants[0].weight",
        ),
        (
            experiment(two(json!(1), json!(-2))),
            "validation_failed",
            "variants[1].weight",
        ),
        (
            experiment(two(json!(1), json!("1"))),
            "invalid_body",
            "variants[1].weight",
        ),
        (
            experiment(json!([{"key": "a", "weight": 1}, {"key": "a", "weight": 1}])),
            "validation_failed",
            "variants[1].key",
        ),
        (
            experiment(json!([{"key": "a", "weight": 1}])),
            "validation_failed",
            "variants",
        ),
        (
            experiment(json!([{"key": "A b", "weight": 1}, {"key": "c", "weight": 1}])),
            "invalid_body",
            "variants[0].key",
        ),
        (
            json!({"key": "Bad Key", "name": "n", "variants": two(json!(1), json!(1))}),
            "invalid_body",
            "key",
        ),
        (
            json!({"key": "k", "name": "n", "variants": two(json!(1), json!(1)), "colour": 1}),
            "invalid_body",
            "",
        ),
        (
            json!({"key": "k", "variants": two(json!(1), json!(1))}),
            "invalid_body",
            "",
        ),
        (
            json!({"key": "k", "name": "n", "variants": two(json!(1), json!(1)), "coverage": 2}),
            "validation_failed",
            "coverage",
        ),
    ];
    for (body, code, field) in cases {
        let (status, err) = server.post("/v1/experiments", body.clone());
        assert_eq!((status, error_code(&err)), (422, code), "{body} -> {err}");
        if !field.is_empty() {
            assert_eq!(err["error"]["field"], field, "{body} -> {err}");
        }
    }
    // Unknown fields are named in the message.
    let (_, err) = server.post(
        "/v1/experiments",
        json!({"key": "k", "name": "n", "variants": two(json!(1), json!(1)), "colour": 1}),
    );
    assert!(
        err["error"]["message"].as_str().unwrap().contains("colour"),
        "{err}"
    );
    // Nothing was created by any of it.
    assert_eq!(server.get("/v1/experiments").1["experiments"], json!([]));
}

#[test]
fn oversized_bodies_are_413() {
    let server = TestServer::start_with(&[("ABACUS_SERVER__MAX_BODY_BYTES", "2048")]);
    let big = json!({"key": "big", "name": "x".repeat(4096), "variants": []});
    let (status, err) = server.post("/v1/experiments", big);
    assert_eq!((status, error_code(&err)), (413, "payload_too_large"));
    // Also when streamed without a declared length.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(vec![b' '; 1500]), Ok(vec![b' '; 1500])];
    let response = server
        .request(Method::POST, "/v1/assignments")
        .header("content-type", "application/json")
        .body(reqwest::blocking::Body::new(std::io::Cursor::new(
            chunks
                .into_iter()
                .flat_map(|c| c.unwrap())
                .collect::<Vec<u8>>(),
        )))
        .send()
        .unwrap();
    assert_eq!(response.status(), 413);
}

#[test]
fn non_json_content_types_are_415() {
    let server = TestServer::start();
    let response = server
        .request(Method::POST, "/v1/experiments")
        .header("content-type", "text/xml")
        .body("<experiment/>")
        .send()
        .unwrap();
    let (status, err) = read(response);
    assert_eq!((status, error_code(&err)), (415, "unsupported_media_type"));
}

#[test]
fn unknown_routes_are_json_404s() {
    let server = TestServer::start();
    for path in ["/index.html", "/v1/nothing", "/v1/experiments/a/b/c"] {
        let (status, err) = server.get(path);
        assert_eq!((status, error_code(&err)), (404, "not_found"), "{path}");
    }
}

/// A crude fuzz pass: many malformed and hostile bodies and query strings
/// against every route; every answer must be a JSON 4xx (or a 2xx), never
/// a 5xx, and the server must still be healthy afterwards.
#[test]
fn no_input_makes_the_server_fail() {
    let server = TestServer::start();
    server.running_experiment("fuzz", json!({}));
    let bodies: Vec<String> = vec![
        "".into(),
        "null".into(),
        "[]".into(),
        "0".into(),
        "\"\\ud800\"".into(),
        "{\"key\": 1e999}".into(),
        "{\"variants\": [[[[[[[[[[]]]]]]]]]]}".into(),
        format!("{}{}", "[".repeat(5000), "]".repeat(5000)),
        "{\"unit_id\": \"\\u0000\"}".into(),
        "{\"key\":\"k\",\"name\":\"n\",\"variants\":[{\"key\":\"a\",\"weight\":1e308},{\"key\":\"b\",\"weight\":1e308}]}".into(),
        "{\"key\":\"k\",\"name\":\"n\",\"variants\":[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1}],\"layer\":{\"key\":\"l\",\"start\":-1,\"end\":2}}".into(),
        "{\"winner\": null}".into(),
        "{\"coverage\": -0.0}".into(),
        "\u{feff}{}".into(),
        String::from_utf8_lossy(&[0xff, 0xfe, 0x00, 0x7b]).into_owned(),
    ];
    let routes = [
        (Method::POST, "/v1/experiments"),
        (Method::PATCH, "/v1/experiments/fuzz"),
        (Method::POST, "/v1/experiments/fuzz/complete"),
        (Method::POST, "/v1/experiments/fuzz/pause"),
        (Method::POST, "/v1/assignments"),
    ];
    for (method, path) in &routes {
        for body in &bodies {
            let response = server
                .request(method.clone(), path)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .unwrap();
            let (status, json) = read(response);
            assert!(status < 500, "{method} {path} {body:?} -> {status} {json}");
            if status >= 400 {
                error_code(&json);
            }
        }
    }
    for query in [
        "unit_id=%FF%FE",
        "unit_id=a&unit_id=b",
        "unit_id=a&log_exposure=maybe",
        "%%%",
    ] {
        let (status, _) = server.get(&format!("/v1/experiments/fuzz/assignment?{query}"));
        assert!((200..500).contains(&status), "{query} -> {status}");
    }
    assert_eq!(server.get("/healthz").0, 200);
}

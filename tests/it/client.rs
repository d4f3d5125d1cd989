//! The OpenAPI document generates a working client: a Python client made
//! by a mainstream generator (`openapi-python-client`, pinned in
//! `tests/requirements.txt`) creates, starts and assigns an experiment and
//! posts an event against a real server with keys.

use crate::common::{python, TestServer};

const ADMIN: &str = "admin-secret-0123456789";

#[test]
fn a_python_client_generated_from_the_openapi_document_works() {
    let admin = format!("[\"{ADMIN}\"]");
    let mut server = TestServer::start_with(&[("ABACUS_AUTH__ADMIN_KEYS", admin.as_str())]);
    python("tests/client/generated.py", &[&server.url(""), ADMIN]);
    // What the client did is on the server.
    server.use_token(Some(ADMIN));
    server.barrier();
    let aggregates = server.aggregates("generated");
    let conversions: u64 = aggregates["variants"]
        .as_object()
        .expect("variants")
        .values()
        .map(|v| v["measures"]["conversion"]["events"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(conversions, 1, "{aggregates}");
}

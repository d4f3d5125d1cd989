//! The API document is the whole truth: schemathesis generates requests
//! from `/openapi.json` with every check on (status codes, content types,
//! response schemas and headers, schema-valid data accepted and
//! schema-violating data refused, missing headers, undeclared methods,
//! authentication, and stateful sequences along the document's links)
//! for at least two minutes, and finds nothing. `tests/conformance` holds
//! its configuration (only the rules JSON Schema cannot state) and the
//! runner; `python3 tests/conformance/run.py URL KEY SECONDS [SEED]`
//! explores further against any server.

use crate::common::{python, TestServer};

const ADMIN: &str = "conformance-admin-0123456789";

#[test]
fn schemathesis_finds_nothing_the_document_does_not_say() {
    let admin = format!("[\"{ADMIN}\"]");
    let server = TestServer::start_with(&[
        ("ABACUS_AUTH__ADMIN_KEYS", admin.as_str()),
        (
            "ABACUS_AUTH__INGEST_KEYS",
            "[\"conformance-ingest-0123456789\"]",
        ),
        // Generated subscriptions point at a closed loopback port
        // (tests/conformance/hooks.py); no name is resolved.
        ("ABACUS_WEBHOOKS__ALLOW_PRIVATE", "true"),
        // Minutes of generated creations outgrow the default quotas, and
        // a quota's 422 on a schema-valid body would read as a failure
        // (the quotas have tests of their own).
        ("ABACUS_QUOTAS__MAX_WEBHOOKS", "1000000"),
        ("ABACUS_QUOTAS__MAX_EXPERIMENTS", "1000000"),
    ]);
    let report = python("tests/conformance/run.py", &[&server.url(""), ADMIN, "120"]);
    let report = String::from_utf8_lossy(&report);
    assert!(report.contains("no failures"), "{report}");
}

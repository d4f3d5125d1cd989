//! Bearer keys and their roles: owner, admin, editor, viewer, ingest.

use serde_json::json;

use crate::common::{error_code, TestServer};

const OWNER: &str = "owner-secret-0123456789";
const ADMIN: &str = "admin-secret-0123456789";
const INGEST: &str = "ingest-secret-0123456789";
const EDITOR: &str = "editor-secret-0123456789";
const VIEWER: &str = "viewer-secret-0123456789";

fn secured() -> TestServer {
    TestServer::start_with(&[
        ("ABACUS_AUTH__ADMIN_KEYS", &format!("[\"{ADMIN}\"]")),
        ("ABACUS_AUTH__INGEST_KEYS", &format!("[\"{INGEST}\"]")),
    ])
}

#[test]
fn requests_without_a_valid_key_are_401() {
    let mut server = secured();
    for token in [None, Some("wrong-key-0123456789"), Some("")] {
        server.use_token(token);
        let response = server
            .request(reqwest::Method::GET, "/v1/experiments")
            .send()
            .unwrap();
        assert_eq!(response.status(), 401, "{token:?}");
        assert!(response.headers().contains_key("www-authenticate"));
        let body: serde_json::Value = response.json().unwrap();
        assert_eq!(error_code(&body), "unauthorized");
    }
    assert!(server.log().contains("auth enabled"));
}

#[test]
fn ingest_keys_may_assign_but_not_administer() {
    let mut server = secured();
    server.use_token(Some(ADMIN));
    server.running_experiment("auth", json!({}));

    server.use_token(Some(INGEST));
    assert_eq!(server.assign("auth", "u1")["experiment"], "auth");
    assert_eq!(
        server.post("/v1/assignments", json!({"unit_id": "u1"})).0,
        200
    );
    for (status, err) in [
        server.get("/v1/experiments"),
        server.get("/v1/experiments/auth"),
        server.post_empty("/v1/experiments/auth/pause"),
        server.delete("/v1/experiments/auth"),
        server.post("/v1/experiments", json!({})),
    ] {
        assert_eq!((status, error_code(&err)), (403, "forbidden"));
    }
    server.use_token(Some(ADMIN));
    assert_eq!(server.get("/v1/experiments/auth").1["status"], "running");
}

#[test]
fn probes_and_the_api_document_need_no_key() {
    let server = secured();
    assert_eq!(server.get("/healthz").0, 200);
    assert_eq!(server.get("/readyz").0, 200);
    assert_eq!(server.get("/openapi.json").0, 200);
}

#[test]
fn open_mode_is_announced() {
    let server = TestServer::start();
    assert_eq!(server.get("/v1/experiments").0, 200);
    assert!(server.log().contains("API is OPEN"), "{}", server.log());
}

/// What a route needs, as docs/api.md tells it: reads are for viewers
/// (webhook subscriptions, which hold their targets, only for editors),
/// assignments, events, links of ids and OpenFeature evaluations for
/// ingest keys, every
/// change for editors, keys and the audit log for admins, projects for
/// owners; owners may do everything, admins all but projects.
fn needs(method: &str, path: &str) -> &'static str {
    if path.starts_with("/v1/projects") {
        return "own";
    }
    if path.starts_with("/v1/keys") || path == "/v1/audit" {
        return "administer";
    }
    let ingest = [
        ("post", "/v1/assignments"),
        ("get", "/v1/experiments/{key}/assignment"),
        ("post", "/v1/events"),
        ("post", "/v1/aliases"),
    ];
    if ingest.contains(&(method, path)) || path.starts_with("/ofrep/") {
        "ingest"
    } else if method == "get" && !path.starts_with("/v1/webhooks") {
        "read"
    } else {
        "change"
    }
}

/// The routes of the API document, each with the role it needs.
fn routes(doc: &serde_json::Value) -> Vec<(reqwest::Method, String, &'static str)> {
    let mut routes = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !(path.starts_with("/v1/") || path.starts_with("/ofrep/")) {
            continue;
        }
        for method in item.as_object().unwrap().keys() {
            let need = needs(method, path);
            let url = path
                .replace("{key}", "k")
                .replace("{unit_id}", "u")
                .replace("{id}", "wh_none");
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            routes.push((method, url, need));
        }
    }
    routes
}

/// Walks every route with each credential: those allowed what a route
/// needs are not refused (403) and the others are. With `project`, each
/// request names that project.
fn walk(
    server: &mut TestServer,
    routes: &[(reqwest::Method, String, &'static str)],
    roles: &[(&str, &[&str])],
    project: Option<&str>,
) -> usize {
    let mut walked = 0;
    for (method, url, need) in routes {
        // Only whether the role is refused is asked, so what a change
        // does to `k` (archiving it, say) does not matter.
        for (key, allowed) in roles {
            server.use_token(Some(key));
            let mut request = server.request(method.clone(), url);
            if let Some(project) = project {
                request = request.header("x-abacus-project", project);
            }
            let status = request.send().unwrap().status().as_u16();
            let may = allowed.contains(need);
            assert_eq!(
                status == 403,
                !may,
                "{method} {url} (project {project:?}) with a key that {} {need}: {status}",
                if may { "may" } else { "may not" }
            );
            assert_ne!(status, 401, "{method} {url}");
            walked += 1;
        }
    }
    walked
}

const ALL: [&str; 5] = ["read", "change", "ingest", "administer", "own"];

#[test]
fn every_documented_route_admits_exactly_the_roles_it_should() {
    let mut server = TestServer::start_with(&[
        ("ABACUS_AUTH__OWNER_KEYS", &format!("[\"{OWNER}\"]")),
        ("ABACUS_AUTH__ADMIN_KEYS", &format!("[\"{ADMIN}\"]")),
        ("ABACUS_AUTH__EDITOR_KEYS", &format!("[\"{EDITOR}\"]")),
        ("ABACUS_AUTH__VIEWER_KEYS", &format!("[\"{VIEWER}\"]")),
        ("ABACUS_AUTH__INGEST_KEYS", &format!("[\"{INGEST}\"]")),
    ]);
    let (_, doc) = server.get("/openapi.json");
    server.use_token(Some(ADMIN));
    server.running_experiment("k", json!({}));
    let roles: [(&str, &[&str]); 5] = [
        (OWNER, &ALL),
        (ADMIN, &ALL[..4]),
        (EDITOR, &["read", "change", "ingest"]),
        (VIEWER, &["read"]),
        (INGEST, &["ingest"]),
    ];
    let routes = routes(&doc);
    let walked = walk(&mut server, &routes, &roles, None);
    assert!(walked >= 5 * 50, "walked {walked} route and role pairs");
}

#[test]
fn each_role_of_another_project_gets_its_routes_there_and_none_here() {
    let mut server =
        TestServer::start_with(&[("ABACUS_AUTH__OWNER_KEYS", &format!("[\"{OWNER}\"]"))]);
    let (_, doc) = server.get("/openapi.json");
    server.use_token(Some(OWNER));
    let (status, body) = server.post("/v1/projects", json!({"key": "growth", "name": "Growth"}));
    assert_eq!(status, 201, "{body}");
    // The same experiment key in both projects.
    server.running_experiment("k", json!({}));
    let mut issued = Vec::new();
    for role in ["admin", "editor", "viewer", "ingest"] {
        let (status, key) = server.post(
            "/v1/keys",
            json!({"name": role, "role": role, "project": "growth"}),
        );
        assert_eq!(status, 201, "{key}");
        issued.push(key["secret"].as_str().unwrap().to_owned());
    }
    server.use_token(Some(&issued[0]));
    server.running_experiment("k", json!({}));
    let roles: [(&str, &[&str]); 4] = [
        (&issued[0], &ALL[..4]),
        (&issued[1], &["read", "change", "ingest"]),
        (&issued[2], &["read"]),
        (&issued[3], &["ingest"]),
    ];
    let routes = routes(&doc);
    // In their own project, each role gets exactly its routes.
    let mut walked = walk(&mut server, &routes, &roles, None);
    walked += walk(&mut server, &routes, &roles, Some("growth"));
    // Naming the default project, none gets any.
    let none: [(&str, &[&str]); 4] = roles.map(|(key, _)| (key, &[][..]));
    walked += walk(&mut server, &routes, &none, Some("default"));
    assert!(walked >= 3 * 4 * 50, "walked {walked} route and role pairs");
}

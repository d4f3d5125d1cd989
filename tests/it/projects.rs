//! Projects: created, changed and deleted by owners; each with data of its
//! own, the same experiment keys in two of them never meeting; and a data
//! directory from before projects, opened as the default project.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::receiver::Receiver;
use crate::common::{error_code, TestServer};

const OWNER: &str = "owner-secret-0123456789";
const ADMIN: &str = "admin-secret-0123456789";

fn secured() -> TestServer {
    let mut server = TestServer::start_with(&[
        ("ABACUS_AUTH__OWNER_KEYS", &format!("[\"{OWNER}\"]")),
        ("ABACUS_AUTH__ADMIN_KEYS", &format!("[\"{ADMIN}\"]")),
        ("ABACUS_WEBHOOKS__ALLOW_PRIVATE", "true"),
    ]);
    server.use_token(Some(OWNER));
    server
}

fn keys(list: &Value) -> Vec<&str> {
    list["projects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["key"].as_str().unwrap())
        .collect()
}

/// Issues a key of `role` in `project`; its secret.
fn issue(server: &TestServer, role: &str, project: &str) -> String {
    let (status, key) = server.post(
        "/v1/keys",
        json!({"name": format!("{project} {role}"), "role": role, "project": project}),
    );
    assert_eq!(status, 201, "{key}");
    key["secret"].as_str().unwrap().to_owned()
}

#[test]
fn owners_create_change_and_delete_projects_and_a_deleted_one_is_gone() {
    let mut server = secured();
    assert_eq!(keys(&server.get("/v1/projects").1), ["default"]);
    let (status, growth) = server.post(
        "/v1/projects",
        json!({"key": "growth", "name": "Growth", "description": "the growth team"}),
    );
    assert_eq!(status, 201, "{growth}");
    assert_eq!(growth["description"], "the growth team");
    let again = server.post("/v1/projects", json!({"key": "growth", "name": "Again"}));
    assert_eq!((again.0, error_code(&again.1)), (409, "project_exists"));
    for bad in [
        json!({"key": "Growth", "name": "x"}),
        json!({"key": "ok", "name": ""}),
        json!({"key": "ok", "name": "x", "extra": 1}),
    ] {
        let (status, body) = server.post("/v1/projects", bad.clone());
        assert!([400, 422].contains(&status), "{bad}: {status} {body}");
    }
    let (status, changed) = server.patch(
        "/v1/projects/growth",
        json!({"name": "Growth team", "description": null}),
    );
    assert_eq!(status, 200, "{changed}");
    assert_eq!(
        (changed["name"].as_str(), changed["description"].as_str()),
        (Some("Growth team"), None)
    );
    assert_eq!(keys(&server.get("/v1/projects").1), ["default", "growth"]);
    let (status, body) = server.delete("/v1/projects/default");
    assert_eq!(
        (status, error_code(&body)),
        (422, "validation_failed"),
        "{body}"
    );

    // Admins manage keys, not projects.
    server.use_token(Some(ADMIN));
    let (status, body) = server.get("/v1/projects");
    assert_eq!((status, error_code(&body)), (403, "forbidden"));
    let (status, body) = server.post(
        "/v1/keys",
        json!({"name": "x", "role": "viewer", "project": "growth"}),
    );
    assert_eq!((status, error_code(&body)), (403, "forbidden"), "{body}");

    // A growth editor's experiment, kept across a restart.
    server.use_token(Some(OWNER));
    let editor = issue(&server, "editor", "growth");
    server.use_token(Some(&editor));
    server.running_experiment("checkout", json!({}));
    server.restart();
    server.use_token(Some(&editor));
    assert_eq!(server.get("/v1/experiments/checkout").0, 200);

    // Deleted: its keys stop working and its data is gone, even when a
    // project of the same key is created again at once.
    server.use_token(Some(OWNER));
    assert_eq!(server.delete("/v1/projects/growth").0, 200);
    let (status, body) = server.call_in("growth", reqwest::Method::GET, "/v1/experiments", None);
    assert_eq!((status, error_code(&body)), (404, "project_not_found"));
    server.use_token(Some(&editor));
    assert_eq!(server.get("/v1/experiments").0, 401);
    server.use_token(Some(OWNER));
    assert_eq!(
        server
            .post("/v1/projects", json!({"key": "growth", "name": "Growth"}))
            .0,
        201
    );
    let (status, listed) = server.call_in("growth", reqwest::Method::GET, "/v1/experiments", None);
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["experiments"], json!([]));
    // The audit log has the project's story.
    let (_, log) = server.get("/v1/audit?resource=project");
    let actions: Vec<&str> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "project.created",
            "project.deleted",
            "project.updated",
            "project.created"
        ]
    );
    // The old store is removed at the next start.
    server.restart();
    let stores = std::fs::read_dir(server.data_dir().join("projects"))
        .unwrap()
        .count();
    assert_eq!(stores, 1);
}

#[test]
fn two_projects_with_the_same_keys_share_nothing() {
    let mut server = secured();
    assert_eq!(
        server
            .post("/v1/projects", json!({"key": "growth", "name": "Growth"}))
            .0,
        201
    );
    let (default_editor, growth_editor) = (
        issue(&server, "editor", "default"),
        issue(&server, "editor", "growth"),
    );
    let receivers = [Receiver::answering(204), Receiver::answering(204)];
    let mut streams = Vec::new();
    for (editor, receiver) in [&default_editor, &growth_editor]
        .into_iter()
        .zip(&receivers)
    {
        server.use_token(Some(editor));
        let (status, hook) = server.post(
            "/v1/webhooks",
            json!({"url": receiver.url(), "events": ["experiment.started"]}),
        );
        assert_eq!(status, 201, "{hook}");
        streams.push(crate::stream::connect(&server, "", None));
        server.running_experiment(
            "checkout",
            json!({"metrics": [{"key": "purchase", "kind": "binomial"}]}),
        );
    }
    // Three units in the default project, one in growth; the same ids.
    server.use_token(Some(&default_editor));
    for unit in ["u1", "u2", "u3"] {
        let path = format!("/v1/experiments/checkout/assignment?unit_id={unit}");
        assert_eq!(server.get(&path).0, 200);
    }
    server.persist(json!({"type": "purchase", "unit_id": "u1", "experiment": "checkout"}));
    server.use_token(Some(&growth_editor));
    assert_eq!(
        server
            .get("/v1/experiments/checkout/assignment?unit_id=u1")
            .0,
        200
    );
    server.barrier();
    server.use_token(Some(&default_editor));
    server.barrier();

    let units = |server: &TestServer| {
        let (status, results) = server.get("/v1/experiments/checkout/results");
        assert_eq!(status, 200, "{results}");
        results["units"].as_u64().unwrap()
    };
    assert_eq!(units(&server), 3);
    assert_eq!(server.stored(Some("checkout")).len(), 4);
    server.use_token(Some(&growth_editor));
    assert_eq!(units(&server), 1);
    let growth_events = server.stored(Some("checkout"));
    assert_eq!(growth_events.len(), 1, "{growth_events:?}");
    let (_, hooks) = server.get("/v1/webhooks");
    assert_eq!(hooks["webhooks"].as_array().map(Vec::len), Some(1));
    // A credential of one project cannot name the other.
    let (status, body) = server.call_in("default", reqwest::Method::GET, "/v1/experiments", None);
    assert_eq!((status, error_code(&body)), (403, "forbidden"));

    // Each project's subscriber and stream saw its own start only.
    for receiver in &receivers {
        let got = receiver.wait_for(1, Duration::from_secs(20));
        assert_eq!(got.len(), 1);
    }
    std::thread::sleep(Duration::from_millis(500));
    for receiver in &receivers {
        assert_eq!(receiver.received().len(), 1);
    }
    for stream in &streams {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut started = 0;
        while let Ok(message) = stream.recv_timeout(
            deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(2)),
        ) {
            if message.event == "experiment.started" {
                started += 1;
            }
        }
        assert_eq!(started, 1);
    }
}

/// Copies the files of `from` into `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn a_data_directory_from_before_projects_is_the_default_project() {
    let mut server = TestServer::start();
    assert_eq!(server.stop().code(), Some(0));
    let data = server.data_dir();
    std::fs::remove_dir_all(&data).unwrap();
    // Written by abacus before projects (store layout 1): a running
    // experiment `checkout`, three exposures and a purchase.
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/layout1"),
        &data,
    );
    server.restart_stopped();
    assert!(
        server.log().contains("store layout migrated"),
        "{}",
        server.log()
    );
    let (status, experiment) = server.get("/v1/experiments/checkout");
    assert_eq!(
        (status, experiment["status"].as_str()),
        (200, Some("running"))
    );
    let (_, results) = server.get("/v1/experiments/checkout/results");
    assert_eq!(results["units"], 3, "{results}");
    let purchases = &results["metrics"][0]["variants"];
    assert_eq!(
        (
            &purchases[0]["units"],
            &purchases[1]["units"],
            &purchases[1]["conversions"]
        ),
        (&json!(1), &json!(2), &json!(1)),
        "{results}"
    );
    assert_eq!(server.stored(Some("checkout")).len(), 3);
    assert_eq!(keys(&server.get("/v1/projects").1), ["default"]);
    // Migrated once: the next start finds layout 2.
    server.restart();
    assert_eq!(server.get("/v1/experiments/checkout").0, 200);
}

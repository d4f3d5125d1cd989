//! Identity stitching over HTTP: an anonymous visitor signs in, and the
//! two ids are one person in every experiment from then on.

use std::thread;

use serde_json::{json, Value};

use crate::common::{error_code, urlencode, TestServer};

/// The variant the hash gives `unit`, without exposing it.
fn hashed(server: &TestServer, key: &str, unit: &str) -> String {
    let (status, a) = server.get(&format!(
        "/v1/experiments/{key}/assignment?unit_id={}&log_exposure=false",
        urlencode(unit)
    ));
    assert_eq!(status, 200, "{a}");
    a["variant"].as_str().unwrap().to_owned()
}

/// A unit the hash puts in `variant`, named `prefix-<n>`.
fn unit_in(server: &TestServer, key: &str, variant: &str, prefix: &str) -> String {
    (0..200)
        .map(|i| format!("{prefix}-{i}"))
        .find(|u| hashed(server, key, u) == variant)
        .expect("a unit in the variant")
}

fn live(server: &TestServer, key: &str) -> Value {
    let (status, a) = server.get(&format!("/v1/experiments/{key}/aggregates"));
    assert_eq!(status, 200, "{a}");
    a
}

fn units(a: &Value, variant: &str) -> u64 {
    a["variants"][variant]["units"].as_u64().unwrap_or(0)
}

fn measure(a: &Value, variant: &str, m: &str, field: &str) -> f64 {
    a["variants"][variant]["measures"][m][field]
        .as_f64()
        .unwrap_or(0.0)
}

#[test]
fn a_signed_in_unit_keeps_the_anonymous_variant_and_counts_once() {
    let mut server = TestServer::start();
    server.running_experiment(
        "checkout",
        json!({"metrics": [{"key": "conversion", "kind": "binomial"}]}),
    );
    let anon = unit_in(&server, "checkout", "control", "anon");
    let alice = unit_in(&server, "checkout", "treatment", "alice");

    // The visitor sees the control, converts, then signs in as alice, who
    // (on another device, later) saw the treatment.
    assert_eq!(server.assign("checkout", &anon)["variant"], "control");
    server.barrier();
    thread::sleep(std::time::Duration::from_millis(5));
    assert_eq!(server.assign("checkout", &alice)["variant"], "treatment");
    server.persist(json!({"type": "conversion", "unit_id": anon, "experiment": "checkout"}));
    server.barrier();
    let before = live(&server, "checkout");
    assert_eq!(
        (units(&before, "control"), units(&before, "treatment")),
        (1, 1)
    );

    let (status, link) = server.post("/v1/aliases", json!({"from": anon, "to": alice}));
    assert_eq!(status, 201, "{link}");
    assert_eq!(
        (link["from"].as_str(), link["to"].as_str()),
        (Some(&*anon), Some(&*alice))
    );
    assert_eq!(link["moved"][0]["experiment"], "checkout");
    assert_eq!(
        link["moved"][0]["variant"], "control",
        "the earlier first exposure wins"
    );

    // Both ids are alice now, in the control.
    for id in [&anon, &alice] {
        let a = server.assign("checkout", id);
        assert_eq!(a["variant"], "control", "{id}: {a}");
    }
    server.persist(json!({"events": [
        {"type": "conversion", "unit_id": anon, "experiment": "checkout"},
        {"type": "conversion", "unit_id": alice, "experiment": "checkout"},
    ]}));
    server.barrier();
    let after = live(&server, "checkout");
    assert_eq!(
        (units(&after, "control"), units(&after, "treatment")),
        (1, 0),
        "one person, in the variant seen first: {after}"
    );
    assert_eq!(measure(&after, "control", "conversion", "events"), 3.0);
    assert_eq!(measure(&after, "control", "conversion", "units"), 1.0);
    assert_eq!(measure(&after, "treatment", "conversion", "units"), 0.0);
    let (status, results) = server.get("/v1/experiments/checkout/results");
    assert_eq!(status, 200, "{results}");
    assert_eq!(results["units"], 1, "{results}");

    // What each id links to, and what links to the unit.
    let (status, who) = server.get(&format!("/v1/aliases/{}", urlencode(&anon)));
    assert_eq!(
        (status, who["links_to"].as_str()),
        (200, Some(&*alice)),
        "{who}"
    );
    let (_, who) = server.get(&format!("/v1/aliases/{}", urlencode(&alice)));
    assert_eq!(who["links_to"], Value::Null);
    assert_eq!(who["linked"][0]["id"].as_str(), Some(&*anon), "{who}");

    // Linking again is an answer, not a change; anything else conflicts.
    let (status, again) = server.post("/v1/aliases", json!({"from": anon, "to": alice}));
    assert_eq!((status, &again["to"]), (200, &json!(alice)), "{again}");
    for (body, code, status_want) in [
        (json!({"from": anon, "to": "bob"}), "link_conflict", 409),
        (json!({"from": alice, "to": "bob"}), "link_conflict", 409),
        (json!({"from": alice, "to": anon}), "link_conflict", 409),
        (
            json!({"from": "carol", "to": "carol"}),
            "validation_failed",
            422,
        ),
        (json!({"from": "", "to": "carol"}), "invalid_body", 422),
        (json!({"from": "carol"}), "invalid_body", 422),
    ] {
        let (status, refused) = server.post("/v1/aliases", body.clone());
        assert_eq!(
            (status, error_code(&refused)),
            (status_want, code),
            "{body}: {refused}"
        );
    }

    // Across a restart: the link holds, and the old id still counts as alice.
    server.restart();
    assert_eq!(server.assign("checkout", &anon)["variant"], "control");
    server.persist(json!({"type": "conversion", "unit_id": anon, "experiment": "checkout"}));
    server.barrier();
    let restarted = live(&server, "checkout");
    assert_eq!(
        (units(&restarted, "control"), units(&restarted, "treatment")),
        (1, 0)
    );
    assert_eq!(measure(&restarted, "control", "conversion", "events"), 4.0);
}

#[test]
fn a_unit_exposed_first_keeps_its_variant_and_an_unexposed_one_takes_the_ids() {
    let server = TestServer::start();
    server.running_experiment("exp", json!({}));
    // bob saw the treatment first; his anonymous id saw the control later.
    let bob = unit_in(&server, "exp", "treatment", "bob");
    let bob_anon = unit_in(&server, "exp", "control", "bob-anon");
    assert_eq!(server.assign("exp", &bob)["variant"], "treatment");
    server.barrier();
    thread::sleep(std::time::Duration::from_millis(5));
    assert_eq!(server.assign("exp", &bob_anon)["variant"], "control");
    server.barrier();
    let (status, link) = server.post("/v1/aliases", json!({"from": bob_anon, "to": bob}));
    assert_eq!(status, 201, "{link}");
    assert_eq!(link["moved"], json!([]), "bob keeps his own first exposure");
    assert_eq!(server.assign("exp", &bob_anon)["variant"], "treatment");

    // dana was never exposed: she takes her anonymous id's variant, even
    // where the hash would give her the other.
    let dana = unit_in(&server, "exp", "treatment", "dana");
    let dana_anon = unit_in(&server, "exp", "control", "dana-anon");
    assert_eq!(server.assign("exp", &dana_anon)["variant"], "control");
    server.barrier();
    let (status, link) = server.post("/v1/aliases", json!({"from": dana_anon, "to": dana}));
    assert_eq!(status, 201, "{link}");
    assert_eq!(link["moved"][0]["variant"], "control");
    let a = server.assign("exp", &dana);
    assert_eq!(a["variant"], "control", "{a}");
    server.barrier();
    let a = live(&server, "exp");
    assert_eq!(
        (units(&a, "control"), units(&a, "treatment")),
        (1, 1),
        "two people, each once: {a}"
    );
}

/// The ingest partition of `unit` among `partitions`, as the server
/// routes it (a hash with fixed keys, multiply-shifted).
fn partition_of(unit: &str, partitions: usize) -> usize {
    use std::hash::{DefaultHasher, Hasher};
    let mut hasher = DefaultHasher::new();
    hasher.write(unit.as_bytes());
    ((u128::from(hasher.finish()) * partitions as u128) >> 64) as usize
}

/// Events sent under the anonymous id while the link is being made are
/// all counted, once, for the signed-in unit: those queued before the
/// link move with the id's state, those after are the unit's. Both when
/// the id and the unit share an ingest partition and when they do not.
#[test]
fn events_racing_a_link_are_each_counted_once() {
    let server = TestServer::start();
    server.running_experiment("exp", json!({}));
    for same in [true, false] {
        let anon = (0..400)
            .map(|i| format!("racer-{same}-{i}"))
            .find(|u| hashed(&server, "exp", u) == "control")
            .expect("an id in the control");
        let user = (0..400)
            .map(|i| format!("signed-in-{same}-{i}"))
            .find(|u| {
                hashed(&server, "exp", u) == "treatment"
                    && (partition_of(u, 2) == partition_of(&anon, 2)) == same
            })
            .expect("a unit in the treatment");
        race(&server, &anon, &user, &format!("spend_{same}"));
    }
}

fn race(server: &TestServer, anon: &str, user: &str, name: &str) {
    assert_eq!(server.assign("exp", anon)["variant"], "control");
    server.barrier();
    let before = live(server, "exp");
    let sent = 300;
    thread::scope(|s| {
        let sender = s.spawn(|| {
            for i in 0..sent {
                let body = json!({"type": "metric", "unit_id": anon, "experiment": "exp",
                    "value": 1.0, "properties": {"name": name}, "event_id": format!("{name}-{i}")});
                server.persist(body);
            }
        });
        thread::sleep(std::time::Duration::from_millis(20));
        let (status, link) = server.post("/v1/aliases", json!({"from": anon, "to": user}));
        assert_eq!(status, 201, "{link}");
        sender.join().expect("sender");
    });
    server.barrier();
    let a = live(server, "exp");
    assert_eq!(
        (units(&a, "control"), units(&a, "treatment")),
        (units(&before, "control"), units(&before, "treatment")),
        "the person was and stays one control unit: {a}"
    );
    assert_eq!(measure(&a, "control", name, "events"), f64::from(sent));
    assert_eq!(measure(&a, "control", name, "sum"), f64::from(sent));
    assert_eq!(
        measure(&a, "control", name, "sum_squares"),
        f64::from(sent * sent),
        "one unit's sum, squared once"
    );
}

//! `/openapi.json` is an OpenAPI 3.1 document that describes exactly the router's routes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::Command;

use reqwest::Method;
use serde_json::Value;

use crate::common::Api;

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Every `$ref` in `v`.
fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if k == "$ref" {
                    if let Some(r) = v.as_str() {
                        out.push(r);
                    }
                } else {
                    refs(v, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn document_is_openapi_3_1_and_matches_the_routes() {
    let api = Api::start().await;
    // No token needed.
    let resp = api.send(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(resp.status, 200);
    assert!(resp
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json")));
    let doc = resp.body;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    assert!(doc["info"]["title"].as_str().is_some());
    assert!(doc["info"]["version"].as_str().is_some());
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );

    // Operations of the document.
    let mut documented = BTreeSet::new();
    let paths = doc["paths"].as_object().expect("paths");
    for (path, item) in paths {
        let placeholders: BTreeSet<String> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(str::to_string)
            .collect();
        for (method, op) in item.as_object().unwrap() {
            if !METHODS.contains(&method.as_str()) {
                continue;
            }
            documented.insert((method.to_uppercase(), path.clone()));
            let responses = op["responses"].as_object().expect("responses");
            assert!(!responses.is_empty(), "{method} {path} has no responses");
            for (status, r) in responses {
                assert!(
                    status.len() == 3 && status.parse::<u16>().is_ok(),
                    "{method} {path}: response {status}"
                );
                assert!(
                    r["description"].as_str().is_some(),
                    "{method} {path} {status}: no description"
                );
                if status.starts_with('4') || status.starts_with('5') {
                    assert!(
                        r["content"]["application/problem+json"].is_object(),
                        "{method} {path} {status}: not a problem detail"
                    );
                }
            }
            // Path parameters are declared, and only those.
            let declared: BTreeSet<String> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "path")
                        .map(|p| p["name"].as_str().unwrap().to_string())
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(declared, placeholders, "{method} {path}: path parameters");
            if path != "/openapi.json" {
                assert!(
                    op["security"].as_array().is_some_and(|s| !s.is_empty()),
                    "{method} {path}: no security"
                );
                assert!(
                    responses.contains_key("401"),
                    "{method} {path}: no 401 documented"
                );
            }
        }
    }

    // The router's routes and the document's operations are the same set.
    let routed: BTreeSet<(String, String)> = relayward_admin::routes()
        .into_iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(routed, documented);

    // Schemas are the API's named types (no component for a bare `i64` alias and the like).
    for name in doc["components"]["schemas"].as_object().unwrap().keys() {
        assert!(
            name.starts_with(|c: char| c.is_ascii_uppercase()),
            "schema component {name}"
        );
    }

    // Every schema reference resolves.
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected $ref {r}"));
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "dangling $ref {r}"
        );
    }

    // And the router serves each of them (no token: 401, not the 404/405 of a missing route).
    for (method, path) in relayward_admin::routes() {
        let concrete = path
            .replace("{tenant_id}", "1")
            .replace("{connector_id}", "1")
            .replace("{token_id}", "1")
            .replace("{domain}", "example.com")
            .replace("{queue_id}", "ABC")
            .replace("{sender}", "a@example.com");
        let r = api.send(method.clone(), &concrete, None, None).await;
        let want = if path == "/openapi.json" { 200 } else { 401 };
        assert_eq!(r.status, want, "{method} {concrete}: {}", r.text);
    }
    // A path outside the table is a problem detail too.
    api.send(Method::GET, "/v1/nothing", None, None)
        .await
        .assert_problem(404);
    api.send(Method::PUT, "/v1/tenants", Some(&api.op.token), None)
        .await
        .assert_problem(405);
    api.stop().await;
}

/// The document as the running API serves it, as text.
async fn served_document() -> String {
    let api = Api::start().await;
    let resp = api.send(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(resp.status, 200, "{}", resp.text);
    api.stop().await;
    resp.text
}

#[tokio::test]
async fn every_operation_has_a_unique_operation_id() {
    let doc: Value = serde_json::from_str(&served_document().await).unwrap();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut count = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().unwrap() {
            if !METHODS.contains(&method.as_str()) {
                continue;
            }
            count += 1;
            let here = format!("{} {path}", method.to_uppercase());
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{here}: no operationId"));
            assert!(
                id.starts_with(|c: char| c.is_ascii_lowercase())
                    && id.chars().all(|c| c.is_ascii_alphanumeric()),
                "{here}: operationId {id:?} is not a plain camelCase name"
            );
            if let Some(before) = seen.insert(id.to_string(), here.clone()) {
                panic!("operationId {id:?} is used by both {before} and {here}");
            }
        }
    }
    assert_eq!(count, relayward_admin::routes().len());
    assert_eq!(seen.len(), count);
}

/// Whether `python3 -m openapi_spec_validator` can run here.
fn validator_installed() -> bool {
    Command::new("python3")
        .args(["-c", "import openapi_spec_validator"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test]
async fn document_passes_openapi_spec_validator() {
    let text = served_document().await;
    if !validator_installed() {
        assert!(
            std::env::var_os("CI").is_none(),
            "openapi-spec-validator is not installed, and CI must run this test \
             (pip install openapi-spec-validator)"
        );
        println!(
            "SKIPPED: openapi-spec-validator not installed (pip install openapi-spec-validator)"
        );
        return;
    }
    let mut file = tempfile::Builder::new()
        .prefix("relayward-openapi-")
        .suffix(".json")
        .tempfile()
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file.flush().unwrap();
    let out = Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(file.path())
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "openapi-spec-validator rejects /openapi.json ({}):\n{stdout}{stderr}",
        out.status
    );
    println!("{stdout}{stderr}");
}

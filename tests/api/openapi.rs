//! The OpenAPI document at `/openapi.json` against the routes the server
//! really serves, and the interactive page at `/docs`.

use std::collections::BTreeSet;

use adtrack::http::{routes, Surface};
use reqwest::StatusCode;

use crate::helpers::spawn_app;

#[tokio::test]
async fn the_document_lists_exactly_the_routes_served() {
    let app = spawn_app().await;
    let (status, doc) = app.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");

    let served: BTreeSet<(String, String)> = routes(Surface::Full)
        .into_iter()
        .map(|(m, p)| (m.as_str().to_lowercase(), p.to_owned()))
        .collect();
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .filter(|k| ["get", "post", "put", "delete", "patch"].contains(&k.as_str()))
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect();
    let missing: Vec<_> = served.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&served).collect();
    assert!(missing.is_empty(), "served but not documented: {missing:?}");
    assert!(extra.is_empty(), "documented but not served: {extra:?}");

    // Every operation documents its success and, on the API's own routes,
    // the JSON error shape.
    for (method, path) in &served {
        let op = &doc["paths"][path][method];
        let responses = op["responses"].as_object().unwrap();
        assert!(
            // The click redirect's success is its 302.
            responses
                .keys()
                .any(|k| k.starts_with('2') || (path == "/c/{view}" && k == "302")),
            "{method} {path} documents no success"
        );
        for (code, r) in responses {
            if code.starts_with('4') || code.starts_with('5') {
                let schema = &r["content"]["application/json"]["schema"]["$ref"];
                let body = schema.as_str().unwrap_or_default();
                assert!(
                    body.ends_with("/ErrorBody") || body.ends_with("/Readiness"),
                    "{method} {path} {code}: {r}"
                );
            }
        }
    }
    // Each documented route answers something other than 404/405 (the
    // VAST routes given a catalogue ad and a view adtrack served).
    let ad = "11111111-1111-1111-1111-111111111111";
    let vast = app
        .client
        .get(app.url(&format!("/vast/{ad}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let view = vast.split("/c/").nth(1).unwrap().split('?').next().unwrap();
    // The click's 302 is its answer, not a hop to follow.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for (method, path) in &served {
        if path.contains("/admin/") || path == "/live" {
            continue;
        }
        let path = path
            .replace("{id}", "x")
            .replace("{adId}", ad)
            .replace("{view}", view)
            .replace("{event}", "start");
        let url = app.url(&path);
        let res = client
            .request(method.to_uppercase().parse().unwrap(), url)
            .send()
            .await
            .unwrap();
        if path == "/tenant/vast-tag" {
            // Served, and a 404 of its own with TENANTS=off (this app):
            // there are no tags then (tests/api/vast.rs covers it on).
            assert_eq!(res.status(), StatusCode::NOT_FOUND);
            let body: serde_json::Value = res.json().await.unwrap();
            assert!(
                body["message"].as_str().unwrap().contains("TENANTS=off"),
                "{body}"
            );
            continue;
        }
        assert!(
            ![StatusCode::NOT_FOUND, StatusCode::METHOD_NOT_ALLOWED].contains(&res.status()),
            "{method} {path}: {}",
            res.status()
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn the_docs_page_and_its_assets_are_served() {
    let app = spawn_app().await;
    for (path, kind) in [
        ("/docs", "text/html"),
        ("/vendor/swagger-ui/swagger-ui-bundle.js", "javascript"),
        ("/vendor/swagger-ui/swagger-ui.css", "text/css"),
        ("/vendor/swagger-ui/init.js", "javascript"),
    ] {
        let res = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.contains(kind), "{path}: {ct}");
        let body = res.text().await.unwrap();
        if path == "/docs" {
            assert!(body.contains("swagger-ui-bundle.js") && body.contains("init.js"));
        }
        if path.ends_with("init.js") {
            assert!(body.contains("/openapi.json"));
        }
    }
    app.stop().await;
}

//! The dashboard page: served at `/` with its assets and a strict Content-Security-Policy, and
//! gone with `DASHBOARD=off`. (What it does in a browser is tested in headless Chromium by
//! `clients/typescript/test/browser.test.mjs`.)

use crate::helpers::{config_with, spawn_app, spawn_app_unready, TestDb};

#[tokio::test]
async fn the_page_and_its_assets_are_served() {
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    let page = reqwest::get(app.url("/")).await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(html.contains("citas-realtime") && html.contains("/assets/dashboard.js"));
    for (asset, kind) in [
        ("/assets/citas-realtime.js", "text/javascript"),
        ("/assets/dashboard.js", "text/javascript"),
        ("/assets/dashboard.css", "text/css"),
    ] {
        let response = reqwest::get(app.url(asset)).await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{asset}");
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(content_type.starts_with(kind), "{asset}: {content_type}");
        assert!(!response.text().await.unwrap().is_empty());
    }
    let missing = reqwest::get(app.url("/assets/nope.js")).await.unwrap();
    assert_eq!(missing.status().as_u16(), 404);
}

#[tokio::test]
async fn dashboard_off_removes_the_page() {
    let db = TestDb::new().await;
    let app = spawn_app_unready(config_with(&db.url, |a| a.dashboard = "off".into())).await;
    app.wait_health(200).await;
    for path in ["/", "/assets/dashboard.js"] {
        let response = reqwest::get(app.url(path)).await.unwrap();
        assert_eq!(response.status().as_u16(), 404, "{path}");
    }
}

//! The web UI as the management listener serves it: the page and its files come from the binary,
//! the page's own requests get their 401 without the browser's login dialog, and the node figures
//! the Overview shows are in the API. The UI itself is driven in Chromium by interop/web-ui.

mod common;

use std::time::Duration;

use common::TestBroker;
use common::http::{exchange, get_json};

/// A GET of `path` with extra header lines; the status, the head (lower-cased) and the body.
async fn get(b: &TestBroker, path: &str, headers: &str) -> (u16, String, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n");
    let (status, head, body) = exchange(b.http, &request).await;
    (status, head.to_lowercase(), body)
}

#[tokio::test]
async fn the_page_and_its_files_come_from_the_binary() {
    let b = TestBroker::start().await;
    let (status, head, page) = get(&b, "/", "").await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(head.contains("cache-control: no-cache"), "{head}");
    assert!(head.contains("x-frame-options: deny"), "{head}");
    assert!(page.contains(r#"<script src="app.js">"#), "{page}");
    assert!(page.contains(r#"id="login""#), "{page}");
    // Nothing the page loads comes from another host.
    for remote in [r#"src="http"#, r#"href="http"#, "@import"] {
        assert!(!page.contains(remote), "{remote} in {page}");
    }

    let (status, head, script) = get(&b, "/app.js", "").await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/javascript"), "{head}");
    assert!(script.contains("function listing("), "the UI's script");
    assert!(
        !script.contains("https://")
            && !script.contains("import(")
            && !script.contains("\nimport "),
        "the script loads nothing from elsewhere"
    );

    let (status, head, style) = get(&b, "/app.css", "").await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/css"), "{head}");
    assert!(
        style.contains("table.list") || style.contains("table {"),
        "the UI's stylesheet"
    );

    let (status, _, _) = get(&b, "/index.html", "").await;
    assert_eq!(status, 200);
    let (status, _, _) = get(&b, "/nothing-here.js", "").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_pages_requests_get_no_browser_login_dialog() {
    let b = TestBroker::start().await;
    // "guest:wrong" in base64.
    let wrong = "Authorization: Basic Z3Vlc3Q6d3Jvbmc=\r\n";
    let (status, head, body) = get(&b, "/api/whoami", wrong).await;
    assert_eq!(status, 401);
    assert!(head.contains("www-authenticate: basic"), "{head}");
    assert!(body.contains("Login failed"), "{body}");

    let page = "X-Requested-With: XMLHttpRequest\r\n";
    let (status, head, body) = get(&b, "/api/whoami", &format!("{wrong}{page}")).await;
    assert_eq!(status, 401);
    assert!(!head.contains("www-authenticate"), "{head}");
    assert!(body.contains("Login failed"), "{body}");
    let (status, head, _) = get(&b, "/api/overview", page).await;
    assert_eq!(status, 401);
    assert!(!head.contains("www-authenticate"), "{head}");
}

#[tokio::test]
async fn nodes_show_disk_free_and_file_descriptors() {
    let b = TestBroker::start().await;
    let mut node = serde_json::Value::Null;
    for _ in 0..50 {
        node = get_json(&b, "/api/nodes").await[0].clone();
        if node.get("disk_free").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let free = node["disk_free"]
        .as_u64()
        .expect("disk_free once the disk was looked at");
    assert!(free > 0, "{node}");
    let used = node["fd_used"].as_u64().expect("fd_used");
    let total = node["fd_total"].as_u64().expect("fd_total");
    assert!(used > 0 && total >= used, "{node}");
}

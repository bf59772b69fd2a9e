//! Cross-origin use (issue 5, item 7), with the API of `examples/cors.rs`: tower-http's
//! `CorsLayer` outside the simpleio layer answers the preflight for the allowed origin, with
//! credentials; `GET`s and `POST`s with the origin and a cookie work and carry the CORS headers;
//! another origin gets no `Access-Control-Allow-Origin`.

mod support;

#[path = "../examples/cors.rs"]
#[allow(dead_code)]
mod example;

use http::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::json;
use support::server::RunningApp;
use support::wire::answer;

const PAGE: &str = "http://page.example.test:3000";
const OTHER: &str = "http://evil.example.test";

async fn api() -> RunningApp {
    let (app, _io) = example::api(HeaderValue::from_static(PAGE));
    RunningApp::start(app).await
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The comma-separated values of a header, lowercased.
fn list(headers: &HeaderMap, name: &str) -> Vec<String> {
    header(headers, name)
        .unwrap_or_default()
        .split(',')
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty())
        .collect()
}

fn preflight(http: &reqwest::Client, url: &str, origin: &str) -> reqwest::RequestBuilder {
    http.request(Method::OPTIONS, url)
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
}

#[tokio::test]
async fn the_preflight_from_the_allowed_origin_allows_credentials_get_post_and_json() {
    let api = api().await;
    let http = reqwest::Client::new();
    let response = preflight(&http, &api.url("/simpleio"), PAGE)
        .send()
        .await
        .expect("a response");
    assert!(response.status().is_success(), "{}", response.status());
    let headers = response.headers();
    assert_eq!(header(headers, "access-control-allow-origin"), Some(PAGE));
    assert_eq!(
        header(headers, "access-control-allow-credentials"),
        Some("true")
    );
    let methods = list(headers, "access-control-allow-methods");
    assert!(
        methods.contains(&"get".to_owned()) && methods.contains(&"post".to_owned()),
        "{methods:?}"
    );
    assert_eq!(
        list(headers, "access-control-allow-headers"),
        ["content-type"]
    );
}

#[tokio::test]
async fn a_get_and_a_post_with_the_origin_and_a_cookie_work_and_carry_the_cors_headers() {
    let api = api().await;
    let http = reqwest::Client::new();
    let url = api.url("/simpleio");

    let poll = http
        .get(format!("{url}?client=tab1"))
        .header("origin", PAGE)
        .header("cookie", "theme=dark; user=ann")
        .send()
        .await
        .expect("a response");
    let poll = answer(poll).await;
    let batch = poll.batch();
    assert!(batch.messages.is_empty());
    assert_eq!(
        header(&poll.headers, "access-control-allow-origin"),
        Some(PAGE)
    );
    assert_eq!(
        header(&poll.headers, "access-control-allow-credentials"),
        Some("true")
    );

    // The cookie names the user.
    let body = json!({"client": "tab1", "messages": [{"id": "m1", "event": "whoami"}]});
    let post = http
        .post(&url)
        .header("origin", PAGE)
        .header("cookie", "user=ann")
        .json(&body)
        .send()
        .await
        .expect("a response");
    let post = answer(post).await;
    assert_eq!(post.acks(), [json!({"id": "m1", "reply": "ann"})]);
    assert_eq!(
        header(&post.headers, "access-control-allow-origin"),
        Some(PAGE)
    );

    // Without the cookie: the identity function's 401, readable by the page.
    let refused = http
        .get(format!("{url}?client=tab1"))
        .header("origin", PAGE)
        .send()
        .await
        .expect("a response");
    let refused = answer(refused).await;
    refused.assert_error(401, "unauthorized");
    assert_eq!(
        header(&refused.headers, "access-control-allow-origin"),
        Some(PAGE)
    );
}

#[tokio::test]
async fn another_origin_gets_no_allow_origin_header() {
    let api = api().await;
    let http = reqwest::Client::new();
    let url = api.url("/simpleio");

    let response = preflight(&http, &url, OTHER)
        .send()
        .await
        .expect("a response");
    assert_eq!(
        header(response.headers(), "access-control-allow-origin"),
        None
    );

    // The server answers (CORS is the browser's check), but without the header a browser
    // keeps the answer from the other origin's page.
    let response = http
        .get(format!("{url}?client=tab1"))
        .header("origin", OTHER)
        .header("cookie", "user=ann")
        .send()
        .await
        .expect("a response");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(response.headers(), "access-control-allow-origin"),
        None
    );
}

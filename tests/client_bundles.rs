//! The layer serves the JavaScript client itself, over real HTTP: the classic script at
//! `{path}/simpleio.js` and the ES module at `{path}/simpleio.mjs`, both public (no identity),
//! typed as JavaScript, revalidated by ETag; and the same texts are public constants for an
//! application that serves them itself.

mod support;

use axum::Router;
use axum::routing::get;
use reqwest::{Method, StatusCode, header};
use simpleio::{CLIENT_MODULE, CLIENT_SCRIPT, SimpleIoLayer};
use support::server::{RunningApp, TestServer};

/// Status, headers and body of one request with no identity header.
async fn fetch(
    method: Method,
    url: &str,
    if_none_match: Option<&str>,
) -> (StatusCode, header::HeaderMap, String) {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(tag) = if_none_match {
        request = request.header(header::IF_NONE_MATCH, tag);
    }
    let response = request.send().await.expect("a response");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.text().await.expect("a body");
    (status, headers, body)
}

/// Checks the headers of a `200` for a bundle and returns its ETag.
fn assert_javascript(headers: &header::HeaderMap) -> String {
    assert_eq!(
        headers[header::CONTENT_TYPE],
        "application/javascript; charset=utf-8"
    );
    assert_eq!(headers[header::CACHE_CONTROL], "no-cache");
    assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    let etag = headers[header::ETAG].to_str().expect("ASCII").to_owned();
    assert!(
        etag.len() == 18 && etag.starts_with('"') && etag.ends_with('"'),
        "a strong ETag: {etag}"
    );
    etag
}

#[tokio::test]
async fn the_es_module_is_served_at_path_simpleio_mjs_with_no_identity() {
    let server = TestServer::start(SimpleIoLayer::builder()).await;
    let (status, headers, body) =
        fetch(Method::GET, &format!("{}/simpleio.mjs", server.url()), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_javascript(&headers);
    assert_eq!(body, CLIENT_MODULE);
    assert!(
        body.contains("export{") || body.contains("export {"),
        "an ES module"
    );
    assert!(
        !body.contains("globalThis.simpleio="),
        "not the classic script"
    );
}

#[tokio::test]
async fn the_classic_script_is_still_served_at_path_simpleio_js() {
    let server = TestServer::start(SimpleIoLayer::builder()).await;
    let (status, headers, body) =
        fetch(Method::GET, &format!("{}/simpleio.js", server.url()), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_javascript(&headers);
    assert_eq!(body, CLIENT_SCRIPT);
}

#[tokio::test]
async fn each_bundle_revalidates_with_its_own_etag() {
    let server = TestServer::start(SimpleIoLayer::builder()).await;
    let module = format!("{}/simpleio.mjs", server.url());
    let script = format!("{}/simpleio.js", server.url());
    let module_tag = assert_javascript(&fetch(Method::GET, &module, None).await.1);
    let script_tag = assert_javascript(&fetch(Method::GET, &script, None).await.1);
    assert_ne!(module_tag, script_tag);

    let (status, headers, body) = fetch(Method::GET, &module, Some(&module_tag)).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert_eq!(headers[header::ETAG], module_tag.as_str());
    assert_eq!(headers[header::CACHE_CONTROL], "no-cache");
    assert!(body.is_empty());

    // The script's tag does not validate the module: it comes in full.
    let (status, _, body) = fetch(Method::GET, &module, Some(&script_tag)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, CLIENT_MODULE);
}

#[tokio::test]
async fn a_head_of_the_module_gets_its_headers_and_no_body() {
    let server = TestServer::start(SimpleIoLayer::builder()).await;
    let (status, headers, body) = fetch(
        Method::HEAD,
        &format!("{}/simpleio.mjs", server.url()),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_javascript(&headers);
    assert!(body.is_empty());
}

#[tokio::test]
async fn the_bundles_follow_a_configured_path_and_other_names_reach_the_app() {
    let (layer, _io) = SimpleIoLayer::builder().path("/rt").build();
    let app = Router::new()
        .route("/simpleio/simpleio.mjs", get(|| async { "the app's own" }))
        .fallback(|| async { (StatusCode::NOT_FOUND, "the app's 404") })
        .layer(layer);
    let app = RunningApp::start(app).await;
    let (status, _, body) = fetch(Method::GET, &app.url("/rt/simpleio.mjs"), None).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, CLIENT_MODULE));
    // Not the layer's path any more: the app answers.
    let (status, _, body) = fetch(Method::GET, &app.url("/simpleio/simpleio.mjs"), None).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "the app's own"));
    for other in [
        "/rt/simpleio.min.js",
        "/rt/simpleio.d.ts",
        "/rt/simpleio.mjs/x",
    ] {
        let (status, _, body) = fetch(Method::GET, &app.url(other), None).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::NOT_FOUND, "the app's 404"),
            "{other}"
        );
    }
}

#[tokio::test]
async fn a_post_to_a_bundle_is_the_apps_not_the_layers() {
    let server = TestServer::start(SimpleIoLayer::builder()).await;
    let (status, _, body) = fetch(
        Method::POST,
        &format!("{}/simpleio.mjs", server.url()),
        None,
    )
    .await;
    // The test server's app has only `/`: axum answers 405 or 404, never the bundle.
    assert!(status.is_client_error(), "{status}");
    assert_ne!(body, CLIENT_MODULE);
}

#[tokio::test]
async fn an_app_can_serve_the_constants_itself() {
    let app = Router::new()
        .route(
            "/assets/simpleio.mjs",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    CLIENT_MODULE,
                )
            }),
        )
        .route(
            "/assets/simpleio.js",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    CLIENT_SCRIPT,
                )
            }),
        );
    let app = RunningApp::start(app).await;
    let (_, _, module) = fetch(Method::GET, &app.url("/assets/simpleio.mjs"), None).await;
    let (_, _, script) = fetch(Method::GET, &app.url("/assets/simpleio.js"), None).await;
    assert!(module.contains("export"));
    assert!(script.contains("globalThis.simpleio="));
}

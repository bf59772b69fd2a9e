//! The layer answers only its own path: every other request reaches the inner service untouched
//! (method, path, query, headers and body in; status, headers and body out), behind axum or a
//! bare hyper server.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use simpleio::{Incoming, Reply, SimpleIoLayer};
use support::server::{TestServer, header_identity};
use support::wire::{Wire, finish, start};
use tokio::net::TcpListener;
use tower::{BoxError, ServiceBuilder, service_fn};

/// The inner app's answer to anything but `/`: everything it was given, and a header of its own.
async fn echo(request: Request<Body>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.expect("the body").to_bytes();
    let seen = json!({
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "x-echo": parts.headers.get("x-echo").and_then(|v| v.to_str().ok()),
        "content-type": parts.headers.get("content-type").and_then(|v| v.to_str().ok()),
        "body": String::from_utf8_lossy(&body),
    });
    Response::builder()
        .status(StatusCode::IM_A_TEAPOT)
        .header("x-inner", "yes")
        .header("content-type", "application/x-inner")
        .body(Body::from(seen.to_string()))
        .expect("a response")
}

fn inner_app() -> Router {
    Router::new()
        .route("/", get(|| async { "the app's own page" }))
        .route("/plain-404", get(|| async { StatusCode::NOT_FOUND }))
        .fallback(echo)
}

async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Status, the headers that matter, and body of one request.
async fn exchange(
    http: &reqwest::Client,
    addr: SocketAddr,
    method: reqwest::Method,
    path: &str,
) -> (
    StatusCode,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
) {
    let response = http
        .request(method, format!("http://{addr}{path}"))
        .header("x-echo", "hello")
        .header("x-user", "ann")
        .header("content-type", "application/json")
        .body(r#"{"client":"tab1","messages":[{"id":"m-1","event":"e"}]}"#)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("a response");
    let header = |headers: &HeaderMap, name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let headers = response.headers().clone();
    (
        StatusCode::from_u16(response.status().as_u16()).expect("status"),
        header(&headers, "x-inner"),
        header(&headers, "content-type"),
        header(&headers, "allow"),
        response.text().await.expect("body"),
    )
}

#[tokio::test]
async fn requests_off_the_route_reach_the_inner_app_untouched() {
    let (layer, _io) = SimpleIoLayer::builder()
        .identity(header_identity)
        .hold_time(Duration::from_millis(300))
        .build();
    let bare = serve(inner_app()).await;
    let layered = serve(inner_app().layer(layer)).await;
    let http = reqwest::Client::new();

    let paths = [
        "/",
        "/?client=tab1",
        "/plain-404",
        "/simpleio/other",
        "/simpleio/",
        "/simpleiox",
        "/simpleiox?client=tab1&cursor=1",
        "/SIMPLEIO",
        "/x/simpleio",
        "/other?client=tab1",
    ];
    let methods = [
        reqwest::Method::GET,
        reqwest::Method::POST,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ];
    for path in paths {
        for method in methods.clone() {
            let expected = exchange(&http, bare, method.clone(), path).await;
            let got = exchange(&http, layered, method.clone(), path).await;
            assert_eq!(got, expected, "{method} {path}");
        }
    }

    // The inner app saw the request as sent.
    let (status, inner, _, _, body) =
        exchange(&http, layered, reqwest::Method::POST, "/simpleiox?a=1").await;
    assert_eq!(status, StatusCode::IM_A_TEAPOT);
    assert_eq!(inner.as_deref(), Some("yes"));
    let seen: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        seen,
        json!({
            "method": "POST",
            "uri": "/simpleiox?a=1",
            "x-echo": "hello",
            "content-type": "application/json",
            "body": r#"{"client":"tab1","messages":[{"id":"m-1","event":"e"}]}"#,
        })
    );
    // The route itself is the layer's.
    let (status, inner, ..) = exchange(&http, layered, reqwest::Method::PUT, "/simpleio").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(inner, None);
}

#[tokio::test]
async fn the_test_servers_own_page_and_unknown_paths_pass_through() {
    let server = TestServer::start(SimpleIoLayer::builder()).await;
    let http = reqwest::Client::new();
    let page = http.get(server.base()).send().await.expect("a response");
    assert_eq!(page.status(), 200);
    assert_eq!(page.text().await.expect("body"), "the app's own page");
    for path in ["/simpleio/other", "/simpleiox", "/simpleio/"] {
        let response = http
            .get(format!("{}{path}", server.base()))
            .header("x-user", "ann")
            .send()
            .await
            .expect("a response");
        assert_eq!(response.status(), 404, "{path}");
        assert_eq!(
            response.text().await.expect("body"),
            "",
            "{path}: axum's 404"
        );
    }
}

#[tokio::test]
async fn a_custom_path_moves_the_route() {
    let (layer, _io) = SimpleIoLayer::builder()
        .path("/rt/messages")
        .identity(header_identity)
        .hold_time(Duration::from_millis(300))
        .build();
    let addr = serve(inner_app().layer(layer)).await;
    let http = reqwest::Client::new();

    let (status, inner, ..) = exchange(&http, addr, reqwest::Method::GET, "/simpleio").await;
    assert_eq!(
        (status, inner.as_deref()),
        (StatusCode::IM_A_TEAPOT, Some("yes"))
    );
    let batch = Wire::at(format!("http://{addr}/rt/messages"))
        .get(Some("ann"), "client=tab1")
        .await
        .batch();
    assert!(batch.messages.is_empty());
}

#[tokio::test]
async fn the_layer_works_around_a_bare_hyper_service() {
    let (layer, io) = SimpleIoLayer::builder()
        .identity(header_identity)
        .hold_time(Duration::from_millis(300))
        .handler(service_fn(|msg: Incoming| async move {
            Ok::<_, BoxError>(Reply::json(&format!("got {}", msg.event))?)
        }))
        .build();
    let inner = service_fn(|request: Request<hyper::body::Incoming>| async move {
        let path = request.uri().path().to_owned();
        let body = match request.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => Bytes::from_static(b"<unreadable>"),
        };
        let text = format!("inner: {path} {}", String::from_utf8_lossy(&body));
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
    });
    let service = ServiceBuilder::new().layer(layer).service(inner);

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });

    // Off the route: the inner service, body and all.
    let http = reqwest::Client::new();
    let response = http
        .post(format!("http://{addr}/elsewhere"))
        .body("payload")
        .send()
        .await
        .expect("a response");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.text().await.expect("body"),
        "inner: /elsewhere payload"
    );

    // On the route: simpleio, both ways.
    let wire = Wire::at(format!("http://{addr}/simpleio"));
    let mut tab = wire.tab("ann", "tab1");
    let sending = start(io.to_user("ann").emit("news", &1)).await;
    assert_eq!(tab.receive().await.data(), [json!(1)]);
    tab.receive().await;
    assert!(finish(sending, "the emit through hyper").await.is_ok());
    let acks = tab.send(json!([{"id": "tab1-1", "event": "hello"}])).await;
    assert_eq!(acks, [json!({"id": "tab1-1", "reply": "got hello"})]);
    wire.request(reqwest::Method::PUT, Some("ann"), "", None, Vec::new())
        .await
        .assert_error(405, "method_not_allowed");
}

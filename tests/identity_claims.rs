//! Identity with claims, over real HTTP: the identity function may return an `Identity` with
//! extensions (roles, a token's claims), which reach handlers (`Extension<T>`) and namespace
//! authorization (`Parts::extensions`); so do the extensions layers outside simpleio put in the
//! request. A named `async fn` whose future borrows the request's parts works as the identity
//! function.

mod support;

use std::time::Duration;

use axum::Router;
use http::request::Parts;
use serde_json::{Value, json};
use simpleio::events::{Data, Events, Extension};
use simpleio::{HandlerError, Identity, Namespace, Rejection, SimpleIoLayer, UserId};
use support::server::RunningApp;
use support::wire::Wire;

/// What the identity function learnt about the user.
#[derive(Clone, Debug, PartialEq)]
struct Roles(Vec<&'static str>);

/// A named async fn, its future borrowing `parts` across an `.await`: the user from the
/// `x-user` header, and `mia` a moderator.
async fn identity(parts: &Parts) -> Result<Identity, Rejection> {
    // Some async work (a session store, a key fetch) before the parts are read.
    tokio::task::yield_now().await;
    let user = parts
        .headers
        .get("x-user")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Rejection::unauthorized("missing x-user header"))?;
    let roles = if user == "mia" {
        Roles(vec!["moderator"])
    } else {
        Roles(vec![])
    };
    Ok(Identity::new(user).with_extension(roles))
}

/// A plain named async fn naming only the user, as before identities had claims.
async fn plain_identity(parts: &Parts) -> Result<UserId, Rejection> {
    tokio::task::yield_now().await;
    parts
        .headers
        .get("x-user")
        .and_then(|v| v.to_str().ok())
        .map(UserId::from)
        .ok_or_else(|| Rejection::unauthorized("missing x-user header"))
}

/// Only moderators may use `/mod`; the roles come from the identity, through the parts.
fn moderators_only(parts: &Parts, _: &UserId) -> std::future::Ready<Result<(), Rejection>> {
    let allowed = parts
        .extensions
        .get::<Roles>()
        .is_some_and(|roles| roles.0.contains(&"moderator"));
    std::future::ready(if allowed {
        Ok(())
    } else {
        Err(Rejection::forbidden("moderators only"))
    })
}

async fn roles(Extension(roles): Extension<Roles>) -> simpleio::events::Json<Vec<&'static str>> {
    simpleio::events::Json(roles.0)
}

async fn ban(
    Extension(roles): Extension<Roles>,
    Data(who): Data<String>,
) -> Result<String, HandlerError> {
    if !roles.0.contains(&"moderator") {
        return Err(HandlerError::new("forbidden", "only moderators may ban"));
    }
    Ok(format!("{who} is banned"))
}

/// An app whose simpleio layer is built from `builder`, served on loopback.
async fn serve(builder: simpleio::Builder, outer: impl FnOnce(Router) -> Router) -> RunningApp {
    let (layer, _io) = builder
        .hold_time(Duration::from_millis(300))
        .recheck_interval(Duration::from_secs(20))
        .build();
    RunningApp::start(outer(Router::new().layer(layer))).await
}

fn message(id: &str, event: &str, data: Value) -> Value {
    json!({"id": id, "event": event, "data": data})
}

#[tokio::test]
async fn claims_from_the_identity_function_reach_the_handler() {
    let events: Events = Events::new().on("roles", roles).on("ban", ban);
    let app = serve(
        SimpleIoLayer::builder().identity(identity).handler(events),
        |r| r,
    )
    .await;
    let wire = Wire::at(app.url("/simpleio"));

    let mia = wire
        .tab("mia", "c1")
        .send(json!([
            message("m1", "roles", Value::Null),
            message("m2", "ban", json!("bob")),
        ]))
        .await;
    let ann = wire
        .tab("ann", "c1")
        .send(json!([
            message("m1", "roles", Value::Null),
            message("m2", "ban", json!("bob")),
        ]))
        .await;

    assert_eq!(mia[0]["reply"], json!(["moderator"]));
    assert_eq!(mia[1]["reply"], json!("bob is banned"));
    assert_eq!(ann[0]["reply"], json!([]));
    assert_eq!(ann[1]["error"]["code"], "forbidden");
}

#[tokio::test]
async fn claims_from_the_identity_function_reach_namespace_authorization() {
    let events: Events = Events::new().on("ping", || async { "pong" });
    let builder = SimpleIoLayer::builder().identity(identity).namespace(
        Namespace::new("/mod")
            .authorize(moderators_only)
            .handler(events),
    );
    let app = serve(builder, |r| r).await;
    let wire = Wire::at(app.url("/simpleio"));
    let in_mod = json!([{"id": "m1", "event": "ping", "ns": "/mod"}]);

    let mia_polls = wire.get(Some("mia"), "client=c1&ns=/mod").await;
    let ann_polls = wire.get(Some("ann"), "client=c1&ns=/mod").await;
    let mia_sends = wire.tab("mia", "c1").send(in_mod.clone()).await;
    let ann_sends = wire.tab("ann", "c1").send(in_mod).await;

    assert_eq!(mia_polls.status, 200, "{}", mia_polls.text);
    ann_polls.assert_error(403, "forbidden");
    assert_eq!(mia_sends[0]["reply"], json!("pong"));
    assert_eq!(
        ann_sends[0]["error"],
        json!({"code": "forbidden", "message": "moderators only"})
    );
}

#[tokio::test]
async fn a_named_async_fn_returning_a_user_id_works_as_the_identity_function() {
    let events: Events = Events::new().on("whoami", |user: UserId| async move { user.to_string() });
    let app = serve(
        SimpleIoLayer::builder()
            .identity(plain_identity)
            .handler(events),
        |r| r,
    )
    .await;
    let wire = Wire::at(app.url("/simpleio"));

    let acks = wire
        .tab("ann", "c1")
        .send(json!([message("m1", "whoami", Value::Null)]))
        .await;
    let refused = wire.get(None, "client=c1").await;

    assert_eq!(acks[0]["reply"], json!("ann"));
    refused.assert_error(401, "unauthorized");
}

/// What a layer outside simpleio (a session layer, say) put in the request.
#[derive(Clone, Debug)]
struct Session(&'static str);

#[tokio::test]
async fn extensions_of_layers_outside_simpleio_reach_the_handler_beside_the_claims() {
    let events: Events = Events::new().on(
        "session",
        |Extension(session): Extension<Session>, Extension(roles): Extension<Roles>| async move {
            format!("{} with {} roles", session.0, roles.0.len())
        },
    );
    let app = serve(
        SimpleIoLayer::builder().identity(identity).handler(events),
        // Outside the simpleio layer, so it runs first and its extension is in the request.
        |r| r.layer(axum::Extension(Session("session-42"))),
    )
    .await;
    let wire = Wire::at(app.url("/simpleio"));

    let acks = wire
        .tab("mia", "c1")
        .send(json!([message("m1", "session", Value::Null)]))
        .await;

    assert_eq!(acks[0]["reply"], json!("session-42 with 1 roles"));
}

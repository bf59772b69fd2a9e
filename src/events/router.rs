//! [`Events`]: a handler per event name, and a fallback, as one `tower::Service<Incoming>`.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{BoxError, Service, ServiceExt};

use super::{Handler, HandlerFuture};
use crate::handler::{BoxHandler, HandlerError, Incoming, Reply};
use crate::hash::HashMap;
use crate::namespace::box_handler;

/// The code of the error acknowledgement for an event no handler takes, when the router has no
/// fallback.
pub const UNKNOWN_EVENT: &str = "unknown_event";

/// Routes each client message to the handler of its event: Socket.IO's `socket.on(event, …)`.
///
/// A handler is an async function whose arguments are extractors (see the
/// [module docs](super)); a message whose event has none goes to the
/// [fallback](Self::fallback), or is refused with the error acknowledgement `unknown_event`.
/// The router is itself a `tower::Service<Incoming>`: give it to
/// [`Builder::handler`](crate::Builder::handler) or to a
/// [`Namespace`](crate::Namespace::handler), and wrap it in Tower layers like any service.
///
/// `S` is the state its handlers take with [`State<S>`](super::State); a router with state
/// becomes a service once given it, with [`with_state`](Self::with_state).
///
/// ```
/// use serde::Deserialize;
/// use simpleio::events::{Data, Events, State};
/// use simpleio::{HandlerError, SimpleIo, SimpleIoLayer, UserId};
///
/// #[derive(Clone)]
/// struct App {
///     motd: &'static str,
/// }
///
/// #[derive(Deserialize)]
/// struct Chat {
///     text: String,
/// }
///
/// async fn chat(user: UserId, io: SimpleIo, Data(chat): Data<Chat>) -> Result<(), HandlerError> {
///     let sent = io.everyone().emit("chat", &(user, chat.text)).stored().await;
///     sent.map(drop).map_err(|e| HandlerError::new("not_sent", e.to_string()))
/// }
///
/// async fn motd(State(app): State<App>) -> &'static str {
///     app.motd
/// }
///
/// let events = Events::new()
///     .on("chat", chat)
///     .on("motd", motd)
///     .with_state(App { motd: "be kind" });
/// let (layer, io) = SimpleIoLayer::builder().handler(events).build();
/// # let _ = (layer, io);
/// ```
#[must_use = "give the router to `Builder::handler` or `Namespace::handler`"]
pub struct Events<S = ()> {
    /// Shared by every clone: the layer clones its handler for each message.
    routes: Arc<HashMap<Box<str>, Endpoint<S>>>,
    fallback: Option<Endpoint<S>>,
}

/// One event's handler, its state still to be given.
type Endpoint<S> = Arc<dyn Route<S>>;

/// What the router calls: a handler function, a service, or either with its state bound.
trait Route<S>: Send + Sync + 'static {
    fn call(&self, msg: Incoming, state: S) -> HandlerFuture;
}

/// A handler function; `T` names its arguments.
struct FnRoute<H, T> {
    handler: H,
    _args: PhantomData<fn() -> T>,
}

impl<H, T, S> Route<S> for FnRoute<H, T>
where
    H: Handler<T, S>,
    T: 'static,
{
    fn call(&self, msg: Incoming, state: S) -> HandlerFuture {
        self.handler.clone().call(msg, state)
    }
}

/// A `tower::Service<Incoming>`: it has no use for the state.
struct ServiceRoute(BoxHandler);

impl<S> Route<S> for ServiceRoute {
    fn call(&self, msg: Incoming, _: S) -> HandlerFuture {
        // A clone per call, as the layer does for its handler: each call readies its own.
        Box::pin(self.0.clone().oneshot(msg))
    }
}

/// A route and its state, for a router that was given it.
struct Bound<S> {
    route: Endpoint<S>,
    state: S,
}

impl<S: Clone + Send + Sync + 'static> Route<()> for Bound<S> {
    fn call(&self, msg: Incoming, (): ()) -> HandlerFuture {
        self.route.call(msg, self.state.clone())
    }
}

impl<S: Clone + Send + Sync + 'static> Events<S> {
    /// A router with no events yet.
    pub fn new() -> Self {
        Events {
            routes: Arc::new(HashMap::default()),
            fallback: None,
        }
    }

    /// Handles `event` with `handler`, an async function of extractors. A second handler for
    /// one event replaces the first.
    ///
    /// ```
    /// use simpleio::events::{Data, Events};
    ///
    /// let events: Events = Events::new()
    ///     .on("ping", || async { "pong" })
    ///     .on("double", |Data(n): Data<i64>| async move { n.to_string().repeat(2) });
    /// # let _ = events;
    /// ```
    pub fn on<H, T>(self, event: impl Into<Box<str>>, handler: H) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        self.route(
            event.into(),
            Arc::new(FnRoute {
                handler,
                _args: PhantomData,
            }),
        )
    }

    /// Handles `event` with a `tower::Service<Incoming>`, as
    /// [`Builder::handler`](crate::Builder::handler) takes: for Tower layers that apply to
    /// this event alone (timeouts, concurrency limits), around a handler function (see
    /// [`Handler::with_state`]) or any service.
    ///
    /// ```
    /// use simpleio::events::Events;
    /// use simpleio::{Incoming, Reply};
    /// use tower::{BoxError, ServiceBuilder, service_fn};
    ///
    /// let upload = ServiceBuilder::new()
    ///     .concurrency_limit(4)
    ///     .service(service_fn(|msg: Incoming| async move {
    ///         Ok::<_, BoxError>(Reply::json(&msg.data.get().len())?)
    ///     }));
    /// let events: Events = Events::new().on_service("upload", upload);
    /// # let _ = events;
    /// ```
    pub fn on_service<Svc, R>(self, event: impl Into<Box<str>>, service: Svc) -> Self
    where
        Svc: Service<Incoming, Response = R> + Clone + Send + Sync + 'static,
        Svc::Error: Into<BoxError>,
        Svc::Future: Send + 'static,
        R: Into<Reply> + 'static,
    {
        self.route(event.into(), Arc::new(ServiceRoute(box_handler(service))))
    }

    /// Handles every event that has no handler of its own (else they are refused with
    /// `unknown_event`). The [`Event`](super::Event) extractor names the event.
    ///
    /// ```
    /// use simpleio::events::{Event, Events};
    ///
    /// let events: Events = Events::new()
    ///     .on("ping", || async { "pong" })
    ///     .fallback(|Event(name): Event| async move { format!("ignored {name}") });
    /// # let _ = events;
    /// ```
    pub fn fallback<H, T>(mut self, handler: H) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        self.fallback = Some(Arc::new(FnRoute {
            handler,
            _args: PhantomData,
        }));
        self
    }

    /// Gives the router its state, which handlers take with [`State`](super::State); the
    /// result is a service, ready for [`Builder::handler`](crate::Builder::handler). Each
    /// message gets a clone of `state`: keep it cheap to clone (an `Arc`, a pool).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use simpleio::events::{Events, State};
    ///
    /// let names = Arc::new(vec!["ann", "bob"]);
    /// let events = Events::new()
    ///     .on("names", |State(names): State<Arc<Vec<&'static str>>>| async move {
    ///         names.join(", ")
    ///     })
    ///     .with_state(names);
    /// # let (_layer, _io) = simpleio::SimpleIoLayer::builder().handler(events).build();
    /// ```
    pub fn with_state(self, state: S) -> Events<()> {
        let bind = |route: &Endpoint<S>| -> Endpoint<()> {
            Arc::new(Bound {
                route: route.clone(),
                state: state.clone(),
            })
        };
        Events {
            routes: Arc::new(
                self.routes
                    .iter()
                    .map(|(event, route)| (event.clone(), bind(route)))
                    .collect(),
            ),
            fallback: self.fallback.as_ref().map(bind),
        }
    }

    fn route(mut self, event: Box<str>, route: Endpoint<S>) -> Self {
        // Unshared while the router is being built, so this copies nothing then.
        Arc::make_mut(&mut self.routes).insert(event, route);
        self
    }
}

impl<S: Clone + Send + Sync + 'static> Default for Events<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Clone for Events<S> {
    fn clone(&self) -> Self {
        Events {
            routes: self.routes.clone(),
            fallback: self.fallback.clone(),
        }
    }
}

impl<S> fmt::Debug for Events<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut events: Vec<&str> = self.routes.keys().map(|e| &**e).collect();
        events.sort_unstable();
        f.debug_struct("Events")
            .field("events", &events)
            .field("fallback", &self.fallback.is_some())
            .finish()
    }
}

impl Service<Incoming> for Events<()> {
    type Response = Reply;
    type Error = BoxError;
    type Future = HandlerFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Each route readies itself in its call: which one is known only from the message.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, msg: Incoming) -> HandlerFuture {
        match self
            .routes
            .get(msg.event.as_str())
            .or(self.fallback.as_ref())
        {
            Some(route) => route.call(msg, ()),
            None => {
                tracing::debug!(event = ?msg.event, namespace = ?msg.namespace,
                    "a client message has an event with no handler, and the router no fallback");
                let refusal = HandlerError::new(
                    UNKNOWN_EVENT,
                    format!("no handler for the event {:?} here", msg.event),
                );
                Box::pin(std::future::ready(Err(refusal.into())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tower::ServiceExt;

    use super::*;
    use crate::events::{Event, State};
    use crate::handler::null;
    use crate::id::{ClientId, MessageId, UserId};

    fn message(event: &str) -> Incoming {
        let (_layer, io) = crate::SimpleIoLayer::builder().build();
        Incoming {
            user: UserId::from("ann"),
            client: ClientId::new("c1").expect("a client id"),
            id: MessageId::new("m1").expect("a message id"),
            namespace: Arc::from("/"),
            event: event.to_owned(),
            data: null(),
            io,
            extensions: http::Extensions::new(),
        }
    }

    async fn reply(events: &Events, event: &str) -> Result<String, String> {
        match events.clone().oneshot(message(event)).await {
            Ok(reply) => Ok(reply.into_raw().get().to_owned()),
            Err(e) => Err(e
                .downcast_ref::<HandlerError>()
                .map(|e| e.code.clone())
                .unwrap_or_else(|| e.to_string())),
        }
    }

    #[test]
    fn the_router_and_its_handler_services_are_send_and_sync() {
        fn assert_service<T: Send + Sync + Clone + 'static>() {}
        assert_service::<Events>();
        async fn handler(State(n): State<u8>) -> String {
            n.to_string()
        }
        fn service_of<H: Handler<T, u8>, T: 'static>(h: H) -> impl Send + Sync + Clone + 'static {
            h.with_state(1)
        }
        let _ = service_of(handler);
    }

    #[tokio::test]
    async fn a_handler_of_its_own_goes_before_the_fallback() {
        let events: Events = Events::new()
            .on("ping", || async { "pong" })
            .fallback(|Event(name): Event| async move { format!("fallback {name}") });

        assert_eq!(reply(&events, "ping").await, Ok("\"pong\"".to_owned()));
        assert_eq!(
            reply(&events, "other").await,
            Ok("\"fallback other\"".to_owned())
        );
    }

    #[tokio::test]
    async fn a_second_handler_for_one_event_replaces_the_first() {
        let events: Events = Events::new()
            .on("ping", || async { "first" })
            .on("ping", || async { "second" });

        assert_eq!(reply(&events, "ping").await, Ok("\"second\"".to_owned()));
    }

    #[tokio::test]
    async fn the_state_reaches_the_fallback_too() {
        let events = Events::new()
            .on("a", |State(s): State<&'static str>| async move { s })
            .fallback(|State(s): State<&'static str>| async move { format!("{s}!") })
            .with_state("state");

        assert_eq!(reply(&events, "a").await, Ok("\"state\"".to_owned()));
        assert_eq!(reply(&events, "b").await, Ok("\"state!\"".to_owned()));
    }

    #[tokio::test]
    async fn without_a_fallback_an_unknown_event_is_refused() {
        let events: Events = Events::new().on("ping", || async { "pong" });

        assert_eq!(reply(&events, "pong").await, Err(UNKNOWN_EVENT.to_owned()));
    }

    #[test]
    fn a_router_shows_its_events_in_debug_output() {
        let events: Events = Events::new().on("b", || async {}).on("a", || async {});

        assert_eq!(
            format!("{events:?}"),
            r#"Events { events: ["a", "b"], fallback: false }"#
        );
    }
}

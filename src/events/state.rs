//! [`State`]: the application's state, given once to the router.

use std::convert::Infallible;
use std::future::{Future, ready};

use super::FromIncoming;
use crate::handler::Incoming;

/// The router's state (see [`Events::with_state`](super::Events::with_state)), or a part of it
/// (see [`FromRef`]). Cloned for each message: keep it cheap to clone (an `Arc`, a pool).
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use simpleio::events::{Events, State};
///
/// #[derive(Clone, Default)]
/// struct App {
///     visits: Arc<AtomicU64>,
/// }
///
/// async fn visit(State(app): State<App>) -> String {
///     let n = app.visits.fetch_add(1, Ordering::Relaxed) + 1;
///     format!("visit number {n}")
/// }
///
/// let events = Events::new().on("visit", visit).with_state(App::default());
/// # let (_layer, _io) = simpleio::SimpleIoLayer::builder().handler(events).build();
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct State<T>(pub T);

impl<S, T> FromIncoming<S> for State<T>
where
    S: Sync,
    T: FromRef<S> + Send,
{
    type Rejection = Infallible;

    fn from_incoming(
        _: &Incoming,
        state: &S,
    ) -> impl Future<Output = Result<Self, Infallible>> + Send {
        ready(Ok(State(T::from_ref(state))))
    }
}

/// A part of the router's state that handlers may ask for on its own, as `State<Part>`.
///
/// Every `Clone` state is a part of itself.
///
/// ```
/// use simpleio::events::{Events, FromRef, State};
///
/// #[derive(Clone)]
/// struct Db(&'static str);
///
/// #[derive(Clone)]
/// struct App {
///     db: Db,
///     motd: String,
/// }
///
/// impl FromRef<App> for Db {
///     fn from_ref(app: &App) -> Db {
///         app.db.clone()
///     }
/// }
///
/// async fn rows(State(db): State<Db>) -> String {
///     format!("rows from {}", db.0)
/// }
///
/// async fn motd(State(app): State<App>) -> String {
///     app.motd
/// }
///
/// let app = App { db: Db("postgres://…"), motd: "hello".into() };
/// let events = Events::new().on("rows", rows).on("motd", motd).with_state(app);
/// # let (_layer, _io) = simpleio::SimpleIoLayer::builder().handler(events).build();
/// ```
pub trait FromRef<S> {
    /// Takes the part out of the state.
    fn from_ref(state: &S) -> Self;
}

impl<T: Clone> FromRef<T> for T {
    fn from_ref(state: &T) -> T {
        state.clone()
    }
}

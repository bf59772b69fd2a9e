//! [`Handler`]: async functions whose arguments are extractors, as handlers of one event.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower::{BoxError, Service};

use super::{FromIncoming, IntoReply};
use crate::handler::{Incoming, Reply};

/// The future of a handler's call: its extractors, then its body, then its reply.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<Reply, BoxError>> + Send>>;

/// An async function usable as an event's handler: up to 16 arguments, each a
/// [`FromIncoming`] extractor, returning anything [`IntoReply`].
///
/// `T` lists the argument types and `S` is the router's state; both are inferred. You never
/// implement it yourself: write an `async fn` (or a closure returning an `async` block) and pass
/// it to [`Events::on`](super::Events::on).
///
/// ```
/// use simpleio::events::{Data, Events, Handler, State};
/// use simpleio::UserId;
///
/// async fn greet(user: UserId, State(greeting): State<&'static str>, Data(to): Data<String>) -> String {
///     format!("{greeting} {to}, from {user}")
/// }
///
/// fn assert_handler<T, S>(_: impl Handler<T, S>) {}
/// assert_handler::<_, &'static str>(greet);
///
/// let events = Events::new()
///     .on("greet", greet)
///     .on("ping", || async { "pong" })
///     .with_state("hello");
/// # let (_layer, _io) = simpleio::SimpleIoLayer::builder().handler(events).build();
/// ```
///
/// If a function is refused as a handler, check that each argument implements
/// [`FromIncoming`], that the return type implements [`IntoReply`], and that the future is
/// `Send` (nothing like a `MutexGuard` of `std` held across an `.await`).
pub trait Handler<T, S>: Clone + Send + Sync + Sized + 'static {
    /// Makes the arguments from `msg` and `state`, then runs the function.
    fn call(self, msg: Incoming, state: S) -> HandlerFuture;

    /// The handler as a `tower::Service<Incoming>` with its state, for Tower layers that apply
    /// to this event alone (see [`Events::on_service`](super::Events::on_service)).
    ///
    /// ```
    /// use std::time::Duration;
    /// use simpleio::events::{Events, Handler};
    /// use tower::ServiceBuilder;
    ///
    /// async fn report() -> &'static str {
    ///     "a slow report"
    /// }
    ///
    /// let report = ServiceBuilder::new()
    ///     .timeout(Duration::from_secs(2))
    ///     .service(report.with_state(()));
    /// let events: Events = Events::new().on_service("report", report);
    /// # let _ = events;
    /// ```
    fn with_state(self, state: S) -> HandlerService<Self, T, S> {
        HandlerService {
            handler: self,
            state,
            _args: PhantomData,
        }
    }
}

impl<F, Fut, S, R> Handler<(), S> for F
where
    F: FnOnce() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = R> + Send,
    R: IntoReply,
{
    fn call(self, _msg: Incoming, _state: S) -> HandlerFuture {
        Box::pin(async move { self().await.into_reply() })
    }
}

/// Implements [`Handler`] for functions of the arguments listed.
macro_rules! impl_handler {
    ($($arg:ident),+) => {
        impl<F, Fut, S, R, $($arg,)+> Handler<($($arg,)+), S> for F
        where
            F: FnOnce($($arg,)+) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future<Output = R> + Send,
            R: IntoReply,
            S: Send + Sync + 'static,
            $($arg: FromIncoming<S> + Send,)+
        {
            #[allow(non_snake_case)]
            fn call(self, msg: Incoming, state: S) -> HandlerFuture {
                Box::pin(async move {
                    // In order, each from the message: the first that fails answers it, and
                    // the function does not run.
                    $(
                        let $arg = $arg::from_incoming(&msg, &state)
                            .await
                            .map_err(Into::into)?;
                    )+
                    // The message and the state are not the function's: free them before it
                    // runs, since it may run for long.
                    drop((msg, state));
                    self($($arg,)+).await.into_reply()
                })
            }
        }
    };
}

impl_handler!(T1);
impl_handler!(T1, T2);
impl_handler!(T1, T2, T3);
impl_handler!(T1, T2, T3, T4);
impl_handler!(T1, T2, T3, T4, T5);
impl_handler!(T1, T2, T3, T4, T5, T6);
impl_handler!(T1, T2, T3, T4, T5, T6, T7);
impl_handler!(T1, T2, T3, T4, T5, T6, T7, T8);
impl_handler!(T1, T2, T3, T4, T5, T6, T7, T8, T9);
impl_handler!(T1, T2, T3, T4, T5, T6, T7, T8, T9, T10);
impl_handler!(T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11);
impl_handler!(T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12);
impl_handler!(T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12, T13);
impl_handler!(T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12, T13, T14);
impl_handler!(
    T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12, T13, T14, T15
);
impl_handler!(
    T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12, T13, T14, T15, T16
);

/// A [`Handler`] with its state: a `tower::Service<Incoming>`, made by
/// [`Handler::with_state`].
pub struct HandlerService<H, T, S> {
    handler: H,
    state: S,
    // `fn() -> T`: the argument types are only named, never held, so they do not bear on
    // whether the service is `Send` or `Sync`.
    _args: PhantomData<fn() -> T>,
}

impl<H: Clone, T, S: Clone> Clone for HandlerService<H, T, S> {
    fn clone(&self) -> Self {
        HandlerService {
            handler: self.handler.clone(),
            state: self.state.clone(),
            _args: PhantomData,
        }
    }
}

impl<H, T, S> fmt::Debug for HandlerService<H, T, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerService").finish_non_exhaustive()
    }
}

impl<H, T, S> Service<Incoming> for HandlerService<H, T, S>
where
    H: Handler<T, S>,
    S: Clone,
{
    type Response = Reply;
    type Error = BoxError;
    type Future = HandlerFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // A function is always ready; a limit belongs to a layer around it.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, msg: Incoming) -> HandlerFuture {
        self.handler.clone().call(msg, self.state.clone())
    }
}

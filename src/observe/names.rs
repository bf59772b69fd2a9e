//! The names of simpleio's metrics, as the `metrics` facade receives them. The guide's
//! "Observability" section has the table of their types, labels and meaning.
//!
//! ```
//! assert_eq!(simpleio::metrics::POLLS_WAITING, "simpleio_polls_waiting");
//! ```

/// Gauge: polls waiting on this node now.
pub const POLLS_WAITING: &str = "simpleio_polls_waiting";
/// Counter, labels `method` and `outcome` (`ok` or the error body's `code`): requests answered
/// on the route.
pub const REQUESTS: &str = "simpleio_requests_total";
/// Gauge: users with a live client, storage-wide (counted every reaper tick).
pub const LIVE_USERS: &str = "simpleio_live_users";
/// Gauge: live clients, storage-wide (counted every reaper tick, up to [`CENSUS_MAX_USERS`]
/// users; left as it was beyond).
pub const LIVE_CLIENTS: &str = "simpleio_live_clients";
/// Counter: clients that became live with a poll on this node.
pub const CLIENTS_ARRIVED: &str = "simpleio_clients_arrived_total";
/// Counter: clients this node's reaper removed (their presence TTL passed).
pub const CLIENTS_DEPARTED: &str = "simpleio_clients_departed_total";
/// Counter: messages stored, one per recipient.
pub const MESSAGES_STORED: &str = "simpleio_messages_stored_total";
/// Counter: stored messages confirmed by their recipient, as their sender on this node learnt.
pub const MESSAGES_DELIVERED: &str = "simpleio_messages_delivered_total";
/// Counter: stored messages that expired unconfirmed, as their sender on this node learnt.
pub const MESSAGES_EXPIRED: &str = "simpleio_messages_expired_total";
/// Counter: stored messages lost with the storage's data (its epoch changed).
pub const MESSAGES_LOST: &str = "simpleio_messages_lost_total";
/// Counter: volatile messages published, one per send.
pub const MESSAGES_VOLATILE: &str = "simpleio_messages_volatile_total";
/// Histogram, seconds: from a send's store to the confirmation of its last recipient.
pub const DELIVERY_SECONDS: &str = "simpleio_delivery_seconds";
/// Counter, label `state` (`done`, `in_progress`): client messages met again within the dedup
/// window, so not handled again.
pub const DEDUP_HITS: &str = "simpleio_dedup_hits_total";
/// Histogram, seconds, label `event`: how long the handler took per client message.
pub const HANDLER_SECONDS: &str = "simpleio_handler_seconds";
/// Counter, labels `event` and `kind` (`refused`, `failed`, `storage`): handler errors.
pub const HANDLER_ERRORS: &str = "simpleio_handler_errors_total";
/// Histogram, seconds, label `op` (the [`Storage`](crate::Storage) method): storage calls.
pub const STORAGE_SECONDS: &str = "simpleio_storage_seconds";
/// Counter, labels `op` and `kind` (`unavailable`, `corrupt`): storage calls that failed.
pub const STORAGE_ERRORS: &str = "simpleio_storage_errors_total";
/// Counter, label `kind` (`appended`, `confirmed`, `completed`, `volatile`, `poll_started`,
/// `resync`): signals this node received from the storage.
pub const SIGNALS_RECEIVED: &str = "simpleio_signals_received_total";
/// Counter: signals this node missed because it fell behind (each time, every waiter re-reads).
pub const SIGNALS_LAGGED: &str = "simpleio_signals_lagged_total";
/// Counter, label `bound` (the builder setting's name, e.g. `max_polls`, `max_queue`): requests
/// or sends a bound refused.
pub const BOUNDS_HIT: &str = "simpleio_bounds_hit_total";
/// Gauge, label `bound`: each bound's configured value, to divide a depth by.
pub const BOUND: &str = "simpleio_bound";
/// Gauge: presence changes queued for the application's handler (bound `max_presence_queue`).
pub const PRESENCE_QUEUE: &str = "simpleio_presence_queue_depth";
/// Histogram: per append (a send, or one chunk of a fan-out), the most messages any of its
/// recipients then holds in their queue (bound `max_queue`, see [`BOUND`]): how near the
/// fullest queues come to it, before sends are refused.
pub const QUEUE_DEPTH: &str = "simpleio_queue_depth";

/// The most live users whose clients the census counts for [`LIVE_CLIENTS`] (one storage call
/// per user); beyond it only [`LIVE_USERS`] is counted.
pub const CENSUS_MAX_USERS: usize = 1_000;

/// The most distinct `event` label values per node: events past them are counted as `_other`,
/// since clients choose event names and a label must not grow without end.
pub const MAX_EVENT_LABELS: usize = 64;

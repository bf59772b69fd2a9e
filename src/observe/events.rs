//! Handler metrics per event, with a bounded set of `event` label values: clients choose event
//! names, and a label that took every one would grow the recorder without end.

use std::time::Duration;

#[cfg(feature = "metrics")]
use std::sync::Mutex;

#[cfg(feature = "metrics")]
use super::handles::{Counter, Histogram};
#[cfg(feature = "metrics")]
use super::names::{HANDLER_ERRORS, HANDLER_SECONDS, MAX_EVENT_LABELS};
#[cfg(feature = "metrics")]
use crate::hash::HashMap;

/// The label value of events past [`MAX_EVENT_LABELS`].
#[cfg(feature = "metrics")]
const OTHER: &str = "_other";

#[derive(Debug, Default)]
pub(super) struct EventMetrics {
    #[cfg(feature = "metrics")]
    events: Mutex<HashMap<Box<str>, EventHandles>>,
}

#[cfg(feature = "metrics")]
#[derive(Debug, Clone)]
struct EventHandles {
    seconds: Histogram,
    refused: Counter,
    failed: Counter,
    storage: Counter,
}

#[cfg(feature = "metrics")]
impl EventHandles {
    fn new(event: &str) -> Self {
        let errors = |kind: &'static str| -> Counter {
            metrics::counter!(HANDLER_ERRORS, "event" => event.to_owned(), "kind" => kind)
        };
        EventHandles {
            seconds: metrics::histogram!(HANDLER_SECONDS, "event" => event.to_owned()),
            refused: errors("refused"),
            failed: errors("failed"),
            storage: errors("storage"),
        }
    }
}

impl EventMetrics {
    #[cfg(feature = "metrics")]
    pub(super) fn handled(&self, event: &str, took: Duration, error: Option<&'static str>) {
        let handles = {
            let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
            let key = if events.contains_key(event) || events.len() < MAX_EVENT_LABELS {
                event
            } else {
                OTHER
            };
            match events.get(key) {
                Some(handles) => handles.clone(),
                None => {
                    let handles = EventHandles::new(key);
                    events.insert(key.into(), handles.clone());
                    handles
                }
            }
        };
        handles.seconds.record(took.as_secs_f64());
        match error {
            Some("refused") => handles.refused.increment(1),
            Some("storage") => handles.storage.increment(1),
            Some(_) => handles.failed.increment(1),
            None => {}
        }
    }

    #[cfg(not(feature = "metrics"))]
    pub(super) fn handled(&self, _event: &str, _took: Duration, _error: Option<&'static str>) {}
}

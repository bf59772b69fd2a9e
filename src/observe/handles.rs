//! The metric handles, real with the `metrics` feature and empty without it, so every
//! instrumentation point reads the same either way and costs nothing when the feature is off.

#[cfg(feature = "metrics")]
pub(crate) use metrics::{Counter, Gauge, Histogram};

#[cfg(feature = "metrics")]
fn labels(labels: &[(&'static str, &'static str)]) -> Vec<metrics::Label> {
    labels
        .iter()
        .map(|(k, v)| metrics::Label::new(*k, *v))
        .collect()
}

/// A counter registered with the recorder installed now (the global one, or a local one in
/// scope): handles are taken once, when the layer is built, so counting is one atomic add.
#[cfg(feature = "metrics")]
pub(crate) fn counter(name: &'static str, l: &[(&'static str, &'static str)]) -> Counter {
    metrics::counter!(name, labels(l))
}

#[cfg(feature = "metrics")]
pub(crate) fn gauge(name: &'static str, l: &[(&'static str, &'static str)]) -> Gauge {
    metrics::gauge!(name, labels(l))
}

#[cfg(feature = "metrics")]
pub(crate) fn histogram(name: &'static str, l: &[(&'static str, &'static str)]) -> Histogram {
    metrics::histogram!(name, labels(l))
}

#[cfg(not(feature = "metrics"))]
pub(crate) use noop::*;

#[cfg(not(feature = "metrics"))]
mod noop {
    /// Counts nothing: the `metrics` feature is off.
    #[derive(Debug, Clone, Default)]
    pub(crate) struct Counter;

    impl Counter {
        #[inline(always)]
        pub(crate) fn increment(&self, _: u64) {}
    }

    /// Measures nothing: the `metrics` feature is off.
    #[derive(Debug, Clone, Default)]
    pub(crate) struct Gauge;

    impl Gauge {
        #[inline(always)]
        pub(crate) fn increment(&self, _: f64) {}
        #[inline(always)]
        pub(crate) fn decrement(&self, _: f64) {}
        #[inline(always)]
        pub(crate) fn set(&self, _: f64) {}
    }

    /// Records nothing: the `metrics` feature is off.
    #[derive(Debug, Clone, Default)]
    pub(crate) struct Histogram;

    impl Histogram {
        #[inline(always)]
        pub(crate) fn record(&self, _: f64) {}
    }

    pub(crate) fn counter(_: &'static str, _: &[(&'static str, &'static str)]) -> Counter {
        Counter
    }

    pub(crate) fn gauge(_: &'static str, _: &[(&'static str, &'static str)]) -> Gauge {
        Gauge
    }

    pub(crate) fn histogram(_: &'static str, _: &[(&'static str, &'static str)]) -> Histogram {
        Histogram
    }
}

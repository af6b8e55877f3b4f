//! A `metrics` recorder for tests: what every counter, gauge and histogram received, by
//! `name{label=value,...}` (labels sorted). [`recorded`] is the process's global one,
//! whatever thread or task records (tests label their own streams, categories or schemas
//! so that they read only their own values); a `Recorded::default()` can also be a
//! thread's local recorder (`metrics::with_local_recorder`).
//!
//! Not `metrics-util`'s `DebuggingRecorder`: its snapshot drains every metric (counters
//! swapped to 0, histograms cleared), so one test reading the global recorder would take
//! the values of the tests running beside it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};

/// What one metric received: counters their total, gauges their last value, histograms how
/// many values and their sum.
#[derive(Default, Debug)]
struct Cell {
    count: AtomicU64,
    /// A histogram's sum, or a gauge's value.
    sum: Mutex<f64>,
}

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        self.count.fetch_add(value, Ordering::SeqCst);
    }
    fn absolute(&self, value: u64) {
        self.count.store(value, Ordering::SeqCst);
    }
}

impl GaugeFn for Cell {
    fn increment(&self, value: f64) {
        *self.sum.lock().unwrap_or_else(|p| p.into_inner()) += value;
    }
    fn decrement(&self, value: f64) {
        *self.sum.lock().unwrap_or_else(|p| p.into_inner()) -= value;
    }
    fn set(&self, value: f64) {
        *self.sum.lock().unwrap_or_else(|p| p.into_inner()) = value;
    }
}

impl HistogramFn for Cell {
    fn record(&self, value: f64) {
        let mut sum = self.sum.lock().unwrap_or_else(|p| p.into_inner());
        *sum += value;
        self.count.fetch_add(1, Ordering::SeqCst);
    }
}

/// The recorder [`recorded`] installs.
#[derive(Default, Debug)]
pub struct Recorded {
    cells: Mutex<BTreeMap<String, Arc<Cell>>>,
}

impl Recorded {
    fn cell(&self, key: &Key) -> Arc<Cell> {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(cells.entry(name).or_default())
    }

    fn get(&self, name: &str) -> Option<Arc<Cell>> {
        let cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        cells.get(name).cloned()
    }

    /// A counter's total, or how many values a histogram received (0 if never recorded).
    pub fn count(&self, name: &str) -> u64 {
        self.get(name).map_or(0, |c| c.count.load(Ordering::SeqCst))
    }

    /// How many values a histogram received, and their sum.
    pub fn histogram(&self, name: &str) -> (u64, f64) {
        self.get(name).map_or((0, 0.0), |c| {
            let sum = *c.sum.lock().unwrap_or_else(|p| p.into_inner());
            (c.count.load(Ordering::SeqCst), sum)
        })
    }
}

impl Recorder for Recorded {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.cell(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.cell(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.cell(key))
    }
}

/// This process's recorder, installed as the global one on first use.
///
/// # Panics
/// If another global recorder was installed first.
pub fn recorded() -> &'static Recorded {
    static RECORDED: OnceLock<&'static Recorded> = OnceLock::new();
    RECORDED.get_or_init(|| {
        let recorded: &'static Recorded = Box::leak(Box::default());
        metrics::set_global_recorder(recorded)
            .expect("no other global metrics recorder in this test process");
        recorded
    })
}

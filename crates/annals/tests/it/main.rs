//! Integration tests of the core crate: the decider runtime over the memory store.

mod decider;

//! Integration tests of the core crate.

mod codec;
mod decider;
mod memory;
mod observe;

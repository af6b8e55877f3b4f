//! Integration tests of the core crate.

mod access;
mod aggregate;
mod codec;
mod decider;
mod memory;
mod observe;
mod shred;

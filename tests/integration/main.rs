//! Integration tests: one binary, sharing the rig.

#[path = "../rig/mod.rs"]
mod rig;

mod operator;
mod rig_api;

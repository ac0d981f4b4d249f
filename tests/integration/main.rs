//! Integration tests: one binary, sharing the rig.

#[path = "../rig/mod.rs"]
mod rig;

mod alerts;
mod binary;
mod block;
mod chart;
mod costs;
mod failover;
mod freeze;
mod generated;
mod hostile;
mod index;
mod object_stores;
mod operator;
mod rbac;
mod region;
mod replication;
mod repository;
mod repository_origin;
mod restore_in_place;
mod rig_api;
mod scenario;
mod source_hold;
mod transcripts;
mod virtual_machine;

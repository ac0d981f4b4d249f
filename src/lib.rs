//! site-recovery: the Azure Site Recovery model (vaults, recovery points, two-phase failover)
//! as a Kubernetes operator.

pub mod agent;
pub mod api;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod controllers;
#[cfg(test)]
mod layers;
pub mod metrics;
pub mod operator;
pub mod repository;
pub mod storage;
pub mod validate;
pub mod vault_access;

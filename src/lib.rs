//! site-recovery: the Azure Site Recovery model (vaults, recovery points, two-phase failover)
//! as a Kubernetes operator.

pub mod api;

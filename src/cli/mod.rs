//! Command-line verbs beyond the operator and agent.

pub mod plugin;
pub mod repo;

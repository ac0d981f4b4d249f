//! Command-line verbs beyond the operator and agent.

pub mod repo;

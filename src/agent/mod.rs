//! `site-recovery agent`: the node agent (the seed's mobility service). This version registers
//! its node: one Lease per node in the operator's namespace, carrying the node's zone and region
//! and the agent's version, renewed well within its duration. The agent never imports the
//! controllers; it talks to them only through the API.

pub mod registration;

pub use registration::{AgentSettings, run};

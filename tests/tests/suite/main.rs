//! The integration suite, one binary so the agent and wasmtime are linked once rather than once per file.

mod crash;
mod daemon;
mod dc_harness;
mod dc_restart;
mod directory;
mod directory_faults;
mod dist;
mod drift;
mod errors;
mod failover;
mod graph_certificate;
mod graph_protocol;
mod least_privilege;
mod operability;
mod pim;
mod plugins;
mod plugins_e2e;
mod security;
mod state_recovery;
mod trust;
mod writeback_core;

//! writeback: writes Microsoft Entra ID groups back into on-premises Active Directory.
//!
//! Data flows one way: [`graph`] (delta reads) → [`state`] (merged cloud state in sled) → [`model`] (the
//! desired groups) → [`plan`] (a pure diff against the directory) → [`directory`] (LDAP apply) → back to
//! [`state`] as a checkpoint. [`sync`] runs that cycle for a tenant; [`cli`] is the command line.

pub mod cli;
pub mod config;
pub mod directory;
pub mod dn;
pub mod graph;
pub mod lease;
pub mod metrics;
pub mod model;
pub mod naming;
pub mod ownership;
pub mod plan;
pub mod plugins;
pub mod progress;
pub mod state;
pub mod status;
pub mod sync;

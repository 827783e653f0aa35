//! writeback: writes Microsoft Entra ID groups back into on-premises Active Directory.
//!
//! Data flows one way: [`graph`] (delta reads) → [`state`] (merged cloud state in sled) → [`model`] (the
//! desired groups) → [`plan`] (a pure diff against the directory) → [`directory`] (LDAP apply) → back to
//! [`state`] as a checkpoint. [`sync`] runs that cycle for a tenant; [`cli`] is the command line.
//!
//! The modules form layers, and a module uses only modules of its own layer or the layers below
//! (`host/tests/architecture.rs` checks it, and that no two modules use each other in a circle):
//!
//! 1. the binary's edge: [`cli`];
//! 2. the cycle: [`sync`];
//! 3. the I/O adapters: [`graph`], [`state`], [`directory`], [`plugins`], [`lease`], [`status`], [`metrics`],
//!    [`progress`];
//! 4. the settings: [`config`];
//! 5. the pure core, which does no I/O: [`cloud`] (the cloud's objects), [`attributes`] (the one table of group
//!    attributes), [`reasons`] (why something is not written), [`dn`], [`ownership`], [`naming`], [`model`],
//!    [`plan`] and [`pim`] (time-bound membership).

pub mod attributes;
pub mod cli;
pub mod cloud;
pub mod config;
pub mod directory;
pub mod dn;
pub mod graph;
pub mod lease;
pub(crate) mod metrics;
pub mod model;
pub mod naming;
pub(crate) mod ownership;
pub mod pim;
pub mod plan;
pub mod plugins;
pub mod progress;
pub mod reasons;
pub mod state;
pub mod status;
pub(crate) mod sync;

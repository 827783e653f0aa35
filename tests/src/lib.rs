//! test support
pub mod dc;
pub mod graphsim;
pub mod e2e;
pub mod agents;
pub mod ldap_proxy;

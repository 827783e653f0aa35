//! test support
pub mod agents;
pub mod dc;
pub mod e2e;
pub mod graphsim;
pub mod ldap_proxy;

//! `nexus-agent-proxy`: the laptop side of Nexus Agent Proxy.
//!
//! It dials out to paired workspaces over pinned mutual TLS, multiplexes every
//! forwarded call on one yamux connection per workspace, and answers each
//! call from laptop resources only as far as the policy allows. All policy
//! decisions are made here, never in the workspace.
#![deny(unsafe_code)]

pub mod approvals;
pub mod audit;
pub mod backoff;
pub mod cli;
pub mod commands;
pub mod config;
pub mod connect;
pub mod control;
pub mod fair;
pub mod keepalive;
mod keyring;
pub mod known_hosts;
pub mod laptop_agent;
pub mod limits;
pub mod pair;
mod prompt;
mod rate;
pub mod reload;
pub mod retries;
pub mod route;
mod secret;
pub mod ssh_cert;
pub mod ssh_wire;
pub mod tools;
pub mod tunnel;

/// Name and version reported to the peer.
pub const SOFTWARE: &str = concat!("nexus-agent-proxy ", env!("CARGO_PKG_VERSION"));

pub use cli::main;

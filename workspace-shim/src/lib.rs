//! `nexus-shim`: the workspace side of Nexus Agent Proxy.
//!
//! One binary, two roles: `nexus-shim serve` is the daemon that accepts the
//! laptop's tunnel and serves local sockets; every other subcommand is a
//! short-lived client of that daemon, used by agents and scripts.
//!
//! The shim makes no policy decision: it never depends on `nexus-policy`.
//! Everything it forwards is decided on the laptop.
#![forbid(unsafe_code)]

pub mod agent;
pub mod cli;
mod client;
mod git_http;
pub mod http;
pub mod ingress;
pub mod keepalive;
pub mod mcp;
pub mod serve;
pub mod setup;
mod sink;
mod sockets;
pub mod state;
pub mod trust;

/// Name and version reported to the peer and in `status`.
pub const SOFTWARE: &str = concat!("nexus-shim ", env!("CARGO_PKG_VERSION"));

pub use cli::main;

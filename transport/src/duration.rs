//! Durations on the command line: the one grammar of
//! [`nexus_protocol::units`], re-exported for both binaries' flags.

pub use nexus_protocol::units::parse_duration;

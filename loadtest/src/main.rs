//! sluice-load: load generator for Sluice and other Phoenix Channels servers (in progress).

fn main() {}

//! File streaming building blocks (issue 3, in progress).
//!
//! * [`plan`]: which chunks a download sends, pure.
//! * [`paths`]: resolving a client-supplied file name under a root without
//!   ever leaving it.

pub mod paths;
pub mod plan;

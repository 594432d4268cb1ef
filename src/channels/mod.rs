//! Built-in channel kinds, one file each.

pub mod echo;
pub mod room;

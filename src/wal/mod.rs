//! The write-ahead log: segment files, appending groups of records, reading them back.

pub(crate) mod reader;
pub(crate) mod sync;
pub(crate) mod writer;

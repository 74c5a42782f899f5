//! Operator tools on top of the engine: read-only inspection and verification, backups and
//! restores of closed stores, and repair. Each works through the public `Db` API or the crate's
//! own recovery on the storage seam, never the reverse: the engine does not depend on them.

pub(crate) mod backup;
pub mod inspect;
pub(crate) mod repair;

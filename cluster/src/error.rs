//! sessiondb's and the snapshot file's errors as openraft's storage errors.

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageError, StorageIOError};

use crate::NodeId;

pub(crate) type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// An error of `subject` while doing `verb`, with its message (and source chain).
pub(crate) fn io<E: std::error::Error + 'static>(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
) -> impl FnOnce(E) -> StorageError<NodeId> {
    move |e| StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

/// An error with only a message.
pub(crate) fn message(subject: ErrorSubject<NodeId>, verb: ErrorVerb, msg: impl Into<String>) -> StorageError<NodeId> {
    StorageIOError::new(subject, verb, AnyError::error(msg.into())).into()
}

//! What the models write: a batch of puts and deletes.

use sessiondb::Batch;

/// One operation of a batch: a key with its value (a put), or with `None` (a delete).
pub type PutOrDelete = (Vec<u8>, Option<Vec<u8>>);

/// The batch of `ops`, in order.
pub fn batch_of(ops: &[PutOrDelete]) -> Batch {
    let mut b = Batch::new();
    for (k, v) in ops {
        match v {
            Some(v) => b.put(k, v),
            None => b.delete(k),
        };
    }
    b
}

//! openraft's own storage test suite (`openraft::testing::Suite`, 0.9) against the log store
//! and the state machine on sessiondb: votes, log state, reads, appends, truncation, purge,
//! applied state and membership, apply, and a snapshot built on one state machine and
//! installed on another (a sessiondb backup, restored).

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use sessiondb_cluster::{LogStore, NodeId, StateMachine, TypeConfig};

struct OnSessiondb;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for OnSessiondb {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir()
            .map_err(|e| StorageError::from_io_error(openraft::ErrorSubject::Store, openraft::ErrorVerb::Write, e))?;
        let log = LogStore::open(dir.path().join("log"))?;
        let sm = StateMachine::open(dir.path())?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    if let Err(e) = Suite::test_all(OnSessiondb) {
        panic!("openraft's storage suite: {e}");
    }
}

//! The raft log's bytes of a request, as docs/cluster.md ("On disk") describes them: a
//! variant number, then the fields in order; integers as bincode's variable-length integers,
//! keys and values as a length and their bytes, an `Option` as 0, or 1 and the value.

use sessiondb_cluster::{codec, Request};

#[test]
fn requests_encode_as_documented() {
    let put = Request::Put {
        key: b"k".to_vec(),
        value: b"vv".to_vec(),
        expires_at_ms: 5,
    };
    assert_eq!(codec::encode(&put).unwrap(), [0, 1, b'k', 2, b'v', b'v', 5]);
    let delete = Request::Delete { key: b"k".to_vec() };
    assert_eq!(codec::encode(&delete).unwrap(), [1, 1, b'k']);
    let touch = Request::Touch {
        key: b"k".to_vec(),
        now_ms: 7,
        expires_at_ms: 9,
    };
    assert_eq!(codec::encode(&touch).unwrap(), [2, 1, b'k', 7, 9]);
    let cas = Request::CompareAndSwap {
        key: b"k".to_vec(),
        now_ms: 7,
        expected: Some(3),
        value: b"v".to_vec(),
        expires_at_ms: 0,
    };
    assert_eq!(codec::encode(&cas).unwrap(), [3, 1, b'k', 7, 1, 3, 1, b'v', 0]);
    let batch = Request::Batch(vec![delete.clone(), delete]);
    assert_eq!(codec::encode(&batch).unwrap(), [4, 2, 1, 1, b'k', 1, 1, b'k']);
    // Each decodes back, and bytes after a value are refused.
    for r in [put, touch, cas, batch] {
        let bytes = codec::encode(&r).unwrap();
        assert_eq!(codec::decode::<Request>(&bytes).unwrap(), r);
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(codec::decode::<Request>(&longer).is_err());
    }
}

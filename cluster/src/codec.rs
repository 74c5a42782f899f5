//! The cluster's binary encoding: bincode 2 (standard configuration: little-endian, variable-
//! length integers) over openraft's serde types. It encodes the raft log's values
//! (docs/cluster.md, "On disk") and the raft RPCs between nodes (docs/cluster.md, "HTTP API").
//! JSON stays for what people read (the clients' and operators' replies, the state machine's
//! metadata): a 512-byte value takes about 2 KB as JSON and 3-4x the CPU to encode and decode.
//!
//! Decoding is bounded: every length prefix is checked against [`BYTES_MAX`] before anything
//! is allocated (bincode's `with_limit`; without it a damaged length would abort the process).

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The most bytes one decoded value may claim: a log entry, an RPC.
pub const BYTES_MAX: usize = 64 << 20;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<BYTES_MAX>()
}

/// `v` encoded.
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
    bincode::serde::encode_to_vec(v, config()).map_err(|e| e.to_string())
}

/// The value `bytes` encode, all of them.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let (v, used) = bincode::serde::decode_from_slice(bytes, config()).map_err(|e| e.to_string())?;
    if used != bytes.len() {
        return Err(format!("{} bytes after the value's {used}", bytes.len() - used));
    }
    Ok(v)
}

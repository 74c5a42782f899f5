//! Compiles the library (`../src`) with shuttle's synchronisation primitives (src/sync.rs).
fn main() {
    println!("cargo::rustc-check-cfg=cfg(sessiondb_shuttle)");
    println!("cargo::rustc-cfg=sessiondb_shuttle");
}

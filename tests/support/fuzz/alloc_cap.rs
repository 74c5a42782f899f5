//! A global allocator that aborts on any single allocation larger than [`ALLOC_BYTES_MAX`].
//!
//! The parsers must never allocate what a length field asks for (docs/design.md, docs/reliability.md
//! "Hostile input"): every fuzz input is far smaller than this cap, so an allocation above it
//! can only come from a length read out of the input. libFuzzer's own `-malloc_limit_mb` needs
//! a sanitizer's malloc hooks; this works with `-s none` and under `cargo test` alike. It aborts
//! (never unwinds: an allocator must not) after printing the size, so libFuzzer saves the input.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;

/// The largest single allocation a target may make. A real segment of the fuzzed stores is
/// 64 KiB and a fuzz input at most a few hundred KiB; recovery copies each file once.
pub const ALLOC_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The capped allocator: `#[global_allocator] static A: CapAlloc = CapAlloc;` in each binary.
pub struct CapAlloc;

fn too_large(size: usize) -> ! {
    // NOTE: a fixed buffer, no allocation, while the allocator is refusing one.
    let mut buf = [0u8; 96];
    let mut w = &mut buf[..];
    let _ = writeln!(w, "fuzz: allocation of {size} bytes exceeds the cap");
    let used = 96 - w.len();
    let _ = std::io::stderr().write_all(&buf[..used]);
    std::process::abort();
}

// SAFETY: every call is forwarded unchanged to `System`, after a size check that aborts.
// (The package denies unsafe code; this impl is one of the places allowed.)
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CapAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOC_BYTES_MAX {
            too_large(layout.size());
        }
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOC_BYTES_MAX {
            too_large(layout.size());
        }
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator, with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > ALLOC_BYTES_MAX {
            too_large(new_size);
        }
        // SAFETY: as for `dealloc`; `new_size` is non-zero per the caller's contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

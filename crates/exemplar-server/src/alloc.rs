//! The process's allocator: the system's, with every large block aligned to a cache
//! line.
//!
//! glibc returns large blocks 16 bytes past a page boundary, so every 64-byte vector
//! load from a feature map (AVX-512) straddled two cache lines; the depthwise layers,
//! which stream such loads, are markedly faster on 64-byte-aligned maps
//! (`kernel_timing dw`, one thread).

use std::alloc::{GlobalAlloc, Layout, System};

/// Blocks at least this large are cache-line aligned (smaller ones are not feature
/// maps, and aligning them would waste memory).
const LARGE: usize = 4096;
const CACHE_LINE: usize = 64;

pub struct CacheAligned;

/// The layout the system allocator sees: a function of the caller's layout alone, so
/// a block is freed with the layout it was allocated with.
fn aligned(layout: Layout) -> Layout {
    if layout.size() >= LARGE && layout.align() < CACHE_LINE {
        layout.align_to(CACHE_LINE).unwrap_or(layout)
    } else {
        layout
    }
}

// SAFETY: every call forwards to `System` with `aligned(layout)`, a valid layout at
// least as aligned as the caller's; `dealloc` and `realloc` get the same mapping of the
// layout the block was allocated with, so `System` always sees matching layouts.
unsafe impl GlobalAlloc for CacheAligned {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { System.alloc(aligned(layout)) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe { System.alloc_zeroed(aligned(layout)) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, aligned(layout)) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = aligned(layout);
        let Ok(new) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        if aligned(new).align() == old.align() {
            // Same alignment before and after: the system may grow the block in place.
            unsafe { System.realloc(ptr, old, new_size) }
        } else {
            // Crossing the size threshold changes the alignment: move the block.
            let moved = unsafe { self.alloc(new) };
            if !moved.is_null() {
                unsafe {
                    std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
            }
            moved
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_blocks_are_cache_line_aligned_through_alloc_and_realloc() {
        let a = CacheAligned;
        for size in [LARGE, 100_000, 4 << 20] {
            let layout = Layout::from_size_align(size, 4).unwrap();
            // SAFETY: a non-zero layout; the block is freed with the same layout.
            unsafe {
                let p = a.alloc(layout);
                assert!(!p.is_null());
                assert_eq!(p as usize % CACHE_LINE, 0, "{size} bytes");
                p.write_bytes(7, size);
                // Grow from below the threshold to above it and back: contents kept.
                let q = a.realloc(p, layout, size * 2);
                assert_eq!(q as usize % CACHE_LINE, 0, "{size} bytes grown");
                assert_eq!(*q.add(size - 1), 7);
                let grown = Layout::from_size_align(size * 2, 4).unwrap();
                let r = a.realloc(q, grown, 100);
                assert_eq!(*r.add(99), 7);
                a.dealloc(r, Layout::from_size_align(100, 4).unwrap());
            }
        }
        let small = Layout::from_size_align(100, 4).unwrap();
        // SAFETY: as above.
        unsafe {
            let p = a.alloc(small);
            p.write_bytes(1, 100);
            let q = a.realloc(p, small, 10_000);
            assert_eq!(q as usize % CACHE_LINE, 0, "grown past the threshold");
            assert_eq!(*q.add(99), 1);
            a.dealloc(q, Layout::from_size_align(10_000, 4).unwrap());
        }
    }
}

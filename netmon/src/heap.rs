//! Test-only heap accounting: a global allocator that counts the bytes each thread holds, so a
//! unit test can measure what a structure costs without interference from parallel tests.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
};

struct Counting;

thread_local! {
    // const-initialised and without a destructor: touching it never allocates, which an
    // allocator's own bookkeeping must not do.
    static HELD: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn add(n: isize) {
    // During thread teardown the slots may be gone: those bytes are not the test's.
    let _ = HELD.try_with(|h| {
        let now = h.get() + n;
        h.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

// SAFETY: every call is forwarded to `System` unchanged; only a counter is updated beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed through.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            add(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed through.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            add(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed through.
        unsafe { System.dealloc(ptr, layout) };
        add(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract is passed through.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            add(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Bytes the current thread has allocated and not freed (frees of other threads' blocks count
/// against the freeing thread).
pub fn held() -> isize {
    HELD.with(Cell::get)
}

/// What `f` allocated on this thread: what it left allocated, and the most it held at once
/// on the way, both relative to before the call.
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, Heap) {
    let before = held();
    PEAK.with(|p| p.set(before));
    let out = f();
    let peak = PEAK.with(Cell::get);
    (
        out,
        Heap {
            retained: held() - before,
            peak: peak - before,
        },
    )
}

#[derive(Clone, Copy, Debug)]
pub struct Heap {
    pub retained: isize,
    pub peak: isize,
}

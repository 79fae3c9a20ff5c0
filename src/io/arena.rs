//! One page-aligned allocation per reactor, cut into equal buffers. Data is read into a buffer
//! and written from the same buffer: nothing is copied in user space.

use std::alloc::{Layout, alloc_zeroed, dealloc};

pub struct Arena {
    base: *mut u8,
    layout: Layout,
    buf_size: usize,
    count: usize,
}

// SAFETY: the arena is plain memory owned by exactly one reactor thread at a time.
unsafe impl Send for Arena {}

impl Arena {
    /// Allocates `count` buffers of `buf_size` bytes, aligned to 4096 (O_DIRECT-ready).
    pub fn new(buf_size: usize, count: usize) -> Self {
        assert!(buf_size > 0 && count > 0);
        assert!(buf_size.is_multiple_of(4096), "buffers are whole pages");
        let layout = Layout::from_size_align(buf_size * count, 4096).expect("arena layout");
        // SAFETY: layout has non-zero size.
        let base = unsafe { alloc_zeroed(layout) };
        if base.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Arena {
            base,
            layout,
            buf_size,
            count,
        }
    }

    pub fn buf_size(&self) -> usize {
        self.buf_size
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// Pointer to byte `off` of buffer `idx`; stays valid for the arena's life.
    pub fn ptr(&self, idx: u32, off: u32) -> *mut u8 {
        let (idx, off) = (idx as usize, off as usize);
        assert!(idx < self.count && off <= self.buf_size);
        // SAFETY: in bounds of the single allocation by the assert above.
        unsafe { self.base.add(idx * self.buf_size + off) }
    }

    pub fn slice(&self, idx: u32, len: usize) -> &[u8] {
        assert!(len <= self.buf_size);
        // SAFETY: in bounds; callers only read a buffer no op is writing into.
        unsafe { std::slice::from_raw_parts(self.ptr(idx, 0), len) }
    }

    /// iovecs for io_uring buffer registration.
    pub fn iovecs(&self) -> Vec<libc::iovec> {
        (0..self.count as u32)
            .map(|i| libc::iovec {
                iov_base: self.ptr(i, 0).cast(),
                iov_len: self.buf_size,
            })
            .collect()
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: allocated in new() with this layout. Backends unregister or close their ring
        // (which drops the kernel's pins) before the arena they own is dropped.
        unsafe { dealloc(self.base, self.layout) }
    }
}

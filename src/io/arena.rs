//! One page-aligned allocation per reactor, cut into equal buffers. Data is read into a buffer
//! and written from the same buffer: nothing is copied in user space.

pub struct Arena {
    base: *mut u8,
    /// The mapping as made (`base` is inside it, 2 MiB-aligned when it is big enough).
    map: *mut u8,
    map_len: usize,
    buf_size: usize,
    count: usize,
}

// SAFETY: the arena is plain memory owned by exactly one reactor thread at a time.
unsafe impl Send for Arena {}

/// A transparent huge page on x86-64 and arm64 with 4 KiB pages.
const HUGE: usize = 2 << 20;

impl Arena {
    /// Allocates `count` buffers of `buf_size` bytes, aligned to 4096 (O_DIRECT-ready).
    pub fn new(buf_size: usize, count: usize) -> Self {
        assert!(buf_size > 0 && count > 0);
        assert!(buf_size.is_multiple_of(4096), "buffers are whole pages");
        let len = buf_size.checked_mul(count).expect("arena size");
        // Room to align the buffers to a huge page: see the madvise below.
        let map_len = if len >= HUGE { len + HUGE } else { len };
        // An anonymous mapping: page-aligned, and zero pages appear on first touch. (A zeroed
        // heap allocation with 4 KiB alignment is memset up front: 18 ms for 32 MiB, on every
        // job start, measured.)
        // SAFETY: a fresh private anonymous mapping; no address hint, no fd.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            panic!(
                "arena: mmap of {len} bytes failed: {}",
                std::io::Error::last_os_error()
            );
        }
        let map: *mut u8 = base.cast();
        let mut base = map;
        if len >= HUGE {
            base = map.wrapping_add(map.align_offset(HUGE));
            // Transparent huge pages make a buffer physically contiguous: an O_DIRECT request
            // from it is a few segments, not one per 4 KiB page, so the block layer does not
            // split it at the device's segment limit (virtio-blk here: 254 segments, ~1 MiB;
            // measured 4 MiB reads arriving as 800 KiB requests). Only a hint: where THP is
            // off or unavailable (EINVAL), the buffers are ordinary pages and work the same.
            // SAFETY: advice on a range inside our own mapping.
            let advised = unsafe { libc::madvise(base.cast(), len, libc::MADV_HUGEPAGE) } == 0;
            // EINVAL: a kernel without THP. Nothing else is documented for a valid range.
            debug_assert!(
                advised || std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL)
            );
        }
        assert!(base.wrapping_add(len) <= map.wrapping_add(map_len));
        Arena {
            base,
            map,
            map_len,
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
        // SAFETY: mapped in new() with this length. Backends unregister or close their ring
        // (which drops the kernel's pins) before the arena they own is dropped. munmap of a
        // mapping we own cannot fail; if it did, the memory would only stay mapped.
        let r = unsafe { libc::munmap(self.map.cast(), self.map_len) };
        debug_assert_eq!(r, 0, "munmap of the arena");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_arenas_start_on_a_huge_page_and_every_byte_is_usable() {
        for (size, count) in [(4096, 3), (512 << 10, 8), (1 << 20, 5)] {
            let a = Arena::new(size, count);
            if size * count >= HUGE {
                assert_eq!(a.ptr(0, 0) as usize % HUGE, 0, "{size} x {count}");
            }
            for i in 0..count as u32 {
                // SAFETY: the whole buffer is inside the arena.
                unsafe { std::ptr::write_bytes(a.ptr(i, 0), i as u8 + 1, size) };
            }
            for i in 0..count as u32 {
                assert!(a.slice(i, size).iter().all(|&b| b == i as u8 + 1));
            }
        }
    }
}

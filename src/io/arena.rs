//! One page-aligned allocation per reactor, cut into equal buffers. Data is read into a buffer
//! and written from the same buffer: nothing is copied in user space.
//!
//! Beside the `count` big buffers (indices `0..count`) there are as many small ones of
//! [`SMALL`] bytes (indices `count..2*count`, in a mapping of their own) when the big ones are
//! bigger than that: a chunk of at most `SMALL` bytes in slot `i` uses small buffer `count+i`
//! ([`Arena::pick`]), so a job of small files touches (and the ring pins) `count * SMALL`
//! bytes instead of the whole arena. Every page the kernel hands out is cleared first, and on
//! this VM a cleared page is often a fresh one from the host: registering the 32 MiB arena
//! was 35 % of the CPU of a 10,000-file copy on tmpfs (perf: clear_page_erms under
//! io_sqe_buffers_register, 10-115 ms per job).

pub struct Arena {
    base: *mut u8,
    /// The mapping as made (`base` is inside it, 2 MiB-aligned when it is big enough).
    map: *mut u8,
    map_len: usize,
    buf_size: usize,
    count: usize,
    /// The small buffers' mapping (`count * SMALL` bytes), when buffers are bigger than SMALL.
    small: *mut u8,
}

/// Bytes of one small buffer: chunks up to this size use one (files of up to 64 KiB are
/// most of a small-file tree; a 4 MiB region per reactor at the default queue depth).
pub const SMALL: usize = 64 << 10;

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
        let map = map_anon(map_len);
        let small = if buf_size > SMALL {
            map_anon(SMALL.checked_mul(count).expect("small arena size"))
        } else {
            std::ptr::null_mut()
        };
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
            small,
        }
    }

    /// Bytes of a big buffer (the most one chunk moves).
    pub fn buf_size(&self) -> usize {
        self.buf_size
    }

    /// Slots: big buffers (and as many small ones, when there are small ones).
    pub fn count(&self) -> usize {
        self.count
    }

    /// Buffer indices in all: `count`, or `2 * count` with the small buffers.
    pub fn buffers(&self) -> usize {
        if self.small.is_null() {
            self.count
        } else {
            2 * self.count
        }
    }

    /// The buffer a chunk of `len` bytes in slot `slot` uses: its small buffer when it fits
    /// one, else its big one.
    pub fn pick(&self, slot: u32, len: u32) -> u32 {
        assert!((slot as usize) < self.count);
        if !self.small.is_null() && len as usize <= SMALL {
            slot + self.count as u32
        } else {
            slot
        }
    }

    /// Bytes of buffer `idx`.
    pub fn len_of(&self, idx: u32) -> usize {
        assert!((idx as usize) < self.buffers(), "buffer {idx} out of range");
        if (idx as usize) < self.count {
            self.buf_size
        } else {
            SMALL
        }
    }

    /// Pointer to byte `off` of buffer `idx`; stays valid for the arena's life.
    pub fn ptr(&self, idx: u32, off: u32) -> *mut u8 {
        let (i, off) = (idx as usize, off as usize);
        assert!(off <= self.len_of(idx));
        if i < self.count {
            // SAFETY: in bounds of the big allocation by the assert above.
            unsafe { self.base.add(i * self.buf_size + off) }
        } else {
            // SAFETY: a small index (len_of checked it) and in bounds of the small mapping.
            unsafe { self.small.add((i - self.count) * SMALL + off) }
        }
    }

    pub fn slice(&self, idx: u32, len: usize) -> &[u8] {
        assert!(len <= self.len_of(idx));
        // SAFETY: in bounds; callers only read a buffer no op is writing into.
        unsafe { std::slice::from_raw_parts(self.ptr(idx, 0), len) }
    }

    /// The iovec of buffer `idx`, for io_uring buffer registration.
    pub fn iovec(&self, idx: u32) -> libc::iovec {
        libc::iovec {
            iov_base: self.ptr(idx, 0).cast(),
            iov_len: self.len_of(idx),
        }
    }

    /// iovecs of every buffer (big, then small), for registering them all at once.
    pub fn iovecs(&self) -> Vec<libc::iovec> {
        (0..self.buffers() as u32).map(|i| self.iovec(i)).collect()
    }
}

/// A fresh private anonymous mapping of `len` bytes (zero pages appear on first touch).
fn map_anon(len: usize) -> *mut u8 {
    // SAFETY: a fresh private anonymous mapping; no address hint, no fd.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        panic!(
            "arena: mmap of {len} bytes failed: {}",
            std::io::Error::last_os_error()
        );
    }
    p.cast()
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: mapped in new() with this length. Backends unregister or close their ring
        // (which drops the kernel's pins) before the arena they own is dropped. munmap of a
        // mapping we own cannot fail; if it did, the memory would only stay mapped.
        let r = unsafe { libc::munmap(self.map.cast(), self.map_len) };
        debug_assert_eq!(r, 0, "munmap of the arena");
        if !self.small.is_null() {
            // SAFETY: mapped in new() with this length, dropped once.
            let r = unsafe { libc::munmap(self.small.cast(), SMALL * self.count) };
            debug_assert_eq!(r, 0, "munmap of the small buffers");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_arenas_start_on_a_huge_page_and_every_byte_is_usable() {
        for (size, count) in [(4096, 3), (SMALL, 2), (512 << 10, 8), (1 << 20, 5)] {
            let a = Arena::new(size, count);
            if size * count >= HUGE {
                assert_eq!(a.ptr(0, 0) as usize % HUGE, 0, "{size} x {count}");
            }
            // Small buffers only where big ones are bigger than they are.
            let n = if size > SMALL { 2 * count } else { count };
            assert_eq!(a.buffers(), n);
            for i in 0..n as u32 {
                assert_eq!(a.ptr(i, 0) as usize % 4096, 0, "O_DIRECT-aligned");
                // SAFETY: the whole buffer is inside the arena.
                unsafe { std::ptr::write_bytes(a.ptr(i, 0), i as u8 + 1, a.len_of(i)) };
            }
            // No two buffers share a byte.
            for i in 0..n as u32 {
                assert!(a.slice(i, a.len_of(i)).iter().all(|&b| b == i as u8 + 1));
            }
        }
    }

    #[test]
    fn a_chunk_uses_its_slots_small_buffer_when_it_fits_one() {
        let a = Arena::new(512 << 10, 8);
        assert_eq!(a.pick(3, 1), 11);
        assert_eq!(a.pick(3, SMALL as u32), 11);
        assert_eq!(a.pick(3, SMALL as u32 + 1), 3);
        assert_eq!(a.pick(7, 512 << 10), 7);
        assert_eq!((a.len_of(3), a.len_of(11)), (512 << 10, SMALL));
        // Buffers of at most SMALL bytes: there are no small ones, every chunk uses its slot.
        let b = Arena::new(SMALL, 4);
        assert_eq!((b.pick(2, 1), b.buffers()), (2, 4));
    }
}

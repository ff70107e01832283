//! Record arenas off the heap: growable arrays of plain-old-data values
//! ([`Pod`]: record words, key bytes, record descriptors, ordinals) kept
//! in a shared map of an unlinked scratch file of the producer's work
//! directory ([`WorkDir`]).
//!
//! # Why file-backed arenas
//!
//! A full cycle holds two datasets' records at once: the last announced
//! state and the new cycle's whole batch, each as large as the dataset.
//! On the heap those pages are anonymous memory that only swap can evict.
//! In a `MAP_SHARED` map of a file they are the page cache's: the kernel
//! writes them back and drops them under pressure, and reads them in
//! again when a later cycle touches them, so the producer's anonymous
//! memory no longer grows with the dataset (its hash tables and per-cycle
//! lists stay on the heap). The alternative, keeping the announced state
//! as the published snapshot mapped back and read through, would give up
//! what makes a cycle cheap: records kept as canonical words, compared
//! byte for byte against the new cycle's and handed to the blob writer as
//! they are, with no per-record rebuild from the blob's layout. A restart
//! still restores from the blobs (`producer/restore.rs`), into arenas.
//!
//! # Growth
//!
//! An arena grows by extending its file and remapping it (`mremap` with
//! `MREMAP_MAYMOVE` on Linux, a fresh map of the same file elsewhere):
//! the data is never copied, the kernel moves page table entries. The
//! capacity grows by an eighth (at least 1 MiB), not by doubling: a
//! doubling arena of a 10M-record dataset would reserve up to as much
//! again, and, unlike a `Vec`, growing costs no copy, so small steps are
//! cheap. The file is extended with `fallocate` where the file system
//! supports it, so that a full disk is an error at growth, not a `SIGBUS`
//! when a page of a sparse file is first written through the map.
//!
//! Every operation that may grow returns a [`Result`]: a scratch file that
//! cannot be created (the work directory was removed), extended (`ENOSPC`,
//! a file size limit) or mapped is an [`ArenaError`] naming the work
//! directory, and the arena keeps its contents. The fast path of a push
//! is one capacity compare; growth is out of line.
//!
//! # Heap or file
//!
//! An arena made with [`Arena::in_dir`] starts on the heap and moves to a
//! scratch file (one copy of at most [`SPILL_BYTES`]) the first time it
//! needs more: a type with a handful of records, an incremental cycle's
//! few upserts, costs no file descriptor and no syscall, while every
//! large arena (a full cycle's batch, the announced state, a restored
//! state) is file-backed, and the heap an arena holds is bounded. An
//! arena made with [`Arena::new`] stays on the heap like a `Vec`: for unit
//! tests and bookkeeping that is small by construction.
//!
//! # Spare files
//!
//! A dropped file-backed arena hands its file, still mapped, to the work
//! directory's [`Spares`], and the next arena that needs a file takes it:
//! a full cycle's batch is written into the pages of the state the
//! previous cycle dropped, already in the page cache, instead of faulting
//! in new ones (see [`Spares`] for the figures and the bound).
//!
//! On `tmpfs` a scratch file's pages are shared memory, evictable only to
//! swap: [`WorkDir::new`] warns about it.

use super::workdir::WorkDir;
use memmap2::MmapMut;
use std::fs::File;
use std::io;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::ptr::NonNull;
use std::sync::Arc;

/// Plain old data: what an [`Arena`] may hold.
///
/// # Safety
///
/// Implement only for `Copy` types without `Drop` that hold no pointer or
/// reference and for which every byte pattern is a valid value, in
/// particular all zero bytes: what a scratch file reads as where it was
/// extended. An arena hands out slices of its map as `&[T]` and
/// `&mut [T]`; only the first `len` elements, each written through the
/// arena, are ever exposed, but the map's bytes come from the kernel, not
/// from a Rust allocation, so no value of `T` may depend on provenance or
/// on bytes the compiler could assume untouched. Integers and structs of
/// integers qualify; `bool`, `char`, enums, references do not.
pub(crate) unsafe trait Pod: Copy + Send + Sync + 'static {}

// SAFETY: integers: every byte pattern is a value, no pointers, no Drop.
unsafe impl Pod for u8 {}
// SAFETY: as for u8.
unsafe impl Pod for u32 {}
// SAFETY: as for u8.
unsafe impl Pod for u64 {}

/// An arena in a work directory stays on the heap up to this many bytes,
/// then moves to a scratch file.
pub(crate) const SPILL_BYTES: usize = 64 << 10;

/// A file-backed arena grows by at least this many bytes.
const MIN_FILE_STEP: usize = 1 << 20;

/// Scratch file sizes are multiples of this (every page size a map may
/// use divides it), so a map never reaches past the end of its file.
const FILE_ALIGN: usize = 64 << 10;

/// A scratch file could not be created, extended or mapped.
#[derive(Debug, thiserror::Error)]
#[error("{}: {action}: {source}", dir.display())]
pub(crate) struct ArenaError {
    /// The work directory.
    pub dir: PathBuf,
    /// What was being done (`growing the scratch file of record words to
    /// 1048576 bytes`).
    pub action: String,
    #[source]
    pub source: io::Error,
}

impl ArenaError {
    /// A copy of the error (for a caller that reports it twice: to the
    /// populate closure that hit it and, should the closure drop it, as
    /// the cycle's error).
    pub fn duplicate(&self) -> ArenaError {
        ArenaError {
            dir: self.dir.clone(),
            action: self.action.clone(),
            source: match self.source.raw_os_error() {
                Some(code) => io::Error::from_raw_os_error(code),
                None => io::Error::new(self.source.kind(), self.source.to_string()),
            },
        }
    }
}

/// Where an [`Arena::in_dir`] arena moves once past [`SPILL_BYTES`].
#[derive(Clone)]
struct Place {
    work: Arc<WorkDir>,
    /// Names the arena's scratch file and its errors (`record words`).
    what: &'static str,
}

impl Place {
    fn error(&self, action: String, source: io::Error) -> ArenaError {
        ArenaError {
            dir: self.work.path().to_path_buf(),
            action,
            source,
        }
    }
}

enum Backing<T> {
    /// A heap buffer, held to own the allocation: the vector's own length
    /// stays 0, its capacity is the arena's, and the arena writes its
    /// spare capacity through `ptr`.
    Heap { _buffer: Vec<T> },
    /// A shared map of an unlinked scratch file as long as the map.
    File { file: File, map: MmapMut },
}

/// A growable array of [`Pod`] values, on the heap or in a scratch file
/// (see the module doc). It dereferences to a slice of its elements.
pub(crate) struct Arena<T: Pod> {
    /// The first element: the heap buffer's or the map's start; dangling
    /// while the capacity is 0.
    ptr: NonNull<T>,
    len: usize,
    cap: usize,
    backing: Backing<T>,
    /// Where it moves past [`SPILL_BYTES`]; `None`: it stays on the heap.
    place: Option<Place>,
}

// SAFETY: an arena owns its buffer or map exclusively, as a `Vec` owns its
// allocation: `ptr` is never shared with another arena, and `T: Pod` is
// `Send + Sync`.
unsafe impl<T: Pod> Send for Arena<T> {}
// SAFETY: `&Arena` only reads (a `&[T]`); every write takes `&mut self`.
unsafe impl<T: Pod> Sync for Arena<T> {}

impl<T: Pod> Default for Arena<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Pod> Arena<T> {
    /// An empty arena that stays on the heap.
    pub fn new() -> Self {
        Arena {
            ptr: NonNull::dangling(),
            len: 0,
            cap: 0,
            backing: Backing::Heap {
                _buffer: Vec::new(),
            },
            place: None,
        }
    }

    /// An empty arena that moves to a scratch file of `work` once past
    /// [`SPILL_BYTES`]; `what` names the file and its errors.
    pub fn in_dir(work: &Arc<WorkDir>, what: &'static str) -> Self {
        let mut arena = Self::new();
        arena.place = Some(Place {
            work: work.clone(),
            what,
        });
        arena
    }

    /// An empty arena placed as `self` is (on the heap, or in the same work
    /// directory), for values that go with this arena's.
    pub fn sibling<U: Pod>(&self, what: &'static str) -> Arena<U> {
        match &self.place {
            Some(place) => Arena::in_dir(&place.work, what),
            None => Arena::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Whether the elements live in a scratch file (not on the heap).
    #[cfg(test)]
    pub fn is_file_backed(&self) -> bool {
        matches!(self.backing, Backing::File { .. })
    }

    /// Makes room for `more` elements: when short, the capacity grows by
    /// an eighth of itself (at least 1 MiB) in a scratch file, or doubles
    /// on the heap, or to `len + more` if that is more.
    #[inline]
    pub fn reserve(&mut self, more: usize) -> Result<(), ArenaError> {
        if self.cap - self.len < more {
            self.grow(more, false)?;
        }
        Ok(())
    }

    /// Makes room for `more` elements, growing to no more than that (up to
    /// the scratch file's granularity of 64 KiB).
    pub fn reserve_exact(&mut self, more: usize) -> Result<(), ArenaError> {
        if self.cap - self.len < more {
            self.grow(more, true)?;
        }
        Ok(())
    }

    /// Appends `value`.
    #[inline]
    pub fn push(&mut self, value: T) -> Result<(), ArenaError> {
        if self.len == self.cap {
            self.grow(1, false)?;
        }
        // SAFETY: `len < cap`: the slot is inside the buffer or map.
        unsafe { self.ptr.as_ptr().add(self.len).write(value) };
        self.len += 1;
        Ok(())
    }

    /// Appends a copy of `values`.
    #[inline]
    pub fn extend_from_slice(&mut self, values: &[T]) -> Result<(), ArenaError> {
        self.reserve(values.len())?;
        // SAFETY: room for `values.len()` more was just made; `values`
        // cannot overlap the arena's spare capacity (it is borrowed
        // shared while the arena is borrowed mutably).
        unsafe {
            std::ptr::copy_nonoverlapping(
                values.as_ptr(),
                self.ptr.as_ptr().add(self.len),
                values.len(),
            );
        }
        self.len += values.len();
        Ok(())
    }

    /// Sets the length to `new_len`, filling new slots with `value`.
    pub fn resize(&mut self, new_len: usize, value: T) -> Result<(), ArenaError> {
        if new_len <= self.len {
            self.truncate(new_len);
            return Ok(());
        }
        self.reserve_exact(new_len - self.len)?;
        for i in self.len..new_len {
            // SAFETY: `i < new_len <= cap`.
            unsafe { self.ptr.as_ptr().add(i).write(value) };
        }
        self.len = new_len;
        Ok(())
    }

    /// Keeps the first `len` elements (the capacity stays).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Grows the capacity to at least `len + more` (see [`Self::reserve`]),
    /// moving a heap arena to a scratch file when past [`SPILL_BYTES`].
    #[cold]
    fn grow(&mut self, more: usize, exact: bool) -> Result<(), ArenaError> {
        let size = std::mem::size_of::<T>().max(1);
        let overflow = || io::Error::new(io::ErrorKind::OutOfMemory, "capacity overflow");
        let need = self.len.checked_add(more);
        match (&self.backing, self.place.clone()) {
            (Backing::Heap { .. }, place) => {
                let Some(need) = need else {
                    return Err(self.error_or_panic(place, "growing an arena", overflow()));
                };
                let spill = place.filter(|_| need.saturating_mul(size) > SPILL_BYTES);
                if let Some(place) = spill {
                    return self.spill(&place, need, exact, size);
                }
                let mut cap = if exact {
                    need
                } else {
                    need.max(self.cap * 2).max(16)
                };
                if self.place.is_some() {
                    cap = cap.min(SPILL_BYTES / size).max(need);
                }
                self.regrow_heap(cap);
                Ok(())
            }
            (Backing::File { .. }, place) => {
                let place = place.expect("a file-backed arena has a place");
                let Some(need) = need else {
                    return Err(place.error(format!("growing {}", place.what), overflow()));
                };
                let cap = if exact {
                    need
                } else {
                    need.max(self.cap + (self.cap / 8).max(MIN_FILE_STEP / size))
                };
                self.grow_file(&place, cap, size)
            }
        }
    }

    /// A heap-only arena fails like a `Vec` (a capacity overflow panics:
    /// such arenas are small by construction); one with a place reports
    /// the error.
    fn error_or_panic(&self, place: Option<Place>, action: &str, e: io::Error) -> ArenaError {
        match place {
            Some(place) => place.error(format!("{action} of {}", place.what), e),
            None => panic!("{action}: {e}"),
        }
    }

    /// Moves the heap elements into a new buffer of `cap` elements.
    fn regrow_heap(&mut self, cap: usize) {
        let mut fresh: Vec<T> = Vec::with_capacity(cap);
        // SAFETY: `fresh` has room for `cap >= len` elements; the old
        // buffer holds `len` initialized ones; they are distinct buffers.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.as_ptr(), fresh.as_mut_ptr(), self.len) };
        self.cap = fresh.capacity();
        // SAFETY: a Vec's buffer pointer is never null.
        self.ptr = unsafe { NonNull::new_unchecked(fresh.as_mut_ptr()) };
        self.backing = Backing::Heap { _buffer: fresh };
    }

    /// Moves a heap arena to a scratch file of room for `need` elements
    /// (or more, unless `exact`): a spare one of the work directory if
    /// there is one ([`Spares`]), a new one otherwise.
    fn spill(
        &mut self,
        place: &Place,
        need: usize,
        exact: bool,
        size: usize,
    ) -> Result<(), ArenaError> {
        let cap = if exact {
            need
        } else {
            need.max(self.cap + self.cap / 8)
        };
        let bytes = file_bytes(cap, size).ok_or_else(|| {
            place.error(
                format!("sizing a scratch file for {}", place.what),
                io::Error::new(io::ErrorKind::OutOfMemory, "capacity overflow"),
            )
        })?;
        let spares = &place.work.spares;
        let (file, mut map) = match spares.take(bytes) {
            Some(spare) => spare,
            None => {
                let file = place.work.scratch(place.what).map_err(|e| {
                    place.error(format!("creating a scratch file for {}", place.what), e)
                })?;
                // SAFETY: the file is this arena's alone (created here,
                // already unlinked, never handed out), so nothing
                // truncates it under the map; the map is of its first
                // `FILE_ALIGN` bytes, which `allocate` just made.
                let map = allocate(&file, 0, FILE_ALIGN).and_then(|()| unsafe {
                    memmap2::MmapOptions::new().len(FILE_ALIGN).map_mut(&file)
                });
                let map = map.map_err(|e| {
                    place.error(format!("mapping a scratch file for {}", place.what), e)
                })?;
                spares.arrived(FILE_ALIGN);
                (file, map)
            }
        };
        if map.len() < bytes {
            let old = map.len();
            if let Err(e) = extend_map(&file, &mut map, bytes) {
                spares.release(file, map);
                return Err(place.error(
                    format!(
                        "extending the scratch file of {} to {bytes} bytes",
                        place.what
                    ),
                    e,
                ));
            }
            spares.grew(old, bytes);
        }
        let to = map.as_mut_ptr().cast::<T>();
        // SAFETY: the map is page-aligned (so aligned for `T`) and has room
        // for `map.len() / size >= len` elements; the heap buffer holds
        // `len`; they are distinct memory.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.as_ptr(), to, self.len) };
        // SAFETY: a successful map's address is never null.
        self.ptr = unsafe { NonNull::new_unchecked(to) };
        self.cap = map.len() / size;
        self.backing = Backing::File { file, map };
        Ok(())
    }

    /// Extends a file-backed arena's file to room for `cap` elements and
    /// remaps it. On failure, the file and the map are as they were.
    fn grow_file(&mut self, place: &Place, cap: usize, size: usize) -> Result<(), ArenaError> {
        let Backing::File { file, map } = &mut self.backing else {
            unreachable!("grow_file is called on file-backed arenas only");
        };
        let old = map.len();
        let bytes = file_bytes(cap, size).ok_or_else(|| {
            place.error(
                format!("growing the scratch file of {}", place.what),
                io::Error::new(io::ErrorKind::OutOfMemory, "capacity overflow"),
            )
        })?;
        extend_map(file, map, bytes).map_err(|e| {
            place.error(
                format!(
                    "growing the scratch file of {} to {bytes} bytes",
                    place.what
                ),
                e,
            )
        })?;
        place.work.spares.grew(old, bytes);
        // SAFETY: a successful map's address is never null.
        self.ptr = unsafe { NonNull::new_unchecked(map.as_mut_ptr().cast::<T>()) };
        self.cap = bytes / size;
        Ok(())
    }
}

impl<T: Pod> Drop for Arena<T> {
    /// A file-backed arena hands its file and map to the work directory's
    /// spares, for the next arena to reuse.
    fn drop(&mut self) {
        let backing = std::mem::replace(
            &mut self.backing,
            Backing::Heap {
                _buffer: Vec::new(),
            },
        );
        if let (Backing::File { file, map }, Some(place)) = (backing, &self.place) {
            place.work.spares.release(file, map);
        }
    }
}

/// Extends `file` (as long as `map`) to `bytes` and remaps `map` over
/// it; on failure both are as they were.
fn extend_map(file: &File, map: &mut MmapMut, bytes: usize) -> io::Result<()> {
    let old = map.len();
    allocate(file, old, bytes)?;
    if let Err(e) = remap(file, map, bytes) {
        // Give the space back; the old map is intact and within the file.
        let _ = file.set_len(old as u64);
        return Err(e);
    }
    Ok(())
}

/// Scratch files (with their maps) that dropped arenas released, kept for
/// the next arenas of the work directory.
///
/// Why: a full cycle's new batch is as large as the state it replaces,
/// and the replaced state is dropped as the cycle ends. Writing the next
/// cycle's batch into the dropped state's files, still mapped and in the
/// page cache, costs a store per word; writing into a new file costs a
/// page fault and a page cache allocation per page as well (measured:
/// 160 MB written in about 15 ms into a reused map, 200 to 250 ms into a
/// new file, 160 ms into a new heap buffer). The pages are the page
/// cache's either way: the kernel may still write them back and drop
/// them.
///
/// Bounded: the spares never hold more bytes than the live file-backed
/// arenas do (a spare past that is closed, its space freed), so the work
/// directory's disk use stays within twice the live arenas'. A spare is
/// taken best fit: the smallest one large enough, else the largest, grown.
#[derive(Default)]
pub(crate) struct Spares(std::sync::Mutex<SparePool>);

#[derive(Default)]
struct SparePool {
    files: Vec<(File, MmapMut)>,
    /// Bytes of the spares.
    pooled: usize,
    /// Bytes of the live file-backed arenas' files.
    live: usize,
}

impl std::fmt::Debug for Spares {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pool = self.lock();
        f.debug_struct("Spares")
            .field("files", &pool.files.len())
            .field("pooled", &pool.pooled)
            .field("live", &pool.live)
            .finish()
    }
}

impl Spares {
    fn lock(&self) -> std::sync::MutexGuard<'_, SparePool> {
        // The pool's counters stay consistent under every panic (each
        // update is a few integer operations after the vector's), so a
        // poisoned lock is used as is.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A spare for an arena of `bytes`: the smallest one at least that
    /// large, else the largest.
    fn take(&self, bytes: usize) -> Option<(File, MmapMut)> {
        let mut pool = self.lock();
        let len = |i: usize, pool: &SparePool| pool.files[i].1.len();
        let fits = (0..pool.files.len())
            .filter(|&i| len(i, &pool) >= bytes)
            .min_by_key(|&i| len(i, &pool));
        let i = fits.or_else(|| (0..pool.files.len()).max_by_key(|&i| len(i, &pool)))?;
        let spare = pool.files.swap_remove(i);
        pool.pooled -= spare.1.len();
        pool.live += spare.1.len();
        Some(spare)
    }

    /// A new scratch file of `bytes` became an arena's.
    fn arrived(&self, bytes: usize) {
        self.lock().live += bytes;
    }

    /// An arena's file grew from `old` to `new` bytes.
    fn grew(&self, old: usize, new: usize) {
        let mut pool = self.lock();
        pool.live = pool.live + new - old;
    }

    /// An arena released its file: kept if the spares stay within the
    /// live arenas' bytes, closed otherwise.
    fn release(&self, file: File, map: MmapMut) {
        let mut pool = self.lock();
        pool.live = pool.live.saturating_sub(map.len());
        if pool.pooled + map.len() <= pool.live {
            pool.pooled += map.len();
            pool.files.push((file, map));
        }
    }

    /// (spare files, their bytes, the live arenas' bytes).
    #[cfg(test)]
    fn counts(&self) -> (usize, usize, usize) {
        let pool = self.lock();
        (pool.files.len(), pool.pooled, pool.live)
    }
}

/// The file size for `cap` elements of `size` bytes: a multiple of
/// [`FILE_ALIGN`], at least one; `None` on overflow.
fn file_bytes(cap: usize, size: usize) -> Option<usize> {
    let bytes = cap.checked_mul(size)?.max(1);
    bytes.checked_next_multiple_of(FILE_ALIGN)
}

/// Extends `file` from `from` to `to` bytes, with its blocks allocated
/// where the file system can (so that a full disk fails here); on failure
/// the file keeps its length.
fn allocate(file: &File, from: usize, to: usize) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (offset, len) = match (i64::try_from(from), i64::try_from(to - from)) {
            (Ok(offset), Ok(len)) => (offset, len),
            _ => return Err(io::Error::from_raw_os_error(libc::EFBIG)),
        };
        loop {
            // SAFETY: a plain syscall on a descriptor this file owns.
            let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, offset, len) };
            if rc == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                // No fallocate on this file system: a sparse extension.
                Some(libc::EOPNOTSUPP) => break,
                _ => {
                    // A partial allocation gives its blocks back.
                    let _ = file.set_len(from as u64);
                    return Err(e);
                }
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = from;
    file.set_len(to as u64)
}

/// Makes `map` cover the first `bytes` bytes of `file` (already that
/// long), without copying: `mremap` on Linux, a fresh map of the same
/// file elsewhere (its pages are the file's, shared by both maps).
fn remap(file: &File, map: &mut MmapMut, bytes: usize) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let _ = file;
        // SAFETY: the file is at least `bytes` long and is this arena's
        // alone (unlinked, never handed out): no one shrinks it under the
        // map. The arena's pointer is re-read from the map right after.
        unsafe { map.remap(bytes, memmap2::RemapOptions::new().may_move(true)) }
    }
    #[cfg(not(target_os = "linux"))]
    {
        // SAFETY: as above; the old map is dropped after the new one is
        // made, and its dirty pages are the file's, seen by the new map.
        *map = unsafe { memmap2::MmapOptions::new().len(bytes).map_mut(file)? };
        Ok(())
    }
}

impl<T: Pod> Deref for Arena<T> {
    type Target = [T];

    #[inline]
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` is aligned and valid for `cap >= len` elements (or
        // dangling with `len == 0`), the first `len` written.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Pod> DerefMut for Arena<T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`; `&mut self` makes the borrow exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Arena<u64> {
    /// Appends the words whose little-endian bytes are `bytes` (a whole
    /// number of words: a Cap'n Proto segment); returns how many.
    #[inline]
    pub fn extend_from_le_bytes(&mut self, bytes: &[u8]) -> Result<usize, ArenaError> {
        let n = bytes.len() / 8;
        self.reserve(n)?;
        // SAFETY: room for `n` more words was just made; a byte copy is
        // the little-endian decoding on the little-endian hosts burrow
        // builds for (schema/record.rs refuses others); `bytes` cannot
        // overlap the arena's spare capacity.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.ptr.as_ptr().add(self.len).cast::<u8>(),
                n * 8,
            );
        }
        self.len += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn work() -> (tempfile::TempDir, Arc<WorkDir>) {
        let dir = tempfile::tempdir().unwrap();
        let work = Arc::new(WorkDir::new(Some(dir.path().to_path_buf())).unwrap());
        (dir, work)
    }

    /// Invariant: growing through many remaps (and the move from the heap
    /// to a file) keeps every element, and leaves no name in the directory.
    #[test]
    fn growth_across_many_remaps_keeps_contents() {
        let (dir, work) = work();
        let mut a: Arena<u64> = Arena::in_dir(&work, "test words");
        let mut caps = std::collections::BTreeSet::new();
        for i in 0..600_000u64 {
            a.push(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).unwrap();
            caps.insert(a.capacity());
        }
        assert!(a.is_file_backed());
        assert!(caps.len() > 5, "grew {} times", caps.len());
        // Grown by an eighth (or 1 MiB), not doubled.
        assert!(a.capacity() < a.len() + a.len() / 4, "{}", a.capacity());
        assert!(a
            .iter()
            .enumerate()
            .all(|(i, &w)| w == (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)));
        let bytes: Vec<u8> = (0..64u64).flat_map(u64::to_le_bytes).collect();
        assert_eq!(a.extend_from_le_bytes(&bytes).unwrap(), 64);
        assert_eq!(a[600_000..], (0..64).collect::<Vec<u64>>()[..]);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn truncate_resize_and_copy_within() {
        let (_dir, work) = work();
        for mut a in [Arena::<u32>::new(), Arena::in_dir(&work, "test ordinals")] {
            a.extend_from_slice(&[1, 2, 3, 4, 5]).unwrap();
            a.copy_within(2..5, 0);
            assert_eq!(&a[..], &[3, 4, 5, 4, 5]);
            a.truncate(3);
            assert_eq!(&a[..], &[3, 4, 5]);
            let cap = a.capacity();
            a.truncate(10);
            assert_eq!((a.len(), a.capacity()), (3, cap));
            // Past the spill size: the in-dir arena moves to a file.
            a.resize(40_000, 7).unwrap();
            assert_eq!(a.is_file_backed(), a.sibling::<u8>("x").place.is_some());
            assert_eq!(&a[..4], &[3, 4, 5, 7]);
            assert!(a[3..].iter().all(|&x| x == 7));
            a.resize(2, 0).unwrap();
            assert_eq!(&a[..], &[3, 4]);
            a.push(9).unwrap();
            assert_eq!(&a[..], &[3, 4, 9]);
        }
    }

    #[test]
    fn zero_length_arenas_need_no_file() {
        let (dir, work) = work();
        let mut a: Arena<u8> = Arena::in_dir(&work, "test keys");
        assert!(a.is_empty() && a.capacity() == 0);
        a.extend_from_slice(&[]).unwrap();
        a.reserve(0).unwrap();
        a.resize(0, 1).unwrap();
        a.truncate(0);
        a.copy_within(0..0, 0);
        assert_eq!(&a[..], &[] as &[u8]);
        assert!(!a.is_file_backed());
        // Removing the directory does not matter to an arena that never
        // needs a file.
        drop(dir);
        a.extend_from_slice(b"small").unwrap();
        assert_eq!(&a[..], b"small");
    }

    /// Invariant: a growth the file system refuses is an error naming the
    /// work directory; the arena keeps its contents and stays usable.
    #[test]
    fn a_failing_grow_returns_an_error_and_keeps_contents() {
        let (dir, work) = work();
        let mut a: Arena<u64> = Arena::in_dir(&work, "test words");
        a.extend_from_slice(&(0..20_000).collect::<Vec<u64>>())
            .unwrap();
        assert!(a.is_file_backed());
        // 8 PiB: past any file system's file size or disk, and past the
        // address space.
        let err = a.reserve(1 << 50).unwrap_err();
        assert_eq!(err.dir, dir.path());
        let shown = err.to_string();
        assert!(
            shown.contains(&dir.path().display().to_string()) && shown.contains("test words"),
            "{shown}"
        );
        let err = a.reserve(usize::MAX).unwrap_err();
        assert!(err.to_string().contains("overflow"), "{err}");
        assert_eq!(a.len(), 20_000);
        assert!(a.iter().enumerate().all(|(i, &w)| w == i as u64));
        a.push(7).unwrap();
        assert_eq!(a[20_000], 7);
    }

    /// Invariant: a dropped arena's file is reused by the next arena that
    /// needs one (even with the directory gone), and the spares never
    /// hold more bytes than the live arenas.
    #[test]
    fn dropped_arenas_files_are_reused_and_bounded() {
        let (dir, work) = work();
        let mut a: Arena<u64> = Arena::in_dir(&work, "test words");
        a.resize(100_000, 1).unwrap();
        let mut live: Arena<u8> = Arena::in_dir(&work, "test keys");
        live.resize(1 << 20, 2).unwrap();
        drop(a);
        assert_eq!(work.spares.counts().0, 1);
        // No new file can be made: the spare must serve.
        drop(dir);
        let mut b: Arena<u32> = Arena::in_dir(&work, "test ordinals");
        b.resize(150_000, 3).unwrap();
        assert!(b.is_file_backed() && b.iter().all(|&x| x == 3));
        assert_eq!(work.spares.counts().0, 0);
        // Past the live arenas' bytes, a released file is closed.
        drop(live);
        assert_eq!(work.spares.counts().0, 0);
        drop(b);
        assert_eq!(work.spares.counts(), (0, 0, 0));
    }

    /// Invariant: an arena that must move to a file when its work
    /// directory is gone fails with an error naming the directory, and
    /// keeps what it held on the heap.
    #[test]
    fn a_missing_work_dir_fails_the_spill() {
        let (dir, work) = work();
        let path = dir.path().to_path_buf();
        let mut a: Arena<u64> = Arena::in_dir(&work, "test words");
        a.extend_from_slice(&[1, 2, 3]).unwrap();
        drop(dir);
        let err = a
            .extend_from_slice(&vec![0; SPILL_BYTES / 8 + 1])
            .unwrap_err();
        assert_eq!(err.dir, path);
        assert!(err.to_string().contains("creating a scratch file"), "{err}");
        assert_eq!(&a[..], &[1, 2, 3]);
    }
}

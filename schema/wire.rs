//! Cap'n Proto's wire encoding at the level of words: pointers, object
//! sizes, and the three operations format v2 performs on records without
//! a schema. The one place that knows how a pointer word is laid out.
//!
//! - [`place_record`] copies a record (its canonical single-segment
//!   message) into an element of a struct list: the struct's sections
//!   into the element, each child subtree either after the list (in
//!   canonical pre-order) or, for an interned leaf, at the one copy the
//!   writer keeps ([`Interner`]). It sees one element and an append
//!   callback, never the whole body, so that the writer can stream a
//!   blob to a file in bounded memory (`schema/blob/write.rs`).
//! - [`canonical_record`] is its inverse: the canonical message of an
//!   element, byte for byte what the producer placed (so that a restored
//!   producer compares records by bytes as before).
//! - [`check_records`] walks a blob's record lists and proves the layout a
//!   generic walker can trust (see its doc).
//!
//! A *leaf* is an object with no struct below it: a list of scalars (text
//! and data included), or a list of pointers each null or to a list of
//! scalars (a `List(Text)`). Only leaves are ever shared. Everything is
//! bounds-checked against the words given; hostile input gives an error
//! naming what was wrong, never a panic.

use hashbrown::HashTable;

/// Deepest nesting of objects below a record that is read.
pub const MAX_DEPTH: u32 = 64;

/// A pointer word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ptr(pub u64);

/// Element size codes of a list pointer.
pub const SIZE_POINTER: u8 = 6;
/// See [`SIZE_POINTER`].
pub const SIZE_COMPOSITE: u8 = 7;

impl Ptr {
    /// 0 struct, 1 list, 2 far, 3 other (capability).
    #[inline]
    pub fn kind(self) -> u8 {
        (self.0 & 3) as u8
    }
    /// The signed word offset from the end of the pointer to its target.
    #[inline]
    pub fn offset(self) -> i64 {
        i64::from((self.0 as u32 as i32) >> 2)
    }
    /// A struct pointer's data section size in words.
    #[inline]
    pub fn data_words(self) -> u16 {
        (self.0 >> 32) as u16
    }
    /// A struct pointer's pointer count.
    #[inline]
    pub fn ptr_count(self) -> u16 {
        (self.0 >> 48) as u16
    }
    /// A list pointer's element size code.
    #[inline]
    pub fn elem_size(self) -> u8 {
        ((self.0 >> 32) & 7) as u8
    }
    /// A list pointer's element count (words, for a composite list).
    #[inline]
    pub fn count(self) -> u32 {
        (self.0 >> 35) as u32
    }
    /// This pointer with another offset.
    #[inline]
    pub fn with_offset(self, offset: i64) -> u64 {
        (self.0 & !0xffff_ffff) | u64::from(((offset as i32) << 2) as u32) | (self.0 & 3)
    }
    /// A struct pointer.
    pub fn to_struct(offset: i64, data: u16, ptrs: u16) -> u64 {
        u64::from(((offset as i32) << 2) as u32) | u64::from(data) << 32 | u64::from(ptrs) << 48
    }
    /// A list pointer.
    pub fn to_list(offset: i64, size: u8, count: u32) -> u64 {
        u64::from(((offset as i32) << 2) as u32 | 1)
            | u64::from(size) << 32
            | u64::from(count) << 35
    }
    /// A zero-sized struct points at its own pointer's end minus one.
    #[inline]
    fn is_empty_struct(self) -> bool {
        self.kind() == 0 && self.data_words() == 0 && self.ptr_count() == 0
    }
}

/// Why words are not what a record's layout must be.
pub type WireError = String;

/// Words of a list's body (after the pointer; a composite list's tag
/// included) for element size `size` and count `count`.
pub fn list_body_words(size: u8, count: u32) -> u64 {
    let n = u64::from(count);
    match size {
        0 => 0,
        1 => n.div_ceil(64),
        2 => n.div_ceil(8),
        3 => (n * 2).div_ceil(8),
        4 => (n * 4).div_ceil(8),
        5 | 6 => n,
        _ => n + 1,
    }
}

/// The target position of the pointer at `at`, checked to leave `words`
/// words in `body`.
fn target(body: &[u64], at: usize, p: Ptr, words: u64) -> Result<usize, WireError> {
    let t = at as i64 + 1 + p.offset();
    if t < 0 || (t as u64).saturating_add(words) > body.len() as u64 {
        return Err(format!(
            "pointer at word {at} targets words {t}..+{words}, outside the body of {} words",
            body.len()
        ));
    }
    Ok(t as usize)
}

/// The words of the subtree below the pointer at `at` (its object and
/// everything below it, counted once per reference), bounded in depth.
pub fn subtree_words(body: &[u64], at: usize, depth: u32) -> Result<u64, WireError> {
    let p = Ptr(*body.get(at).ok_or("pointer outside the body")?);
    if p.0 == 0 {
        return Ok(0);
    }
    if depth >= MAX_DEPTH {
        return Err(format!("objects nest deeper than {MAX_DEPTH} at word {at}"));
    }
    match p.kind() {
        0 => {
            let (d, n) = (u64::from(p.data_words()), u64::from(p.ptr_count()));
            if p.is_empty_struct() {
                return Ok(0);
            }
            let t = target(body, at, p, d + n)?;
            let mut total = d + n;
            for i in 0..n {
                total += subtree_words(body, t + (d + i) as usize, depth + 1)?;
            }
            Ok(total)
        }
        1 => {
            let size = p.elem_size();
            let words = list_body_words(size, p.count());
            let t = target(body, at, p, words)?;
            let mut total = words;
            if size == SIZE_POINTER {
                for i in 0..u64::from(p.count()) {
                    total += subtree_words(body, t + i as usize, depth + 1)?;
                }
            } else if size == SIZE_COMPOSITE {
                let tag = Ptr(body[t]);
                let (d, n) = (u64::from(tag.data_words()), u64::from(tag.ptr_count()));
                let elems = tag.offset();
                if tag.kind() != 0 || elems < 0 || (elems as u64) * (d + n) > words - 1 {
                    return Err(format!("composite list at word {t} has a bad tag"));
                }
                for e in 0..elems as u64 {
                    for i in 0..n {
                        let ptr = t as u64 + 1 + e * (d + n) + d + i;
                        total += subtree_words(body, ptr as usize, depth + 1)?;
                    }
                }
            }
            Ok(total)
        }
        2 => Err(format!(
            "far pointer at word {at}: records are single-segment"
        )),
        _ => Err(format!(
            "capability pointer at word {at}: records hold no capabilities"
        )),
    }
}

/// Whether the pointer at `at` is a leaf (see the module doc): returns its
/// subtree's words, or `None` if it is not a leaf.
pub fn leaf_words(body: &[u64], at: usize) -> Result<Option<u64>, WireError> {
    let p = Ptr(*body.get(at).ok_or("pointer outside the body")?);
    if p.0 == 0 {
        return Ok(Some(0));
    }
    if p.kind() != 1 || p.elem_size() == SIZE_COMPOSITE {
        return Ok(None);
    }
    let words = list_body_words(p.elem_size(), p.count());
    let t = target(body, at, p, words)?;
    if p.elem_size() != SIZE_POINTER {
        return Ok(Some(words));
    }
    let mut total = words;
    for i in 0..p.count() as usize {
        let q = Ptr(body[t + i]);
        if q.0 == 0 {
            continue;
        }
        if q.kind() != 1 || q.elem_size() >= SIZE_POINTER {
            return Ok(None);
        }
        let w = list_body_words(q.elem_size(), q.count());
        target(body, t + i, q, w)?;
        total += w;
    }
    Ok(Some(total))
}

/// The single copies of interned leaves of one blob: a pool of words and a
/// table from leaf bytes to their place in it.
#[derive(Default)]
pub struct Interner {
    pool: Vec<u64>,
    /// (hash, position of the leaf's pointer-less block in `pool`, words).
    table: HashTable<(u64, u32, u32)>,
}

impl Interner {
    /// The pool's words (each leaf's object and, for a list of texts, its
    /// texts, as one block).
    pub fn pool(&self) -> &[u64] {
        &self.pool
    }

    /// Whether nothing is interned.
    pub fn is_empty(&self) -> bool {
        self.pool.is_empty()
    }

    /// The pool position of `block` (a leaf's subtree, its object first),
    /// adding it if `add` and it is not there yet.
    pub fn find_or_add(&mut self, block: &[u64], add: bool) -> Option<u32> {
        let bytes = crate::schema::record::words_as_bytes(block);
        let hash = xxhash_rust::xxh3::xxh3_64(bytes);
        let pool = &self.pool;
        let eq = |&(h, at, len): &(u64, u32, u32)| {
            h == hash
                && len as usize == block.len()
                && &pool[at as usize..][..len as usize] == block
        };
        if let Some(&(_, at, _)) = self.table.find(hash, eq) {
            return Some(at);
        }
        if !add || self.pool.len() + block.len() > u32::MAX as usize {
            return None;
        }
        let at = self.pool.len() as u32;
        self.pool.extend_from_slice(block);
        self.table
            .insert_unique(hash, (hash, at, block.len() as u32), |e| e.0);
        Some(at)
    }
}

/// One child of a canonical record: its pointer index, pointer, and the
/// block of words of its subtree within the record.
struct Child {
    index: usize,
    ptr: Ptr,
    block: std::ops::Range<usize>,
}

/// The children of the canonical record `src` (root pointer first, struct
/// right after it), each with its contiguous subtree block.
fn children(src: &[u64]) -> Result<(Ptr, Vec<Child>), WireError> {
    let root = Ptr(*src.first().ok_or("empty record")?);
    if root.kind() != 0 || (root.offset() != 0 && !root.is_empty_struct()) {
        return Err("record root is not a struct right after its pointer".into());
    }
    let (d, n) = (root.data_words() as usize, root.ptr_count() as usize);
    if src.len() < 1 + d + n {
        return Err("record shorter than its struct".into());
    }
    let mut out = Vec::new();
    for i in 0..n {
        let at = 1 + d + i;
        let p = Ptr(src[at]);
        if p.0 == 0 {
            continue;
        }
        let words = subtree_words(src, at, 1)? as usize;
        let start = if p.is_empty_struct() {
            at
        } else {
            let (own, _) = object_words(p);
            target(src, at, p, own)?
        };
        if start + words > src.len() {
            return Err(format!("child {i} runs past the record"));
        }
        out.push(Child {
            index: i,
            ptr: p,
            block: start..start + words,
        });
    }
    Ok((root, out))
}

/// An object's own words (not its children's) and whether it is a struct.
fn object_words(p: Ptr) -> (u64, bool) {
    match p.kind() {
        0 => (u64::from(p.data_words()) + u64::from(p.ptr_count()), true),
        _ => (list_body_words(p.elem_size(), p.count()), false),
    }
}

/// The pointer word for an object now at `target`, for a pointer now at
/// `at` (a zero-sized struct keeps its conventional offset -1).
fn relocated(p: Ptr, at: usize, target: usize) -> u64 {
    if p.is_empty_struct() {
        return p.0;
    }
    p.with_offset(target as i64 - at as i64 - 1)
}

/// The struct size of a canonical record: (data words, pointers).
pub fn record_struct_size(src: &[u64]) -> Result<(u16, u16), WireError> {
    let root = Ptr(*src.first().ok_or("empty record")?);
    if root.kind() != 0 {
        return Err("record root is not a struct".into());
    }
    Ok((root.data_words(), root.ptr_count()))
}

/// Which of a type's pointer fields are interned, and the pool they use.
pub struct InternPlan<'a> {
    /// Bit i set: pointer field i's leaves are interned.
    pub fields: u64,
    /// The blob's interner; leaves are looked up, never added, while placing.
    pub interner: &'a Interner,
    /// Where the pool starts in the body, in words.
    pub pool_at: usize,
}

/// Places the canonical record `src` into the list element `elem` (its
/// `data` data words, then its pointers; zeroed), which sits at word
/// `elem_at` of the segment. Each non-interned child subtree is handed to
/// `append`, in pointer order, which stores it after everything placed so
/// far and returns the segment word it now starts at; an interned leaf is
/// pointed at its one copy in the pool instead.
///
/// The element is a slice, not a window into the whole body, so that a
/// writer can stream the records area: it holds the elements of a list
/// (or part of one) in memory, writes the children out as they are
/// appended, and writes the elements where they belong once they are
/// placed. Pointers are relative, positions are absolute within the
/// segment: a child's pointer is its position minus the pointer's own.
pub fn place_record(
    src: &[u64],
    elem: &mut [u64],
    elem_at: usize,
    data: u16,
    plan: &InternPlan<'_>,
    mut append: impl FnMut(&[u64]) -> usize,
) -> Result<(), WireError> {
    let (root, kids) = children(src)?;
    let (d, n) = (root.data_words() as usize, root.ptr_count() as usize);
    let data = data as usize;
    let ptrs = elem.len().saturating_sub(data);
    if d > data || n > ptrs {
        return Err(format!(
            "record struct of {d} data words and {n} pointers exceeds its list's {data} and {ptrs}"
        ));
    }
    elem[..d].copy_from_slice(&src[1..1 + d]);
    for child in kids {
        let at = data + child.index;
        let block = &src[child.block.clone()];
        let pooled = if child.index < 64 && (plan.fields >> child.index) & 1 == 1 {
            match leaf_words(src, 1 + d + child.index)? {
                Some(_) => plan.interner.find_or_add_ro(block),
                None => None,
            }
        } else {
            None
        };
        let place = match pooled {
            Some(p) => plan.pool_at + p as usize,
            None => append(block),
        };
        elem[at] = relocated(child.ptr, elem_at + at, place);
    }
    Ok(())
}

impl Interner {
    fn find_or_add_ro(&self, block: &[u64]) -> Option<u32> {
        let bytes = crate::schema::record::words_as_bytes(block);
        let hash = xxhash_rust::xxh3::xxh3_64(bytes);
        let pool = &self.pool;
        self.table
            .find(hash, |&(h, at, len)| {
                h == hash
                    && len as usize == block.len()
                    && &pool[at as usize..][..len as usize] == block
            })
            .map(|&(_, at, _)| at)
    }
}

/// The leaf blocks of pointer fields of `src` (for the writer's interning
/// pass): (field index, block) for each non-null leaf child.
pub fn leaf_children(src: &[u64]) -> Result<Vec<(usize, std::ops::Range<usize>)>, WireError> {
    let (root, kids) = children(src)?;
    let d = root.data_words() as usize;
    let mut out = Vec::new();
    for child in kids {
        if leaf_words(src, 1 + d + child.index)?.is_some() && !child.block.is_empty() {
            out.push((child.index, child.block));
        }
    }
    Ok(out)
}

/// Appends to `out` the canonical message of the struct at `elem` of
/// `body` (`data` data words, `ptrs` pointers): trailing zero data words
/// and null pointers trimmed, children copied in pointer order. The
/// inverse of [`place_record`] for a blob whose layout [`check_records`]
/// accepted; on any other blob it stays in bounds and may return
/// garbage, never panics.
pub fn canonical_record(
    body: &[u64],
    elem: usize,
    data: u16,
    ptrs: u16,
    out: &mut Vec<u64>,
) -> Result<(), WireError> {
    let (data, ptrs) = (data as usize, ptrs as usize);
    let section = body
        .get(elem..elem + data + ptrs)
        .ok_or_else(|| format!("element at word {elem} runs past the body"))?;
    let mut d = data;
    while d > 0 && section[d - 1] == 0 {
        d -= 1;
    }
    let mut n = ptrs;
    while n > 0 && section[data + n - 1] == 0 {
        n -= 1;
    }
    let base = out.len();
    if d == 0 && n == 0 {
        // An empty struct's canonical pointer has offset -1.
        out.push(Ptr::to_struct(-1, 0, 0));
        return Ok(());
    }
    out.push(Ptr::to_struct(0, d as u16, n as u16));
    out.extend_from_slice(&section[..d]);
    out.resize(base + 1 + d + n, 0);
    for i in 0..n {
        let at = elem + data + i;
        let p = Ptr(body[at]);
        if p.0 == 0 {
            continue;
        }
        let dst = base + 1 + d + i;
        if p.is_empty_struct() {
            out[dst] = p.0;
            continue;
        }
        let words = subtree_words(body, at, 1)? as usize;
        let (own, _) = object_words(p);
        let t = target(body, at, p, own)?;
        let block = body
            .get(t..t + words)
            .ok_or_else(|| format!("child of the element at word {elem} runs past the body"))?;
        let place = out.len();
        out.extend_from_slice(block);
        out[dst] = relocated(p, dst, place);
    }
    Ok(())
}

/// What [`check_records`] learned about a blob's record area.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecordsCheck {
    /// Records walked.
    pub records: u64,
    /// Words read by a walker that follows every pointer (shared leaves
    /// counted at each reference).
    pub walked_words: u64,
    /// References to leaves stored elsewhere than in pre-order (interned).
    pub shared_refs: u64,
}

/// One struct list to check: where its list pointer is.
pub struct ListAt {
    /// The word of the list pointer.
    pub pointer: usize,
}

/// Checks the layout of the record area that starts at word `start` (a
/// `Records` struct) of `body`: every object reachable from it lies in
/// pre-order, each exactly once, right after the one before (as a
/// canonical message would), except leaves, which may be anywhere in the
/// body and referenced any number of times. So no pointer cycle exists, no
/// object but a leaf is shared, and a walker that follows every pointer
/// reads at most `walked_words` words, which must stay within `bound`.
pub fn check_records(
    body: &[u64],
    start_ptr: usize,
    bound: u64,
) -> Result<RecordsCheck, WireError> {
    let mut c = Checker {
        body,
        cursor: 0,
        stats: RecordsCheck::default(),
        bound,
    };
    let root = Ptr(*body
        .get(start_ptr)
        .ok_or("records pointer outside the body")?);
    if root.0 == 0 {
        return Ok(c.stats);
    }
    let (own, _) = object_words(root);
    c.cursor = target(body, start_ptr, root, own)?;
    c.pointer(start_ptr, 0)?;
    Ok(c.stats)
}

struct Checker<'a> {
    body: &'a [u64],
    cursor: usize,
    stats: RecordsCheck,
    bound: u64,
}

impl Checker<'_> {
    fn walked(&mut self, words: u64) -> Result<(), WireError> {
        self.stats.walked_words += words;
        if self.stats.walked_words > self.bound {
            return Err(format!(
                "following every pointer reads more than {} words: shared leaves fan out too far",
                self.bound
            ));
        }
        Ok(())
    }

    /// Checks the subtree of the pointer at `at`.
    fn pointer(&mut self, at: usize, depth: u32) -> Result<(), WireError> {
        let p = Ptr(self.body[at]);
        if p.0 == 0 || p.is_empty_struct() {
            return Ok(());
        }
        if depth >= MAX_DEPTH {
            return Err(format!("objects nest deeper than {MAX_DEPTH} at word {at}"));
        }
        match p.kind() {
            2 => return Err(format!("far pointer at word {at}: the body is one segment")),
            3 => {
                return Err(format!(
                    "capability pointer at word {at}: records hold no capabilities"
                ))
            }
            _ => {}
        }
        let (own, is_struct) = object_words(p);
        let t = target(self.body, at, p, own)?;
        if t != self.cursor {
            // Not in pre-order: only a leaf may be elsewhere.
            let Some(words) = leaf_words(self.body, at)? else {
                return Err(format!(
                    "pointer at word {at} shares or misplaces an object that is not a leaf \
                     (at word {t}, expected {})",
                    self.cursor
                ));
            };
            self.stats.shared_refs += 1;
            return self.walked(words);
        }
        self.cursor += own as usize;
        self.walked(own)?;
        if is_struct {
            let d = p.data_words() as usize;
            for i in 0..p.ptr_count() as usize {
                self.pointer(t + d + i, depth + 1)?;
            }
            return Ok(());
        }
        match p.elem_size() {
            SIZE_POINTER => {
                for i in 0..p.count() as usize {
                    self.pointer(t + i, depth + 1)?;
                }
            }
            SIZE_COMPOSITE => {
                let tag = Ptr(self.body[t]);
                let (d, n) = (tag.data_words() as u64, tag.ptr_count() as u64);
                let elems = tag.offset();
                if tag.kind() != 0 || elems < 0 || (elems as u64) * (d + n) > own - 1 {
                    return Err(format!("composite list at word {t} has a bad tag"));
                }
                for e in 0..elems as u64 {
                    if depth == 2 {
                        self.stats.records += 1;
                    }
                    for i in 0..n {
                        self.pointer((t as u64 + 1 + e * (d + n) + d + i) as usize, depth + 1)?;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical<T: capnp::traits::Owned>(build: impl FnOnce(T::Builder<'_>)) -> Vec<u64>
    where
        for<'a> T::Builder<'a>: capnp::traits::FromPointerBuilder<'a>,
        for<'a> T::Reader<'a>: capnp::traits::SetterInput<T>,
    {
        let mut m = capnp::message::Builder::new_default();
        build(m.init_root::<T::Builder<'_>>());
        let root = m
            .get_root_as_reader::<capnp::any_pointer::Reader<'_>>()
            .unwrap();
        let mut out = Vec::new();
        crate::schema::record::append_canonical(root, None, &mut Vec::new(), &mut out).unwrap();
        out
    }

    /// [`place_record`] into a body held whole in memory: the element at word
    /// `elem` of `out` (`data + ptrs` words, allocated and zeroed), children
    /// appended to `out`.
    fn place_record_in(
        src: &[u64],
        out: &mut Vec<u64>,
        elem: usize,
        data: u16,
        ptrs: u16,
        plan: &InternPlan<'_>,
    ) -> Result<(), WireError> {
        let words = data as usize + ptrs as usize;
        let mut element = out
            .get(elem..elem + words)
            .ok_or_else(|| format!("element at word {elem} runs past the body"))?
            .to_vec();
        place_record(src, &mut element, elem, data, plan, |block| {
            let at = out.len();
            out.extend_from_slice(block);
            at
        })?;
        out[elem..elem + words].copy_from_slice(&element);
        Ok(())
    }

    fn movie(id: u64, title: &str, tags: &[&str]) -> Vec<u64> {
        use crate::schema::movies_capnp::movie;
        canonical::<movie::Owned>(|mut m| {
            m.set_id(id);
            m.set_year(1990);
            m.set_title(title);
            let mut t = m.init_tags(tags.len() as u32);
            for (i, tag) in tags.iter().enumerate() {
                t.set(i as u32, *tag);
            }
        })
    }

    /// A records area as the writer lays it out: word 0 points at a
    /// `Records` struct of one pointer, to a list of one struct list of
    /// `records`, children after it. Returns the body and the word of the
    /// first element (elements of 2 data words and 2 pointers).
    fn records_area(records: &[Vec<u64>]) -> (Vec<u64>, usize) {
        let interner = Interner::default();
        let plan = InternPlan {
            fields: 0,
            interner: &interner,
            pool_at: 0,
        };
        let n = records.len();
        let mut out = vec![
            Ptr::to_struct(0, 0, 1),
            Ptr::to_list(0, SIZE_POINTER, 1),
            Ptr::to_list(0, SIZE_COMPOSITE, (n * 4) as u32),
            Ptr::to_struct(n as i64, 2, 2),
        ];
        let first = out.len();
        out.resize(first + n * 4, 0);
        for (i, r) in records.iter().enumerate() {
            place_record_in(r, &mut out, first + i * 4, 2, 2, &plan).unwrap();
        }
        (out, first)
    }

    /// Invariant: the layout proof accepts what the writer lays out, and
    /// refuses by name a far or capability pointer, an object other than a
    /// leaf reached twice (a shared record, a cycle), and leaf sharing
    /// that fans out past its bound.
    #[test]
    fn check_records_names_what_it_refuses() {
        let records = [movie(1, "One", &["a"]), movie(2, "Two", &["b", "c"])];
        let (body, first) = records_area(&records);
        let check = check_records(&body, 0, 1 << 20).unwrap();
        assert_eq!((check.records, check.shared_refs), (2, 0));
        let refused = |at: usize, word: u64, bound: u64| {
            let mut bad = body.clone();
            bad[at] = word;
            check_records(&bad, 0, bound).unwrap_err()
        };
        let (title0, tags0, title1) = (first + 2, first + 3, first + 6);
        let err = refused(tags0, 2 | 1 << 32, 1 << 20);
        assert!(
            err.contains(&format!("far pointer at word {tags0}")),
            "{err}"
        );
        let err = refused(tags0, 3, 1 << 20);
        assert!(err.contains("capability pointer"), "{err}");
        // Record 1's title aimed at record 0's struct.
        let shared = Ptr::to_struct(first as i64 - title1 as i64 - 1, 2, 2);
        let err = refused(title1, shared, 1 << 20);
        assert!(
            err.contains("shares or misplaces an object that is not a leaf"),
            "{err}"
        );
        // Record 0's tags aimed back at the list that holds it.
        let cycle = Ptr(body[2]).with_offset(3 - tags0 as i64 - 1);
        let err = refused(tags0, cycle, 1 << 20);
        assert!(err.contains("not a leaf"), "{err}");
        // Record 1's title aimed at record 0's: a leaf shared, legal, and
        // counted at each reference against the bound.
        let t0 = target(&body, title0, Ptr(body[title0]), 0).unwrap();
        let leaf = Ptr(body[title0]).with_offset(t0 as i64 - title1 as i64 - 1);
        let mut fanned = body.clone();
        fanned[title1] = leaf;
        let ok = check_records(&fanned, 0, 1 << 20).unwrap();
        // Record 1's own title is left unreferenced, so its tags, after
        // it, are out of pre-order too: a leaf, so shared as well.
        assert_eq!(ok.shared_refs, 2);
        let err = check_records(&fanned, 0, ok.walked_words - 1).unwrap_err();
        assert!(err.contains("shared leaves fan out too far"), "{err}");
    }

    /// Invariant: a record placed into a list element and read back
    /// canonically is the same words, with its leaves interned or not.
    #[test]
    fn place_then_canonical_is_the_identity() {
        let records = [
            movie(1, "One", &["action", "drama"]),
            movie(2, "", &[]),
            movie(3, "Three", &["action", "drama"]),
            movie(0, "", &["x"]),
        ];
        for interned in [false, true] {
            let mut interner = Interner::default();
            if interned {
                for r in &records {
                    for (_, block) in leaf_children(r).unwrap() {
                        interner.find_or_add(&r[block], true);
                    }
                }
            }
            let mut out = vec![0u64; 1];
            out.extend_from_slice(interner.pool());
            let plan = InternPlan {
                fields: if interned { u64::MAX } else { 0 },
                interner: &interner,
                pool_at: 1,
            };
            let (data, ptrs) = (2u16, 2u16);
            let first = out.len();
            out.resize(first + records.len() * 4, 0);
            for (i, r) in records.iter().enumerate() {
                place_record_in(r, &mut out, first + i * 4, data, ptrs, &plan).unwrap();
            }
            for (i, r) in records.iter().enumerate() {
                let mut back = Vec::new();
                canonical_record(&out, first + i * 4, data, ptrs, &mut back).unwrap();
                assert_eq!(&back, r, "record {i}, interned {interned}");
            }
        }
    }
}

//! Following Cap'n Proto pointers in one segment of words, bounds-checked
//! and with a work budget: what [`super::DynamicSchema`] reads records by.

use super::DynamicError;
use crate::schema::wire::{list_body_words, Ptr, SIZE_COMPOSITE, SIZE_POINTER};
use std::cell::Cell;

/// Bounds on one dynamic read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deepest nesting of objects below the record.
    pub max_depth: u32,
    /// Most words read plus elements visited by one read.
    pub max_units: u64,
}

impl std::default::Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: 64,
            max_units: 1 << 26,
        }
    }
}

/// One read's segment, budget and where it is (for errors).
pub(super) struct Walk<'a> {
    pub seg: &'a [u64],
    pub bytes: &'a [u8],
    limits: Limits,
    used: Cell<u64>,
}

/// A struct in the segment: its data section (bytes from `data`, `bits`
/// long) and its pointers (words from `ptrs`, `ptr_count` of them).
#[derive(Debug, Clone, Copy)]
pub(super) struct StructAt {
    pub data: usize,
    pub bits: u64,
    pub ptrs: usize,
    pub ptr_count: u16,
}

/// How a list's elements are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Elem {
    /// Elements of 0, 1, 8, 16, 32 or 64 bits.
    Bits(u32),
    /// One pointer each.
    Pointer,
    /// Structs of `data` words and `ptrs` pointers (after a tag word).
    Composite { data: u16, ptrs: u16 },
}

/// A list in the segment: `count` elements from word `start`.
#[derive(Debug, Clone, Copy)]
pub(super) struct ListAt {
    pub elem: Elem,
    pub start: usize,
    pub count: u32,
}

impl ListAt {
    /// Element `i` read as a struct; a bit list cannot be.
    pub fn struct_at(&self, i: u32) -> Option<StructAt> {
        let i = i as usize;
        Some(match self.elem {
            Elem::Bits(1) => return None,
            Elem::Bits(bits) => StructAt {
                data: self.start * 8 + i * bits as usize / 8,
                bits: u64::from(bits),
                ptrs: 0,
                ptr_count: 0,
            },
            Elem::Pointer => StructAt {
                data: 0,
                bits: 0,
                ptrs: self.start + i,
                ptr_count: 1,
            },
            Elem::Composite { data, ptrs } => {
                let at = self.start + i * (data as usize + ptrs as usize);
                StructAt {
                    data: at * 8,
                    bits: u64::from(data) * 64,
                    ptrs: at + data as usize,
                    ptr_count: ptrs,
                }
            }
        })
    }
}

/// What a pointer points at.
#[derive(Debug, Clone, Copy)]
pub(super) enum Target {
    Null,
    Struct(StructAt),
    List(ListAt),
    /// A capability: records hold none; read as null.
    Capability,
}

impl<'a> Walk<'a> {
    pub fn new(seg: &'a [u64], limits: Limits) -> Self {
        Walk {
            seg,
            bytes: crate::schema::record::words_as_bytes(seg),
            limits,
            used: Cell::new(0),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Counts `units` of work against the budget.
    pub fn spend(&self, units: u64, path: &dyn Fn() -> String) -> Result<(), DynamicError> {
        let used = self.used.get().saturating_add(units);
        self.used.set(used);
        if used > self.limits.max_units {
            return Err(DynamicError::TooMuchWork {
                path: path(),
                limit: self.limits.max_units,
            });
        }
        Ok(())
    }

    /// The bits `[bit, bit + width)` of a struct's data section, zero past
    /// its end.
    pub fn data_bits(&self, s: &StructAt, bit: u64, width: u32) -> u64 {
        if width == 0 || bit + u64::from(width) > s.bits {
            return 0;
        }
        let at = s.data + (bit / 8) as usize;
        if width == 1 {
            return u64::from(self.bytes.get(at).copied().unwrap_or(0) >> (bit % 8) & 1);
        }
        let n = (width / 8) as usize;
        let mut buf = [0u8; 8];
        if let Some(src) = self.bytes.get(at..at + n) {
            buf[..n].copy_from_slice(src);
        }
        u64::from_le_bytes(buf)
    }

    /// Resolves the pointer at word `at` (a struct's pointer, or a list
    /// element), following a far pointer within this segment.
    pub fn resolve(&self, at: usize, path: &dyn Fn() -> String) -> Result<Target, DynamicError> {
        let bad = |reason: String| DynamicError::Bytes {
            path: path(),
            reason,
        };
        let word = *self
            .seg
            .get(at)
            .ok_or_else(|| bad(format!("pointer at word {at} is outside the segment")))?;
        let p = Ptr(word);
        if word == 0 {
            return Ok(Target::Null);
        }
        match p.kind() {
            2 => {
                if word >> 32 != 0 {
                    return Err(bad(format!(
                        "far pointer at word {at} to segment {}: the blob has one segment",
                        word >> 32
                    )));
                }
                let pad = (word as u32 >> 3) as usize;
                if (word >> 2) & 1 == 0 {
                    // The landing pad is an ordinary pointer, relative to
                    // itself; it may not be another far pointer.
                    let inner = *self
                        .seg
                        .get(pad)
                        .ok_or_else(|| bad(format!("landing pad {pad} outside the segment")))?;
                    if Ptr(inner).kind() == 2 {
                        return Err(bad(format!("landing pad {pad} is another far pointer")));
                    }
                    return self.object(pad, Ptr(inner), None, &bad);
                }
                // Double far: a far pointer to the object, then a tag.
                let (first, tag) = match (self.seg.get(pad), self.seg.get(pad + 1)) {
                    (Some(&f), Some(&t)) => (f, t),
                    _ => return Err(bad(format!("landing pad {pad} outside the segment"))),
                };
                if Ptr(first).kind() != 2 || first >> 32 != 0 || (first >> 2) & 1 != 0 {
                    return Err(bad(format!("double-far landing pad {pad} is malformed")));
                }
                self.object(pad + 1, Ptr(tag), Some((first as u32 >> 3) as usize), &bad)
            }
            3 => Ok(Target::Capability),
            _ => self.object(at, p, None, &bad),
        }
    }

    /// The object of struct or list pointer `p` at word `at`; its content
    /// starts at `content` when given (a double-far tag), else at the
    /// pointer's offset.
    fn object(
        &self,
        at: usize,
        p: Ptr,
        content: Option<usize>,
        bad: &dyn Fn(String) -> DynamicError,
    ) -> Result<Target, DynamicError> {
        let start = match content {
            Some(c) => c as i64,
            None => at as i64 + 1 + p.offset(),
        };
        let len = self.seg.len() as u64;
        let within = |words: u64| -> Result<usize, DynamicError> {
            if start < 0 || (start as u64).saturating_add(words) > len {
                return Err(bad(format!(
                    "pointer at word {at} targets words {start}..+{words}, outside the segment of {len} words"
                )));
            }
            Ok(start as usize)
        };
        match p.kind() {
            0 => {
                let (d, n) = (p.data_words(), p.ptr_count());
                let t = within(u64::from(d) + u64::from(n))?;
                Ok(Target::Struct(StructAt {
                    data: t * 8,
                    bits: u64::from(d) * 64,
                    ptrs: t + d as usize,
                    ptr_count: n,
                }))
            }
            1 => {
                let size = p.elem_size();
                let words = list_body_words(size, p.count());
                let t = within(words)?;
                let elem = match size {
                    0 => Elem::Bits(0),
                    1 => Elem::Bits(1),
                    2 => Elem::Bits(8),
                    3 => Elem::Bits(16),
                    4 => Elem::Bits(32),
                    5 => Elem::Bits(64),
                    SIZE_POINTER => Elem::Pointer,
                    _ => {
                        debug_assert_eq!(size, SIZE_COMPOSITE);
                        let tag = Ptr(self.seg[t]);
                        let (d, n) = (tag.data_words(), tag.ptr_count());
                        let count = tag.offset();
                        let body = words - 1;
                        if tag.kind() != 0
                            || count < 0
                            || (count as u64).saturating_mul(u64::from(d) + u64::from(n)) > body
                        {
                            return Err(bad(format!(
                                "struct list at word {t} has a tag that does not fit its {body} words"
                            )));
                        }
                        return Ok(Target::List(ListAt {
                            elem: Elem::Composite { data: d, ptrs: n },
                            start: t + 1,
                            count: count as u32,
                        }));
                    }
                };
                Ok(Target::List(ListAt {
                    elem,
                    start: t,
                    count: p.count(),
                }))
            }
            _ => Err(bad(format!("pointer at word {at} is not a struct or list"))),
        }
    }
}

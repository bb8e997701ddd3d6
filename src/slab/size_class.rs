//! Size classes: which object size serves a request, and each class's slab
//! geometry.
//!
//! Every class is a multiple of 16 bytes, because glibc gives 16-byte
//! alignment for every size on x86-64 and programs rely on it. Classes are
//! 16 bytes apart up to 128 B, then eight per doubling up to 32 KiB:
//!
//! | range (B)      | step (B) | classes                         |
//! |----------------|----------|---------------------------------|
//! | 16 ..= 128     | 16       | 16 32 48 64 80 96 112 128       |
//! | 129 ..= 256    | 16       | 144 160 176 192 208 224 240 256 |
//! | 257 ..= 512    | 32       | 288 320 ... 512                 |
//! | 513 ..= 1024   | 64       | 576 640 ... 1024                |
//! | 1 Ki ..= 2 Ki  | 128      | 1152 ... 2048                   |
//! | 2 Ki ..= 4 Ki  | 256      | 2304 ... 4096                   |
//! | 4 Ki ..= 8 Ki  | 512      | 4608 ... 8192                   |
//! | 8 Ki ..= 16 Ki | 1 Ki     | 9216 ... 16384                  |
//! | 16 Ki ..= 32 Ki| 2 Ki     | 18432 ... 32768                 |
//!
//! 72 classes. Internal waste: with eight classes per doubling, a request
//! of `s > 128` bytes lands in a class less than `s + s/8`, so waste stays
//! under 12.5 % of the request. From 65 to 128 B the 16-byte spacing is the
//! alignment guarantee itself: no class wastes more than the mandatory
//! rounding to 16. Requests above 32 KiB take whole pages from the buddy
//! allocator (less than one page of waste, under 12.5 % above 32 KiB) or
//! their own mapping at the mmap threshold.
//!
//! Each class's slab is one buddy block: the smallest order (up to 6, 256
//! KiB) that leaves at most 1/8 of the slab unused.

/// Number of size classes.
pub const NR_CLASSES: usize = 72;
/// Largest request served by a slab.
pub const SLAB_MAX: usize = 32 * 1024;
/// Requests up to this size use the lookup table.
pub const TABLE_MAX: usize = 1024;

/// Geometry of one slab cache.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassInfo {
    /// Object size in bytes (a multiple of 16).
    pub size: u32,
    /// Buddy order of a slab.
    pub order: u8,
    /// Objects per slab.
    pub objects: u16,
    /// `ceil(2^64 / size)`. For an offset `n < 2^32` inside a slab,
    /// `n * magic` modulo 2^64 is `(n / size) * e` when `size` divides `n`
    /// (`e = size * magic - 2^64`, less than `size`), and at least `magic`
    /// when it does not (Lemire, Kaser and Kurz's divisibility test): one
    /// multiply and one compare with [`ClassInfo::bound`] tell a slot's
    /// start from anything else on `free`'s fast path.
    pub magic: u64,
    /// `objects * e`, or 1 when `e` is 0 (a power-of-two size, whose slots
    /// fill the slab): the products of the slot starts are exactly the
    /// values below it.
    pub bound: u64,
    /// Slab size in bytes minus one: slabs are naturally aligned buddy
    /// blocks, so `address & slab_mask` is the offset inside the slab.
    pub slab_mask: u32,
}

// `free` indexes the table with a shift.
const _: () = assert!(core::mem::size_of::<ClassInfo>() == 32);

impl ClassInfo {
    /// Whether `addr` is the start of an object slot of this class in the
    /// slab that holds it (a whole number of objects from the slab start,
    /// not in the unused tail).
    #[inline(always)]
    pub fn is_object_start(&self, addr: usize) -> bool {
        slot_start_test(addr, self.slab_mask, self.magic, self.bound)
    }
}

/// The test behind [`ClassInfo::is_object_start`] and [`is_slot_start`]:
/// `addr`'s offset in its slab (`addr & slab_mask`) times `magic` is
/// below `bound` exactly at a slot's start.
#[inline(always)]
fn slot_start_test(addr: usize, slab_mask: u32, magic: u64, bound: u64) -> bool {
    let offset = (addr & slab_mask as usize) as u64;
    offset.wrapping_mul(magic) < bound
}

/// [`ClassInfo::magic`] and [`ClassInfo::bound`] for `objects` slots of
/// `size` bytes in a slab of `slab` bytes.
const fn slot_test(size: usize, objects: usize, slab: usize) -> (u64, u64) {
    let magic = u64::MAX / size as u64 + 1;
    let e = (size as u64).wrapping_mul(magic);
    if e == 0 {
        // A power of two: every multiple inside the slab is a slot.
        assert!(objects * size == slab);
        (magic, 1)
    } else {
        (magic, objects as u64 * e)
    }
}

pub(crate) const fn class_size(index: usize) -> usize {
    if index < 8 {
        return (index + 1) * 16;
    }
    let doubling = (index - 8) / 8; // 0 for 129..=256
    let step_index = (index - 8) % 8 + 1; // 1..=8
    let base = 128usize << doubling;
    base + step_index * (base / 8)
}

/// Geometry for an object size: the smallest slab order whose unused tail is
/// at most 1/8 of the slab.
pub const fn geometry(size: usize) -> ClassInfo {
    let mut order = 0;
    loop {
        let slab = 4096usize << order;
        let objects = slab / size;
        let left = slab - objects * size;
        if (objects >= 1 && left * 8 <= slab) || order == 6 {
            let objects = if objects > u16::MAX as usize { u16::MAX as usize } else { objects };
            return ClassInfo {
                size: size as u32,
                order: order as u8,
                objects: objects as u16,
                magic: slot_test(size, objects, slab).0,
                bound: slot_test(size, objects, slab).1,
                slab_mask: (slab - 1) as u32,
            };
        }
        order += 1;
    }
}

const fn build_classes() -> [ClassInfo; NR_CLASSES] {
    let mut out = [ClassInfo { size: 0, order: 0, objects: 0, magic: 0, bound: 0, slab_mask: 0 }; NR_CLASSES];
    let mut i = 0;
    while i < NR_CLASSES {
        out[i] = geometry(class_size(i));
        i += 1;
    }
    out
}

/// The class table.
pub static CLASSES: [ClassInfo; NR_CLASSES] = build_classes();

/// [`ClassInfo::is_object_start`]'s three numbers again, per slot (the
/// class plus one, a page's `user_class`; slot 0 unused), each in an
/// array of its own: `free`'s fast path reaches them from the slot with
/// x86's scaled index as it is, where the 32-byte rows of [`CLASSES`]
/// need a shift.
#[repr(C)]
pub struct SlotTests {
    magic: [u64; NR_CLASSES + 1],
    bound: [u64; NR_CLASSES + 1],
    slab_mask: [u32; NR_CLASSES + 1],
}

const fn build_slot_tests() -> SlotTests {
    let mut t = SlotTests { magic: [0; NR_CLASSES + 1], bound: [0; NR_CLASSES + 1], slab_mask: [0; NR_CLASSES + 1] };
    let mut i = 0;
    while i < NR_CLASSES {
        t.magic[i + 1] = CLASSES[i].magic;
        t.bound[i + 1] = CLASSES[i].bound;
        t.slab_mask[i + 1] = CLASSES[i].slab_mask;
        i += 1;
    }
    t
}

/// See [`SlotTests`].
pub static SLOT_TESTS: SlotTests = build_slot_tests();

/// [`ClassInfo::is_object_start`] of the class at `slot` (its index + 1).
///
/// # Safety
/// `1 <= slot <= NR_CLASSES`.
#[inline(always)]
pub unsafe fn is_slot_start(slot: usize, addr: usize) -> bool {
    debug_assert!((1..=NR_CLASSES).contains(&slot));
    // SAFETY: in bounds by the caller's promise.
    unsafe {
        slot_start_test(
            addr,
            *SLOT_TESTS.slab_mask.get_unchecked(slot),
            *SLOT_TESTS.magic.get_unchecked(slot),
            *SLOT_TESTS.bound.get_unchecked(slot),
        )
    }
}

/// [`class_of`] by arithmetic, also for tables built at compile time.
pub(crate) const fn slow_class_of(size: usize) -> usize {
    // `hardened` serves no request from the 16-byte class: there two
    // objects sit 16 bytes apart, so `free(p - 16)` (a pointer adjusted
    // for a header the program expects, glibc's chunk header) lands on the
    // live neighbour's slot and frees it. With 32-byte slots it lands
    // inside an object, which `free` stops. The default build keeps the
    // 16-byte class: a free of a neighbour at a slot boundary cannot be
    // told from the neighbour's own free without a header per object.
    if cfg!(feature = "hardened") && size <= 16 {
        return 1;
    }
    if size <= 128 {
        return if size == 0 { 0 } else { (size - 1) >> 4 };
    }
    let s = size - 1;
    let k = (usize::BITS - 1 - s.leading_zeros()) as usize; // floor(log2(s)) >= 7
    (k - 7) * 8 + (s >> (k - 3))
}

const fn build_table() -> [u8; TABLE_MAX / 16 + 1] {
    let mut t = [0u8; TABLE_MAX / 16 + 1];
    let mut i = 0;
    while i <= TABLE_MAX / 16 {
        t[i] = slow_class_of(i * 16) as u8;
        i += 1;
    }
    t
}

/// Class index for `(size + 15) / 16`, sizes up to 1 KiB.
static SMALL_TABLE: [u8; TABLE_MAX / 16 + 1] = build_table();

/// The class serving a request of `size` bytes. `size <= SLAB_MAX`.
#[inline]
pub fn class_of(size: usize) -> usize {
    debug_assert!(size <= SLAB_MAX);
    if size <= TABLE_MAX {
        // SAFETY: (size + 15) >> 4 <= 64 for size <= 1024, the table's last index.
        unsafe { *SMALL_TABLE.get_unchecked((size + 15) >> 4) as usize }
    } else {
        slow_class_of(size)
    }
}

/// Object size of class `class`.
#[inline]
pub fn size_of_class(class: usize) -> usize {
    CLASSES[class].size as usize
}

/// The smallest class of at least `size` bytes whose objects are all
/// aligned to `align` (a power of two ≤ 4096; slabs are page-aligned, so a
/// class whose size is a multiple of `align` qualifies). `None` when no
/// slab class fits.
pub fn class_for_aligned(size: usize, align: usize) -> Option<usize> {
    if size > SLAB_MAX || align > 4096 {
        return None;
    }
    (class_of(size)..NR_CLASSES).find(|&c| CLASSES[c].size as usize % align == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_documented_classes() {
        let sizes: Vec<usize> = CLASSES.iter().map(|c| c.size as usize).collect();
        assert_eq!(&sizes[..10], &[16, 32, 48, 64, 80, 96, 112, 128, 144, 160]);
        assert_eq!(sizes[15], 256);
        assert_eq!(sizes[16], 288);
        assert_eq!(*sizes.last().unwrap(), SLAB_MAX);
        assert!(sizes.windows(2).all(|w| w[0] < w[1]));
        assert!(sizes.iter().all(|s| s % 16 == 0));
    }

    #[test]
    fn every_size_gets_the_smallest_fitting_class_and_waste_is_bounded() {
        for size in 0..=SLAB_MAX {
            let c = class_of(size);
            let cs = size_of_class(c);
            assert!(cs >= size, "size {size} -> class {cs}");
            // `hardened` has no 16-byte slots (see `slow_class_of`).
            let smallest = if cfg!(feature = "hardened") { 32 } else { 16 };
            if c > 0 && cs > smallest {
                assert!(size_of_class(c - 1) < size, "size {size} not in the smallest class");
            }
            if size > 128 {
                assert!((cs - size) * 8 < size, "size {size} wastes {} in class {cs}", cs - size);
            } else {
                assert_eq!(cs, ((size.max(1) + 15) & !15).max(smallest));
            }
        }
    }

    #[test]
    fn slab_geometry_and_slot_test() {
        for (i, c) in CLASSES.iter().enumerate() {
            let slab = 4096usize << c.order;
            assert!(c.objects >= 1, "class {i}");
            assert_eq!(c.magic, (1u128 << 64).div_ceil(c.size as u128) as u64, "class {i}: magic");
            assert!((slab - c.objects as usize * c.size as usize) * 8 <= slab, "class {i} wastes > 1/8");
            // The fast divisibility test, for every offset of the slab and
            // at two slab bases.
            for base in [0usize, 7 * slab] {
                for offset in 0..slab {
                    let want = offset % c.size as usize == 0 && offset < c.objects as usize * c.size as usize;
                    assert_eq!(c.is_object_start(base + offset), want, "class {i} offset {offset}");
                    // SAFETY: 1 <= i + 1 <= NR_CLASSES.
                    assert_eq!(unsafe { is_slot_start(i + 1, base + offset) }, want, "slot {} offset {offset}", i + 1);
                }
            }
        }
    }

    #[test]
    fn aligned_classes() {
        assert_eq!(class_for_aligned(100, 64).map(size_of_class), Some(128));
        assert_eq!(class_for_aligned(1, 4096).map(size_of_class), Some(4096));
        assert_eq!(class_for_aligned(5000, 4096).map(size_of_class), Some(8192));
        assert_eq!(class_for_aligned(SLAB_MAX + 1, 16), None);
        assert_eq!(class_for_aligned(16, 8192), None);
    }
}

//! Matrix products `C = init + A · B` ([`Init`]: zero, C itself, or a bias row). B is either
//! packed once into column panels ([`PackedB`], for weights: packed once per optimizer step
//! and then used by every time step) or a strided view packed slice by slice on the fly
//! ([`gemm_strided`], for products of activations such as weight gradients).
//!
//! The f32 kernel is an AVX2/FMA register tile of up to 6 rows × 16 columns (12 accumulators,
//! chosen at run time; other CPUs and f64 use a portable kernel with the same blocking).
//! Small M (one or a few streams in generation) uses tiles of fewer rows that cover 2–4
//! panels at once, for independent FMA chains.
//!
//! Determinism: every element of C is one FMA chain over k in increasing order, restarted at
//! fixed multiples of [`KC`] (each partial sum added to C). The order depends only on K,
//! never on M, on which rows share a tile or on the thread that computes it, so row i of the
//! result is bit-identical whether A has 1 row or 256, and whatever the thread count.

use ndarray::ArrayView2;

use super::Float;

/// Columns per packed panel (two 8-lane vectors).
pub const NR: usize = 16;
/// Most rows of one register tile.
pub const MR: usize = 6;
/// Depth of one pass over K: K ≤ KC (every forward product here) is a single chain; longer
/// K is cut into KC slices whose partial sums are added to C.
pub const KC: usize = 512;
/// Rows of A per cache block (MC × KC floats stay in L2).
const MC: usize = 96;

/// B (K, N) packed into ⌈N/NR⌉ column panels; panel p holds columns p·NR..p·NR+NR as K rows
/// of NR contiguous values (the last panel zero-padded).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PackedB<F> {
    k: usize,
    n: usize,
    data: Vec<F>,
}

impl<F: Float> PackedB<F> {
    /// Rows K.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns N.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Packs `b` (K, N), any strides (pass `w.t()` to pack a transpose). Reuses the buffer.
    /// Large matrices are packed by the pool's threads, a block of panels each (a copy:
    /// the result is the same however it is split).
    pub fn pack(&mut self, b: ArrayView2<'_, F>) {
        let (k, n) = b.dim();
        self.k = k;
        self.n = n;
        let np = n.div_ceil(NR);
        self.data.clear();
        self.data.resize(np * k * NR, F::zero());
        if np == 0 || k == 0 {
            return;
        }
        let tasks = if k * n >= PAR_PACK {
            super::pool::width().min(np)
        } else {
            1
        };
        // Panel p is data[p·k·NR .. (p+1)·k·NR]: each task owns a block of whole panels.
        let per = np.div_ceil(tasks);
        let mut blocks: Vec<(usize, &mut [F])> = self
            .data
            .chunks_mut(per * k * NR)
            .enumerate()
            .map(|(i, d)| (i * per, d))
            .collect();
        super::pool::for_each_mut(&mut blocks, &|(p0, d)| pack_panels(&b, *p0, d));
    }

    /// A packed copy of `b`.
    pub fn from_view(b: ArrayView2<'_, F>) -> Self {
        let mut p = PackedB::default();
        p.pack(b);
        p
    }
}

/// Matrices of at least this many elements are packed on several threads.
const PAR_PACK: usize = if cfg!(miri) { 1 << 10 } else { 1 << 16 };

/// Packs the panels p0, p0 + 1, ... of `b` (K, N) that fit in `d` (whole panels of K × NR,
/// already zeroed, so the padding of the last panel stays zero).
fn pack_panels<F: Float>(b: &ArrayView2<'_, F>, p0: usize, d: &mut [F]) {
    let (k, n) = b.dim();
    let cnt = d.len() / (k * NR);
    let (c0, c1) = (p0 * NR, ((p0 + cnt) * NR).min(n));
    let (rs, cs) = (b.strides()[0], b.strides()[1]);
    if cs == 1 {
        // Row-major source: copy row pieces.
        for (kk, row) in b.rows().into_iter().enumerate() {
            let row = &row.to_slice().expect("unit column stride")[c0..c1];
            for (q, piece) in row.chunks(NR).enumerate() {
                let o = q * k * NR + kk * NR;
                d[o..o + piece.len()].copy_from_slice(piece);
            }
        }
    } else if rs == 1 {
        // Column-major source (a transpose): column j is contiguous.
        for j in c0..c1 {
            let col = b.column(j);
            let col = col.to_slice().expect("unit row stride");
            let (q, jj) = ((j - c0) / NR, j % NR);
            let base = q * k * NR + jj;
            for (kk, &v) in col.iter().enumerate() {
                d[base + kk * NR] = v;
            }
        }
    } else {
        for kk in 0..k {
            for j in c0..c1 {
                d[((j - c0) / NR) * k * NR + kk * NR + j % NR] = b[(kk, j)];
            }
        }
    }
}

/// Row-major matrix as a raw slice: element (i, j) at `data[i * ld + j]`.
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a, F> {
    /// The elements.
    pub data: &'a [F],
    /// Row stride (leading dimension).
    pub ld: usize,
}

/// Mutable twin of [`Mat`].
#[derive(Debug)]
pub struct MatMut<'a, F> {
    /// The elements.
    pub data: &'a mut [F],
    /// Row stride.
    pub ld: usize,
}

/// A read-only strided matrix: element (i, j) at `data[i * rs + j * cs]`, `rows` × `cols`.
#[derive(Clone, Copy, Debug)]
pub struct View<'a, F> {
    /// The elements.
    pub data: &'a [F],
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
}

impl<'a, F> View<'a, F> {
    /// A row-major (rows, cols) matrix with row stride `ld`.
    pub fn rows(data: &'a [F], rows: usize, cols: usize, ld: usize) -> Self {
        View {
            data,
            rows,
            cols,
            rs: ld,
            cs: 1,
        }
    }

    /// The transpose of a row-major (cols, rows) matrix with row stride `ld`: a (rows, cols)
    /// view.
    pub fn transposed(data: &'a [F], rows: usize, cols: usize, ld: usize) -> Self {
        View {
            data,
            rows,
            cols,
            rs: 1,
            cs: ld,
        }
    }

    fn check(&self, what: &str) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.rs + (self.cols - 1) * self.cs;
            assert!(self.data.len() > last, "gemm: {what} too short");
        }
    }
}

/// What C starts from: `C = init + A · B`.
#[derive(Clone, Copy, Debug)]
pub enum Init<'a, F> {
    /// C = A · B.
    Zero,
    /// C += A · B.
    Accumulate,
    /// C = bias + A · B, the bias (N) added to every row.
    Bias(&'a [F]),
}

/// [`Init`] of one register tile (the bias already offset to the tile's first column).
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub enum TileInit<F> {
    /// Overwrite.
    Zero,
    /// Add to C.
    Accumulate,
    /// Add to the bias.
    Bias(*const F),
}

/// Where the driver finds B.
enum BSource<'a, F> {
    /// Packed once by the caller: panels `p0..` covering `n` columns.
    Packed(&'a PackedB<F>, usize, usize),
    /// Packed one KC slice at a time into a thread-local buffer.
    Strided(View<'a, F>),
}

impl<F> BSource<'_, F> {
    /// Columns N of the product.
    fn cols(&self) -> usize {
        match self {
            BSource::Packed(_, _, n) => *n,
            BSource::Strided(v) => v.cols,
        }
    }
}

/// `C = init + A · B` for the first `m` rows of A and C. A is (m, K) with row stride
/// `a.ld`, C is (m, N) with row stride `c.ld`.
///
/// # Panics
/// If a slice is too short for the shapes (a programming error).
pub fn gemm<F: Float>(
    m: usize,
    a: Mat<'_, F>,
    b: &PackedB<F>,
    c: MatMut<'_, F>,
    init: Init<'_, F>,
) {
    assert!(a.ld >= b.k, "gemm: leading dimension of A");
    let av = View::rows(a.data, m, b.k, a.ld);
    drive(av, BSource::Packed(b, 0, b.n), c, init);
}

/// [`gemm`] on the column block `cols` of B only (start a multiple of [`NR`]): C is
/// (m, cols.len()) and its column j is column `cols.start + j` of the full product; a bias
/// covers the block's columns only. Each element is computed exactly as by [`gemm`].
///
/// # Panics
/// If `cols` is out of range or not panel-aligned, or a slice is too short.
pub fn gemm_cols<F: Float>(
    m: usize,
    a: Mat<'_, F>,
    b: &PackedB<F>,
    cols: std::ops::Range<usize>,
    c: MatMut<'_, F>,
    init: Init<'_, F>,
) {
    assert!(a.ld >= b.k, "gemm: leading dimension of A");
    assert!(
        cols.start.is_multiple_of(NR) && cols.start <= cols.end && cols.end <= b.n,
        "gemm: column block"
    );
    let av = View::rows(a.data, m, b.k, a.ld);
    drive(av, BSource::Packed(b, cols.start / NR, cols.len()), c, init);
}

/// `C = init + A · B` with both operands strided views (for products of activations, such
/// as weight gradients `Xᵀ · dG`): B is packed slice by slice on the fly. Same per-element
/// operation order as [`gemm`].
///
/// # Panics
/// If the shapes do not fit or a slice is too short (a programming error).
pub fn gemm_strided<F: Float>(a: View<'_, F>, b: View<'_, F>, c: MatMut<'_, F>, init: Init<'_, F>) {
    assert_eq!(a.cols, b.rows, "gemm: inner dimensions");
    drive(a, BSource::Strided(b), c, init);
}

/// [`gemm_cols`] writing through a raw pointer, so tasks on other threads can fill disjoint
/// column blocks of the same rows.
///
/// # Safety
/// `c` must be valid for reads and writes of rows `0..m` × columns `0..cols.len()` at row
/// stride `ldc`, and no one else may access those elements during the call.
pub(crate) unsafe fn gemm_cols_ptr<F: Float>(
    m: usize,
    a: Mat<'_, F>,
    b: &PackedB<F>,
    cols: std::ops::Range<usize>,
    c: *mut F,
    ldc: usize,
    init: Init<'_, F>,
) {
    assert!(a.ld >= b.k, "gemm: leading dimension of A");
    assert!(
        cols.start.is_multiple_of(NR) && cols.start <= cols.end && cols.end <= b.n,
        "gemm: column block"
    );
    let av = View::rows(a.data, m, b.k, a.ld);
    // SAFETY: the caller hands over C's rows 0..m × columns 0..cols.len() at stride ldc.
    unsafe {
        drive_raw(
            av,
            BSource::Packed(b, cols.start / NR, cols.len()),
            c,
            ldc,
            init,
        )
    }
}

/// [`gemm_strided`] writing through a raw pointer, so tasks on other threads can fill
/// disjoint column blocks of one matrix.
///
/// # Safety
/// `c` must be valid for reads and writes of rows `0..a.rows` × columns `0..b.cols` at row
/// stride `ldc`, and no one else may access those elements during the call.
pub(crate) unsafe fn gemm_strided_ptr<F: Float>(
    a: View<'_, F>,
    b: View<'_, F>,
    c: *mut F,
    ldc: usize,
    init: Init<'_, F>,
) {
    assert_eq!(a.cols, b.rows, "gemm: inner dimensions");
    // SAFETY: the caller hands over C's rows 0..a.rows × columns 0..b.cols at stride ldc.
    unsafe { drive_raw(a, BSource::Strided(b), c, ldc, init) }
}

fn drive<F: Float>(a: View<'_, F>, b: BSource<'_, F>, c: MatMut<'_, F>, init: Init<'_, F>) {
    let m = a.rows;
    let n = b.cols();
    if m == 0 || n == 0 {
        return;
    }
    assert!(c.ld >= n, "gemm: leading dimension of C");
    assert!(c.data.len() >= (m - 1) * c.ld + n, "gemm: C too short");
    // SAFETY: C holds rows 0..m × columns 0..n at stride c.ld (checked above), borrowed
    // exclusively for the call.
    unsafe { drive_raw(a, b, c.data.as_mut_ptr(), c.ld, init) }
}

/// [`drive`] on a C given as a raw pointer: never builds a reference to C, so tasks on
/// other threads may own other elements of the same rows.
///
/// # Safety
/// `c` must be valid for reads and writes of rows `0..a.rows` × columns `0..n` (n the
/// columns of `b`) at row stride `ldc` ≥ n, not touched by anyone else during the call.
unsafe fn drive_raw<F: Float>(
    a: View<'_, F>,
    b: BSource<'_, F>,
    c: *mut F,
    ldc: usize,
    init: Init<'_, F>,
) {
    let (m, k) = (a.rows, a.cols);
    let n = b.cols();
    if m == 0 || n == 0 {
        return;
    }
    a.check("A");
    if let BSource::Strided(v) = &b {
        v.check("B");
    }
    assert!(ldc >= n, "gemm: leading dimension of C");
    if let Init::Bias(bias) = init {
        assert!(bias.len() >= n, "gemm: bias too short");
    }
    if k == 0 {
        for i in 0..m {
            // SAFETY: row i < m, columns < n of C, which the caller hands over.
            let row = unsafe { c.add(i * ldc) };
            for j in 0..n {
                let v = match init {
                    Init::Zero => F::zero(),
                    Init::Accumulate => continue,
                    Init::Bias(bias) => bias[j],
                };
                // SAFETY: as above.
                unsafe { row.add(j).write(v) };
            }
        }
        return;
    }
    // SAFETY: A and B are checked views, the bias covers n columns, and the caller hands
    // over C's rows i < m, columns < n; the driver touches nothing else.
    unsafe { gemm_raw(a, &b, n, c, ldc, init) }
}

thread_local! {
    /// Packed A block of the current thread (f64 storage, cast to F: both f32 and f64 fit).
    static APACK: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Packed B slice of the current thread (strided B only).
    static BPACK: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A pointer to at least `len` elements of F in a thread-local buffer.
fn scratch<F>(buf: &mut Vec<f64>, len: usize) -> *mut F {
    let words = (len * std::mem::size_of::<F>()).div_ceil(8);
    if buf.len() < words {
        buf.resize(words, 0.0);
    }
    buf.as_mut_ptr() as *mut F
}

/// Packs one tile of R rows × kc columns of A (strides rs, cs) k-major into `d`.
/// # Safety
/// `a` must be valid for reads of R rows (stride `rs`) × `kc` columns (stride `cs`), and `d`
/// for writes of R·`kc` elements that do not overlap them.
#[inline(always)]
unsafe fn pack_tile<F: Float, const R: usize>(
    a: *const F,
    rs: usize,
    cs: usize,
    kc: usize,
    d: *mut F,
) {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        if cs == 1 {
            let mut rows = [a; R];
            for (i, r) in rows.iter_mut().enumerate() {
                *r = a.add(i * rs);
            }
            for kk in 0..kc {
                for (i, r) in rows.iter().enumerate() {
                    *d.add(kk * R + i) = *r.add(kk);
                }
            }
        } else {
            for kk in 0..kc {
                let src = a.add(kk * cs);
                for i in 0..R {
                    *d.add(kk * R + i) = *src.add(i * rs);
                }
            }
        }
    }
}

/// Copies rows `0..mc` × columns `0..kc` of A (strides `rs`, `cs`) into tiles of `tile`
/// rows: tile q holds `kc` groups of its rows' values (k-major), one contiguous stream.
///
/// # Safety
/// `a` must be valid for reads of rows `0..mc` (stride `rs`) × columns `0..kc` (stride
/// `cs`), and `dst` for writes of `mc`·`kc` elements that do not overlap them.
unsafe fn pack_a<F: Float>(
    a: *const F,
    rs: usize,
    cs: usize,
    mc: usize,
    kc: usize,
    tile: usize,
    dst: *mut F,
) {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        let mut off = 0;
        let mut i0 = 0;
        while i0 < mc {
            let rows = tile.min(mc - i0);
            let (src, d) = (a.add(i0 * rs), dst.add(off));
            match rows {
                6 => pack_tile::<F, 6>(src, rs, cs, kc, d),
                5 => pack_tile::<F, 5>(src, rs, cs, kc, d),
                4 => pack_tile::<F, 4>(src, rs, cs, kc, d),
                3 => pack_tile::<F, 3>(src, rs, cs, kc, d),
                2 => pack_tile::<F, 2>(src, rs, cs, kc, d),
                _ => pack_tile::<F, 1>(src, rs, cs, kc, d),
            }
            off += rows * kc;
            i0 += rows;
        }
    }
}

/// Packs rows `k0..k0+kc` of a strided B (K, N) into `np` panels of `kc` × NR (zero-padded).
///
/// # Safety
/// `b` must have at least `k0 + kc` rows, and `dst` must be valid for writes of
/// ceil(N / NR) · `kc` · NR elements that do not overlap `b`.
unsafe fn pack_b_slice<F: Float>(b: &View<'_, F>, k0: usize, kc: usize, dst: *mut F) {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        let n = b.cols;
        let np = n.div_ceil(NR);
        let base = b.data.as_ptr();
        if !n.is_multiple_of(NR) {
            let p = np - 1;
            for kk in 0..kc {
                for j in n - p * NR..NR {
                    *dst.add(p * kc * NR + kk * NR + j) = F::zero();
                }
            }
        }
        if b.cs == 1 {
            for kk in 0..kc {
                let src = base.add((k0 + kk) * b.rs);
                for p in 0..np {
                    let w = NR.min(n - p * NR);
                    let d = dst.add(p * kc * NR + kk * NR);
                    if w == NR {
                        std::ptr::copy_nonoverlapping(src.add(p * NR), d, NR);
                    } else {
                        std::ptr::copy_nonoverlapping(src.add(p * NR), d, w);
                    }
                }
            }
        } else {
            for j in 0..n {
                let src = base.add(j * b.cs + k0 * b.rs);
                let d = dst.add((j / NR) * kc * NR + j % NR);
                for kk in 0..kc {
                    *d.add(kk * NR) = *src.add(kk * b.rs);
                }
            }
        }
    }
}

/// The blocked driver: for each KC slice of K (packing it when B is strided), for each MC
/// block of rows, pack the A block into row tiles, then for each panel run the tiles. Tiles:
/// 6 rows × 1 panel for M ≥ 4, else M rows × 2–4 panels (see the module docs for why this
/// changes no result).
///
/// # Safety
/// `b` must have `a.cols` rows and `n` columns, and `c` must be valid for reads and writes
/// of `a.rows` rows × `n` columns at row stride `ldc`, overlap neither `a` nor `b`, and be
/// touched by no one else during the call.
unsafe fn gemm_raw<F: Float>(
    a: View<'_, F>,
    b: &BSource<'_, F>,
    n: usize,
    c: *mut F,
    ldc: usize,
    init: Init<'_, F>,
) {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        let (m, k) = (a.rows, a.cols);
        let np = n.div_ceil(NR);
        APACK.with(|abuf| {
            BPACK.with(|bbuf| {
                let mut abuf = abuf.borrow_mut();
                let mut bbuf = bbuf.borrow_mut();
                let ap = scratch::<F>(&mut abuf, MC.min(m) * KC.min(k));
                let bslice = match b {
                    BSource::Packed(..) => std::ptr::null_mut(),
                    BSource::Strided(_) => scratch::<F>(&mut bbuf, np * NR * KC.min(k)),
                };
                let mut k0 = 0;
                while k0 < k {
                    let kc = KC.min(k - k0);
                    // Later slices add their partial sums to C.
                    let tile_init = |col: usize| match (k0, init) {
                        (0, Init::Zero) => TileInit::Zero,
                        (0, Init::Bias(bias)) => TileInit::Bias(bias.as_ptr().add(col)),
                        _ => TileInit::Accumulate,
                    };
                    // B panels of this slice: base pointer and panel stride.
                    let (bp, pstride) = match b {
                        BSource::Packed(p, p0, _) => {
                            (p.data.as_ptr().add(p0 * p.k * NR + k0 * NR), p.k * NR)
                        }
                        BSource::Strided(v) => {
                            pack_b_slice(v, k0, kc, bslice);
                            (bslice as *const F, kc * NR)
                        }
                    };
                    let mut i0 = 0;
                    while i0 < m {
                        let mc = MC.min(m - i0);
                        let few = mc < 4;
                        let tile = if few { mc } else { MR };
                        pack_a(
                            a.data.as_ptr().add(i0 * a.rs + k0 * a.cs),
                            a.rs,
                            a.cs,
                            mc,
                            kc,
                            tile,
                            ap,
                        );
                        if few {
                            let per = match mc {
                                1 => 4,
                                2 => 3,
                                _ => 2,
                            };
                            let mut p = 0;
                            while p < np {
                                let cnt = per.min(np - p);
                                let cols = (n - p * NR).min(cnt * NR);
                                F::gemm_tile(
                                    kc,
                                    ap,
                                    bp.add(p * pstride),
                                    pstride,
                                    cnt,
                                    c.add(i0 * ldc + p * NR),
                                    ldc,
                                    mc,
                                    cols,
                                    tile_init(p * NR),
                                );
                                p += cnt;
                            }
                        } else {
                            for p in 0..np {
                                let cols = (n - p * NR).min(NR);
                                let ti = tile_init(p * NR);
                                let mut i = 0;
                                while i < mc {
                                    let rows = MR.min(mc - i);
                                    F::gemm_tile(
                                        kc,
                                        ap.add(i * kc),
                                        bp.add(p * pstride),
                                        pstride,
                                        1,
                                        c.add((i0 + i) * ldc + p * NR),
                                        ldc,
                                        rows,
                                        cols,
                                        ti,
                                    );
                                    i += rows;
                                }
                            }
                        }
                        i0 += mc;
                    }
                    k0 += kc;
                }
            })
        });
    }
}

/// Portable tile: `rows` × (`np` panels, `cols` valid columns) of C = init + A · B-panels
/// over `k` steps; A packed as `k` groups of `rows` values. Same operation order as the SIMD
/// kernels (one fused multiply-add chain per element over k, then one addition of the
/// initial value).
///
/// # Safety
/// Pointers valid for the described extents.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn tile_generic<F: Float>(
    k: usize,
    a: *const F,
    b: *const F,
    pstride: usize,
    np: usize,
    c: *mut F,
    ldc: usize,
    rows: usize,
    cols: usize,
    init: TileInit<F>,
) {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        debug_assert!(rows <= MR && np <= 4 && cols <= np * NR);
        let mut acc = [[F::zero(); 4 * NR]; MR];
        for kk in 0..k {
            for (i, acc_i) in acc.iter_mut().enumerate().take(rows) {
                let av = *a.add(kk * rows + i);
                for p in 0..np {
                    let brow = b.add(p * pstride + kk * NR);
                    for j in 0..NR {
                        let x = &mut acc_i[p * NR + j];
                        *x = F::fma(av, *brow.add(j), *x);
                    }
                }
            }
        }
        for (i, acc_i) in acc.iter().enumerate().take(rows) {
            for (j, &v) in acc_i.iter().enumerate().take(cols) {
                let dst = c.add(i * ldc + j);
                *dst = match init {
                    TileInit::Zero => v,
                    TileInit::Accumulate => *dst + v,
                    TileInit::Bias(bias) => *bias.add(j) + v,
                };
            }
        }
    }
}

/// AVX2 + FMA kernels for f32.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::{TileInit, NR};
    use std::arch::x86_64::*;

    /// Whether this CPU runs the AVX2/FMA kernels (checked once by std, cached).
    #[inline]
    pub fn available() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }

    /// Dispatch to the const-generic tile; see [`super::tile_generic`] for the contract.
    ///
    /// # Safety
    /// AVX2 and FMA present; pointers valid for the described extents.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub unsafe fn tile(
        k: usize,
        a: *const f32,
        b: *const f32,
        pstride: usize,
        np: usize,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        init: TileInit<f32>,
    ) {
        // SAFETY: the caller upholds this function's `# Safety` contract.
        unsafe {
            macro_rules! go {
                ($r:literal, $p:literal) => {
                    kernel::<$r, $p>(k, a, b, pstride, c, ldc, cols, init)
                };
            }
            match (rows, np) {
                (6, 1) => go!(6, 1),
                (5, 1) => go!(5, 1),
                (4, 1) => go!(4, 1),
                (3, 1) => go!(3, 1),
                (2, 1) => go!(2, 1),
                (1, 1) => go!(1, 1),
                (3, 2) => go!(3, 2),
                (2, 2) => go!(2, 2),
                (1, 2) => go!(1, 2),
                (2, 3) => go!(2, 3),
                (1, 3) => go!(1, 3),
                (1, 4) => go!(1, 4),
                _ => super::tile_generic(k, a, b, pstride, np, c, ldc, rows, cols, init),
            }
        }
    }

    /// R rows × P panels (2·R·P ≤ 12 accumulators).
    ///
    /// # Safety
    /// AVX2 and FMA present; `rows == R`, `np == P`, and the pointers valid for the extents
    /// of [`super::tile_generic`].
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn kernel<const R: usize, const P: usize>(
        k: usize,
        a: *const f32,
        b: *const f32,
        pstride: usize,
        c: *mut f32,
        ldc: usize,
        cols: usize,
        init: TileInit<f32>,
    ) {
        // SAFETY: the caller upholds this function's `# Safety` contract.
        unsafe {
            if let TileInit::Accumulate = init {
                // Fetch the C tile early: it is read at the end and may sit in L3.
                for i in 0..R {
                    let crow = c.add(i * ldc) as *const i8;
                    _mm_prefetch::<_MM_HINT_T0>(crow);
                    _mm_prefetch::<_MM_HINT_T0>(crow.add(P * NR * 4 - 4));
                }
            }
            let mut acc = [[[_mm256_setzero_ps(); 2]; P]; R];
            let mut bp = [b; P];
            for (p, q) in bp.iter_mut().enumerate() {
                *q = b.add(p * pstride);
            }
            let mut ap = a;
            for _ in 0..k {
                let mut bv = [[_mm256_setzero_ps(); 2]; P];
                for p in 0..P {
                    bv[p][0] = _mm256_loadu_ps(bp[p]);
                    bv[p][1] = _mm256_loadu_ps(bp[p].add(8));
                    bp[p] = bp[p].add(NR);
                }
                for (i, acc_i) in acc.iter_mut().enumerate() {
                    let av = _mm256_broadcast_ss(&*ap.add(i));
                    for p in 0..P {
                        acc_i[p][0] = _mm256_fmadd_ps(av, bv[p][0], acc_i[p][0]);
                        acc_i[p][1] = _mm256_fmadd_ps(av, bv[p][1], acc_i[p][1]);
                    }
                }
                ap = ap.add(R);
            }
            for (i, acc_i) in acc.iter().enumerate() {
                let crow = c.add(i * ldc);
                for (p, acc_ip) in acc_i.iter().enumerate() {
                    let c0 = p * NR;
                    if c0 >= cols {
                        break;
                    }
                    let dst = crow.add(c0);
                    if cols - c0 >= NR {
                        let (mut v0, mut v1) = (acc_ip[0], acc_ip[1]);
                        match init {
                            TileInit::Zero => {}
                            TileInit::Accumulate => {
                                v0 = _mm256_add_ps(_mm256_loadu_ps(dst), v0);
                                v1 = _mm256_add_ps(_mm256_loadu_ps(dst.add(8)), v1);
                            }
                            TileInit::Bias(bias) => {
                                v0 = _mm256_add_ps(_mm256_loadu_ps(bias.add(c0)), v0);
                                v1 = _mm256_add_ps(_mm256_loadu_ps(bias.add(c0 + 8)), v1);
                            }
                        }
                        _mm256_storeu_ps(dst, v0);
                        _mm256_storeu_ps(dst.add(8), v1);
                    } else {
                        let mut tmp = [0f32; NR];
                        _mm256_storeu_ps(tmp.as_mut_ptr(), acc_ip[0]);
                        _mm256_storeu_ps(tmp.as_mut_ptr().add(8), acc_ip[1]);
                        for (j, &v) in tmp.iter().enumerate().take(cols - c0) {
                            let d = dst.add(j);
                            *d = match init {
                                TileInit::Zero => v,
                                TileInit::Accumulate => *d + v,
                                TileInit::Bias(bias) => *bias.add(c0 + j) + v,
                            };
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;
    use rand::{Rng, SeedableRng};
    use rand_pcg::Pcg64;

    fn rand2(r: usize, c: usize, rng: &mut Pcg64) -> Array2<f32> {
        Array2::from_shape_fn((r, c), |_| rng.random_range(-1.0..1.0))
    }

    /// `gemm` with A and C packed tight (row strides K and N of `pb`).
    fn mul<F: Float>(m: usize, a: &[F], pb: &PackedB<F>, c: &mut [F], init: Init<'_, F>) {
        let (k, n) = (pb.k(), pb.n());
        gemm(
            m,
            Mat { data: a, ld: k },
            pb,
            MatMut { data: c, ld: n },
            init,
        );
    }

    fn naive(a: &Array2<f32>, b: &Array2<f32>) -> Array2<f64> {
        let a = a.mapv(|v| v as f64);
        let b = b.mapv(|v| v as f64);
        a.dot(&b)
    }

    #[test]
    fn parallel_packing_puts_every_element_in_its_panel() {
        let mut rng = Pcg64::seed_from_u64(5);
        // Large enough for several threads; N not a multiple of NR (smaller under Miri,
        // where the threshold is lower too).
        let b = if cfg!(miri) {
            rand2(37, 61, &mut rng)
        } else {
            rand2(301, 517, &mut rng)
        };
        assert!(b.len() >= PAR_PACK);
        for view in [b.view(), b.t()] {
            let (k, n) = view.dim();
            let p = PackedB::from_view(view);
            assert_eq!(p.data.len(), n.div_ceil(NR) * k * NR);
            for kk in 0..k {
                for j in 0..n.div_ceil(NR) * NR {
                    let got = p.data[(j / NR) * k * NR + kk * NR + j % NR];
                    let want = if j < n { view[(kk, j)] } else { 0.0 };
                    assert_eq!(got, want, "({kk}, {j}) of {k}x{n}");
                }
            }
        }
    }

    #[test]
    fn matches_naive_product_for_awkward_shapes() {
        let mut rng = Pcg64::seed_from_u64(1);
        for &(m, k, n) in &[
            (1, 1, 1),
            (7, 3, 17),
            (13, 300, 33),
            (2, 520, 50),
            (3, 5, 64),
            (6, 16, 16),
        ] {
            let a = rand2(m, k, &mut rng);
            let b = rand2(k, n, &mut rng);
            let pb = PackedB::from_view(b.view());
            let mut c = Array2::<f32>::zeros((m, n));
            mul(
                m,
                a.as_slice().unwrap(),
                &pb,
                c.as_slice_mut().unwrap(),
                Init::Zero,
            );
            let want = naive(&a, &b);
            for (g, w) in c.iter().zip(want.iter()) {
                assert!(
                    (*g as f64 - w).abs() < 1e-4 * (1.0 + w.abs()),
                    "{m}x{k}x{n}: {g} vs {w}"
                );
            }
            // accumulate adds
            let before = c.clone();
            mul(
                m,
                a.as_slice().unwrap(),
                &pb,
                c.as_slice_mut().unwrap(),
                Init::Accumulate,
            );
            for (g, w) in c.iter().zip(before.iter()) {
                assert!((g - 2.0 * w).abs() <= 1e-5 * (1.0 + w.abs()));
            }
        }
    }

    #[test]
    fn packing_a_transpose_equals_packing_its_copy() {
        let mut rng = Pcg64::seed_from_u64(2);
        let w = rand2(37, 21, &mut rng);
        let t = w.t().as_standard_layout().into_owned();
        assert_eq!(PackedB::from_view(w.t()), PackedB::from_view(t.view()));
        let s = w.slice(ndarray::s![..;2, ..;3]);
        let so = s.as_standard_layout().into_owned();
        assert_eq!(PackedB::from_view(s), PackedB::from_view(so.view()));
    }

    #[test]
    fn row_results_do_not_depend_on_m() {
        // The same row computed alone, in a tile of 2..6 rows, or in a big block must be
        // bit-identical.
        let mut rng = Pcg64::seed_from_u64(3);
        // Smaller under Miri: the same code paths, K still just over one KC block.
        let (rows, k, n) = if cfg!(miri) {
            (12, KC + 8, 20)
        } else {
            (200, 600, 70)
        };
        let a = rand2(rows, k, &mut rng);
        let b = PackedB::from_view(rand2(k, n, &mut rng).view());
        let full = {
            let mut c = vec![0f32; rows * n];
            mul(rows, a.as_slice().unwrap(), &b, &mut c, Init::Zero);
            c
        };
        for m in 1..=8 {
            for start in [0, 5, rows / 2 + 1, rows - m] {
                let mut c = vec![0f32; m * n];
                let rows = &a.as_slice().unwrap()[start * k..];
                mul(m, rows, &b, &mut c, Init::Zero);
                assert_eq!(
                    &c[..],
                    &full[start * n..(start + m) * n],
                    "m {m} start {start}"
                );
            }
        }
    }

    #[test]
    fn strided_operands_give_the_same_bits_as_packed() {
        let mut rng = Pcg64::seed_from_u64(5);
        let shapes: &[(usize, usize, usize)] = if cfg!(miri) {
            &[(7, KC + 8, 9), (2, 9, 16)]
        } else {
            &[(7, 1100, 37), (2, 9, 16), (40, 600, 70)]
        };
        for &(m, k, n) in shapes {
            // A = Xᵀ with X (K, M); B strided both ways.
            let x = rand2(k, m, &mut rng);
            let b = rand2(k, n, &mut rng);
            let bt = b.t().as_standard_layout().into_owned(); // (N, K)
            let a_rows = x.t().as_standard_layout().into_owned();
            let pb = PackedB::from_view(b.view());
            let mut want = vec![0f32; m * n];
            mul(m, a_rows.as_slice().unwrap(), &pb, &mut want, Init::Zero);
            let av = View::transposed(x.as_slice().unwrap(), m, k, m);
            for bv in [
                View::rows(b.as_slice().unwrap(), k, n, n),
                View::transposed(bt.as_slice().unwrap(), k, n, k),
            ] {
                let mut got = vec![0f32; m * n];
                gemm_strided(
                    av,
                    bv,
                    MatMut {
                        data: &mut got,
                        ld: n,
                    },
                    Init::Zero,
                );
                assert_eq!(got, want, "{m}x{k}x{n}");
            }
            let naive = naive(&a_rows, &b);
            for (g, w) in want.iter().zip(naive.iter()) {
                assert!((*g as f64 - w).abs() < 1e-3 * (1.0 + w.abs()));
            }
        }
    }

    #[test]
    fn bias_init_equals_adding_to_a_copied_bias() {
        let mut rng = Pcg64::seed_from_u64(6);
        let (m, k, n) = (9, 700, 37);
        let a = rand2(m, k, &mut rng);
        let pb = PackedB::from_view(rand2(k, n, &mut rng).view());
        let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.37 - 3.0).collect();
        let mut c1 = vec![0f32; m * n];
        mul(m, a.as_slice().unwrap(), &pb, &mut c1, Init::Bias(&bias));
        let mut c2: Vec<f32> = (0..m).flat_map(|_| bias.iter().copied()).collect();
        mul(m, a.as_slice().unwrap(), &pb, &mut c2, Init::Accumulate);
        assert_eq!(c1, c2);
        let mut c3 = vec![0f32; m * n];
        mul(m, a.as_slice().unwrap(), &pb, &mut c3, Init::Zero);
        assert!(c1
            .iter()
            .zip(&c3)
            .enumerate()
            .all(|(i, (x, y))| (x - y - bias[i % n]).abs() < 1e-4));
    }

    #[test]
    fn column_blocks_give_the_same_bits() {
        let mut rng = Pcg64::seed_from_u64(7);
        let (m, k, n) = (3, 600, 70);
        let a = rand2(m, k, &mut rng);
        let pb = PackedB::from_view(rand2(k, n, &mut rng).view());
        let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.1).collect();
        let am = Mat {
            data: a.as_slice().unwrap(),
            ld: k,
        };
        let mut full = vec![0f32; m * n];
        gemm(
            m,
            am,
            &pb,
            MatMut {
                data: &mut full,
                ld: n,
            },
            Init::Bias(&bias),
        );
        for cols in [0..16, 16..48, 48..70, 64..70, 0..70] {
            let w = cols.len();
            let mut part = vec![0f32; m * w];
            gemm_cols(
                m,
                am,
                &pb,
                cols.clone(),
                MatMut {
                    data: &mut part,
                    ld: w,
                },
                Init::Bias(&bias[cols.clone()]),
            );
            for i in 0..m {
                assert_eq!(
                    &part[i * w..(i + 1) * w],
                    &full[i * n + cols.start..i * n + cols.end]
                );
            }
        }
    }

    #[test]
    fn f64_uses_the_same_driver() {
        let mut rng = Pcg64::seed_from_u64(4);
        let a = Array2::from_shape_fn((9, 300), |_| rng.random_range(-1.0..1.0f64));
        let b = Array2::from_shape_fn((300, 20), |_| rng.random_range(-1.0..1.0f64));
        let pb = PackedB::from_view(b.view());
        let mut c = Array2::<f64>::zeros((9, 20));
        mul(
            9,
            a.as_slice().unwrap(),
            &pb,
            c.as_slice_mut().unwrap(),
            Init::Zero,
        );
        let want = a.dot(&b);
        assert!((&c - &want).iter().all(|v| v.abs() < 1e-12));
    }
}

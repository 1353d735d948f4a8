//! Rust bindings to lorafuse, the C library of fused LoRA kernels (`include/lorafuse.h`), through
//! its shared library `liblorafuse.so` (set `LORAFUSE_LIB_DIR` to the folder that holds it when
//! building). The layer
//!
//! ```text
//! y = beta·y + x·Wᵀ + bias + scale·(x·Aᵀ)·Bᵀ
//! ```
//!
//! runs in one pass per backend. Views borrow the caller's slices: a CPU context reads and writes
//! them directly. Every failure is an [`Error`] with the library's status and message, and the
//! library writes nothing on failure.
//!
//! ```no_run
//! use lorafuse::{Backend, Context, Layout, View, ViewMut};
//! let (m, k, n, r) = (2, 4, 3, 2);
//! let (x, w, a, b) = (vec![0.5f32; m * k], vec![0.25f32; n * k], vec![1.0f32; r * k], vec![0.125f32; n * r]);
//! let mut y = vec![0.0f32; m * n];
//! let ctx = Context::new(Backend::Cpu)?;
//! ctx.lora_forward(Layout::Peft, &View::f32(&x, m, k), Some(&View::f32(&w, n, k)), None,
//!                  &View::f32(&a, r, k), &View::f32(&b, n, r), 2.0, 0.0, &mut ViewMut::f32(&mut y, m, n))?;
//! # Ok::<(), lorafuse::Error>(())
//! ```
use std::ffi::{c_char, c_void, CStr};
use std::marker::PhantomData;

/// Element types of a view (`lf_dtype`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub enum DType {
    F32 = 0,
    F16 = 1,
    Bf16 = 2,
}

/// Weight layouts (`lf_layout`): PyTorch/PEFT's W [N, K], A [r, K], B [N, r], or the transposes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub enum Layout {
    Peft = 0,
    Kn = 1,
}

/// Backends (`lf_backend`): the best one present, the CPU, or CUDA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub enum Backend {
    Auto = 0,
    Cpu = 1,
    Cuda = 2,
}

/// `lf_matrix`: src/abi_check.c pins its layout on the C side.
#[repr(C)]
#[derive(Clone, Copy)]
struct RawMatrix {
    data: *mut c_void,
    dtype: DType,
    rows: i64,
    cols: i64,
    stride: i64,
}

#[repr(C)]
struct RawContext {
    _private: [u8; 0],
}

#[repr(C)]
struct RawAdapterSet {
    _private: [u8; 0],
}

extern "C" {
    fn lf_version_string() -> *const c_char;
    fn lf_status_name(status: i32) -> *const c_char;
    fn lf_context_create(out: *mut *mut RawContext, backend: Backend) -> i32;
    fn lf_context_destroy(ctx: *mut RawContext);
    fn lf_context_last_error(ctx: *const RawContext) -> *const c_char;
    fn lf_context_backend(ctx: *const RawContext) -> i32;
    fn lf_lora_forward(
        ctx: *mut RawContext,
        layout: Layout,
        x: *const RawMatrix,
        w: *const RawMatrix,
        bias: *const RawMatrix,
        a: *const RawMatrix,
        b: *const RawMatrix,
        scale: f32,
        beta: f32,
        y: *const RawMatrix,
    ) -> i32;
    fn lf_adapter_set_create(
        ctx: *mut RawContext,
        dtype: DType,
        k: i64,
        n: i64,
        capacity: i32,
        max_rank: i64,
        out: *mut *mut RawAdapterSet,
    ) -> i32;
    fn lf_adapter_set_destroy(set: *mut RawAdapterSet);
    fn lf_adapter_set_load(
        set: *mut RawAdapterSet,
        slot: i32,
        layout: Layout,
        a: *const RawMatrix,
        b: *const RawMatrix,
        scale: f32,
        from: i32,
    ) -> i32;
    fn lf_adapter_set_clear(set: *mut RawAdapterSet, slot: i32) -> i32;
    fn lf_adapter_set_rank(set: *const RawAdapterSet, slot: i32) -> i64;
    fn lf_lora_forward_multi(
        ctx: *mut RawContext,
        set: *const RawAdapterSet,
        layout: Layout,
        x: *const RawMatrix,
        w: *const RawMatrix,
        bias: *const RawMatrix,
        token_adapter: *const i32,
        beta: f32,
        y: *const RawMatrix,
    ) -> i32;
}

fn text(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: the library returns NUL-terminated strings that outlive this call
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// The linked library's version, "MAJOR.MINOR.PATCH".
pub fn version() -> String {
    // SAFETY: static storage
    text(unsafe { lf_version_string() })
}

/// A call the library refused or could not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// The `lf_status` value.
    pub status: i32,
    /// Its name, as "LF_ERR_SHAPE_MISMATCH".
    pub name: String,
    /// The library's sentence saying what was wrong.
    pub message: String,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.name, self.message)
    }
}

impl std::error::Error for Error {}

fn element_size(dtype: DType) -> usize {
    if dtype == DType::F32 {
        4
    } else {
        2
    }
}

/// Bytes a view of rows × cols with this row stride spans (panics where that overflows usize).
fn span_bytes(rows: usize, cols: usize, stride: usize, dtype: DType) -> usize {
    if rows == 0 {
        return 0;
    }
    (rows - 1)
        .checked_mul(stride)
        .and_then(|e| e.checked_add(cols))
        .and_then(|e| e.checked_mul(element_size(dtype)))
        .expect("the view's size overflows usize")
}

/// An optional view as the C API takes it (NULL for none).
fn opt(v: Option<&View>) -> *const RawMatrix {
    v.map_or(std::ptr::null(), |v| &v.raw as *const RawMatrix)
}

/// A read-only row-major view of a borrowed slice.
pub struct View<'a> {
    raw: RawMatrix,
    _data: PhantomData<&'a [u8]>,
}

/// A writable row-major view of a borrowed slice (the output y).
pub struct ViewMut<'a> {
    raw: RawMatrix,
    _data: PhantomData<&'a mut [u8]>,
}

fn raw_view(data: *const c_void, bytes: usize, dtype: DType, rows: usize, cols: usize, stride: usize) -> RawMatrix {
    assert!(stride >= cols, "stride {stride} < cols {cols}");
    let need = span_bytes(rows, cols, stride, dtype);
    assert!(bytes >= need, "the slice has {bytes} bytes, the view needs {need}");
    RawMatrix {
        data: data as *mut c_void,
        dtype,
        rows: rows as i64,
        cols: cols as i64,
        stride: stride as i64,
    }
}

impl<'a> View<'a> {
    /// f32 elements, dense rows (stride = cols).
    pub fn f32(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::f32_strided(data, rows, cols, cols)
    }
    /// f32 elements, rows `stride` elements apart.
    pub fn f32_strided(data: &'a [f32], rows: usize, cols: usize, stride: usize) -> Self {
        View {
            raw: raw_view(data.as_ptr().cast(), data.len() * 4, DType::F32, rows, cols, stride),
            _data: PhantomData,
        }
    }
    /// 16-bit elements (`DType::F16` or `DType::Bf16`) as their bit patterns.
    pub fn half(data: &'a [u16], dtype: DType, rows: usize, cols: usize, stride: usize) -> Self {
        assert!(dtype != DType::F32, "half views hold f16 or bf16");
        View {
            raw: raw_view(data.as_ptr().cast(), data.len() * 2, dtype, rows, cols, stride),
            _data: PhantomData,
        }
    }
}

impl<'a> ViewMut<'a> {
    /// f32 elements, dense rows.
    pub fn f32(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        ViewMut {
            raw: raw_view(data.as_mut_ptr().cast(), data.len() * 4, DType::F32, rows, cols, cols),
            _data: PhantomData,
        }
    }
    /// 16-bit elements as their bit patterns, dense rows.
    pub fn half(data: &'a mut [u16], dtype: DType, rows: usize, cols: usize) -> Self {
        assert!(dtype != DType::F32, "half views hold f16 or bf16");
        ViewMut {
            raw: raw_view(data.as_mut_ptr().cast(), data.len() * 2, dtype, rows, cols, cols),
            _data: PhantomData,
        }
    }
}

/// A lorafuse context on one backend (plans, workspace, the last error). Neither `Send` nor `Sync`:
/// it stays on the thread that made it, so calls through `&self` never overlap.
pub struct Context {
    raw: *mut RawContext,
}

impl Context {
    /// A context on `backend` (`Backend::Auto`: CUDA when a device is there, else the CPU).
    pub fn new(backend: Backend) -> Result<Self, Error> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: out-pointer to a local
        let status = unsafe { lf_context_create(&mut raw, backend) };
        if status != 0 {
            // SAFETY: static storage
            return Err(Error {
                status,
                name: text(unsafe { lf_status_name(status) }),
                message: "lf_context_create failed".into(),
            });
        }
        Ok(Context { raw })
    }

    /// The backend the context runs on.
    pub fn backend(&self) -> Backend {
        // SAFETY: a live context
        match unsafe { lf_context_backend(self.raw) } {
            2 => Backend::Cuda,
            _ => Backend::Cpu, // never Auto: a context runs on a backend it chose
        }
    }

    fn check(&self, status: i32) -> Result<(), Error> {
        if status == 0 {
            return Ok(());
        }
        // SAFETY: a live context; static storage for the name
        Err(Error {
            status,
            name: text(unsafe { lf_status_name(status) }),
            message: text(unsafe { lf_context_last_error(self.raw) }),
        })
    }

    /// The views are host slices: only a CPU context may read them (a CUDA context would take
    /// them for device memory and write y after the call returned).
    fn host_views(&self, call: &str) -> Result<(), Error> {
        if self.backend() == Backend::Cpu {
            return Ok(());
        }
        Err(Error {
            status: 8,
            name: "LF_ERR_UNSUPPORTED".into(),
            message: format!("{call}: the views are host memory, which only a CPU context reads"),
        })
    }

    /// y = beta·y + x·Wᵀ + bias + scale·(x·Aᵀ)·Bᵀ; without `w` (and `bias`) the LoRA delta alone.
    /// The views are host slices: a context on another backend than the CPU returns an error.
    #[allow(clippy::too_many_arguments)]
    pub fn lora_forward(
        &self,
        layout: Layout,
        x: &View,
        w: Option<&View>,
        bias: Option<&View>,
        a: &View,
        b: &View,
        scale: f32,
        beta: f32,
        y: &mut ViewMut,
    ) -> Result<(), Error> {
        self.host_views("lora_forward")?;
        // SAFETY: the views borrow live slices of the sizes they claim (checked when made)
        let status = unsafe {
            lf_lora_forward(
                self.raw,
                layout,
                &x.raw,
                opt(w),
                opt(bias),
                &a.raw,
                &b.raw,
                scale,
                beta,
                &y.raw,
            )
        };
        self.check(status)
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: created by lf_context_create, destroyed once
        unsafe { lf_context_destroy(self.raw) }
    }
}

impl Context {
    /// The layer (or, without `w`, the delta) with token t's own adapter: `token_adapter[t]` is a
    /// slot of `adapters` (-1: none), one per row of x. Host slices: a CPU context only.
    #[allow(clippy::too_many_arguments)]
    pub fn lora_forward_multi(
        &self,
        adapters: &AdapterSet,
        layout: Layout,
        x: &View,
        w: Option<&View>,
        bias: Option<&View>,
        token_adapter: &[i32],
        beta: f32,
        y: &mut ViewMut,
    ) -> Result<(), Error> {
        self.host_views("lora_forward_multi")?;
        assert!(
            token_adapter.len() as i64 >= x.raw.rows,
            "{} adapter ids for {} tokens",
            token_adapter.len(),
            x.raw.rows
        );
        assert!(
            std::ptr::eq(adapters.ctx, self),
            "the adapter set belongs to another context"
        );
        // SAFETY: live views and ids of the sizes checked; the set lives in this context
        let status = unsafe {
            lf_lora_forward_multi(
                self.raw,
                adapters.raw,
                layout,
                &x.raw,
                opt(w),
                opt(bias),
                token_adapter.as_ptr(),
                beta,
                &y.raw,
            )
        };
        self.check(status)
    }
}

/// `capacity` adapters of one layer (K inputs, N outputs), each of rank up to `max_rank`, in the
/// context's memory; a slot is replaced between calls without touching the others. It borrows its
/// context, which therefore outlives it.
pub struct AdapterSet<'c> {
    raw: *mut RawAdapterSet,
    ctx: &'c Context,
}

impl<'c> AdapterSet<'c> {
    pub fn new(ctx: &'c Context, dtype: DType, k: i64, n: i64, capacity: i32, max_rank: i64) -> Result<Self, Error> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: a live context, an out-pointer to a local
        ctx.check(unsafe { lf_adapter_set_create(ctx.raw, dtype, k, n, capacity, max_rank, &mut raw) })?;
        Ok(AdapterSet { raw, ctx })
    }

    /// Copies adapter (a [rank, K], b [N, rank] in `layout`, scale) from host slices into `slot`.
    pub fn load(&mut self, slot: i32, layout: Layout, a: &View, b: &View, scale: f32) -> Result<(), Error> {
        const HOST_TO_DEVICE: i32 = 0; // lf_copy_kind: from host memory, also for a CPU context
                                       // SAFETY: live views; the copy completes before the call returns
        self.ctx
            .check(unsafe { lf_adapter_set_load(self.raw, slot, layout, &a.raw, &b.raw, scale, HOST_TO_DEVICE) })
    }

    /// Empties `slot`: its tokens get no LoRA term.
    pub fn clear(&mut self, slot: i32) -> Result<(), Error> {
        // SAFETY: a live set
        self.ctx.check(unsafe { lf_adapter_set_clear(self.raw, slot) })
    }

    /// The rank loaded in `slot`, 0 when it is empty or out of range.
    pub fn rank(&self, slot: i32) -> i64 {
        // SAFETY: a live set
        unsafe { lf_adapter_set_rank(self.raw, slot) }
    }
}

impl Drop for AdapterSet<'_> {
    fn drop(&mut self) {
        // SAFETY: created by lf_adapter_set_create, destroyed once, before its context
        unsafe { lf_adapter_set_destroy(self.raw) }
    }
}

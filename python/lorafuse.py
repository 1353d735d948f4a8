"""lorafuse from Python through ctypes: the C library's own calls, no compiled extension.

    import lorafuse
    from array import array
    x = array("f", ...)                      # [M, K] row-major, any writable buffer (array, numpy)
    with lorafuse.Context(lorafuse.BACKEND_CPU) as ctx:   # host buffers: a CPU context
        ctx.lora_forward(lorafuse.PEFT,
                         lorafuse.Matrix(x, lorafuse.F32, M, K), w=..., bias=None,
                         a=..., b=..., scale=2.0, beta=0.0, y=...)

Host buffers serve a CPU context (a CUDA context refuses them); a CUDA context takes device
pointers: Context.malloc and Context.memcpy allocate and copy without CUDA (Matrix.from_pointer
views them). Many adapters: AdapterSet, then Context.lora_forward_multi (an int32 adapter id per
token) or lora_forward_segments. PEFT adapters: PeftAdapter(ctx, directory) lists the modules
with their ranks and scales and gives each module's A and B as views into the mapped file.
Failures raise LoraFuseError with the library's status and message; the library writes nothing
on failure. A context closes its adapter sets and PEFT adapters before itself; a view of a closed
adapter is refused. The library is found at $LORAFUSE_LIBRARY, else as liblorafuse.so on the
loader's path.
"""
import ctypes
import ctypes.util
import os

F32, F16, BF16 = 0, 1, 2
PEFT, KN = 0, 1
BACKEND_AUTO, BACKEND_CPU, BACKEND_CUDA = 0, 1, 2
HOST_TO_DEVICE, DEVICE_TO_HOST, DEVICE_TO_DEVICE = 0, 1, 2
_ELEMENT_SIZE = {F32: 4, F16: 2, BF16: 2}


class _MatrixStruct(ctypes.Structure):
    # lf_matrix; src/abi_check.c fails the build if the C side changes (likewise below)
    _fields_ = [("data", ctypes.c_void_p), ("dtype", ctypes.c_int), ("rows", ctypes.c_int64),
                ("cols", ctypes.c_int64), ("stride", ctypes.c_int64)]


class _PeftAdapterInfo(ctypes.Structure):  # lf_peft_adapter_info
    _fields_ = [("r", ctypes.c_int64), ("lora_alpha", ctypes.c_double), ("use_rslora", ctypes.c_int),
                ("fan_in_fan_out", ctypes.c_int), ("bias", ctypes.c_char_p), ("base_model", ctypes.c_char_p),
                ("module_count", ctypes.c_size_t), ("replacement_count", ctypes.c_size_t)]


class _PeftModuleInfo(ctypes.Structure):  # lf_peft_module_info
    _fields_ = [("name", ctypes.c_char_p), ("base_tensor", ctypes.c_char_p), ("in_features", ctypes.c_int64),
                ("out_features", ctypes.c_int64), ("rank", ctypes.c_int64), ("alpha", ctypes.c_double),
                ("scale", ctypes.c_float), ("dtype", ctypes.c_int)]


def _load():
    path = os.environ.get("LORAFUSE_LIBRARY") or ctypes.util.find_library("lorafuse") or "liblorafuse.so"
    lib = ctypes.CDLL(path)
    mat = ctypes.POINTER(_MatrixStruct)
    lib.lf_version_string.restype = ctypes.c_char_p
    lib.lf_status_name.restype = ctypes.c_char_p
    lib.lf_status_name.argtypes = [ctypes.c_int]
    lib.lf_context_create.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int]
    lib.lf_context_destroy.argtypes = [ctypes.c_void_p]
    lib.lf_context_last_error.restype = ctypes.c_char_p
    lib.lf_context_last_error.argtypes = [ctypes.c_void_p]
    lib.lf_context_backend.argtypes = [ctypes.c_void_p]
    lib.lf_backend_name.restype = ctypes.c_char_p
    lib.lf_backend_name.argtypes = [ctypes.c_int]
    lib.lf_context_device_name.restype = ctypes.c_char_p
    lib.lf_context_device_name.argtypes = [ctypes.c_void_p]
    lib.lf_lora_forward.argtypes = [ctypes.c_void_p, ctypes.c_int, mat, mat, mat, mat, mat, ctypes.c_float,
                                    ctypes.c_float, mat]
    lib.lf_malloc.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t]
    lib.lf_free.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.lf_memcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    lib.lf_synchronize.argtypes = [ctypes.c_void_p]
    lib.lf_adapter_set_create.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64,
                                          ctypes.c_int, ctypes.c_int64, ctypes.POINTER(ctypes.c_void_p)]
    lib.lf_adapter_set_destroy.argtypes = [ctypes.c_void_p]
    lib.lf_adapter_set_load.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, mat, mat, ctypes.c_float,
                                        ctypes.c_int]
    lib.lf_adapter_set_clear.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.lf_adapter_set_rank.restype = ctypes.c_int64
    lib.lf_adapter_set_rank.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.lf_lora_forward_multi.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, mat, mat, mat,
                                          ctypes.c_void_p, ctypes.c_float, mat]
    lib.lf_lora_forward_segments.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, mat, mat, mat,
                                             ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, mat]
    lib.lf_peft_adapter_open.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
    lib.lf_peft_adapter_close.argtypes = [ctypes.c_void_p]
    lib.lf_peft_adapter_get_info.argtypes = [ctypes.c_void_p, ctypes.POINTER(_PeftAdapterInfo)]
    lib.lf_peft_adapter_module.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(_PeftModuleInfo)]
    lib.lf_peft_adapter_find_module.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_size_t)]
    lib.lf_peft_adapter_host_weights.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, mat, mat]
    return lib


_lib = _load()


def version():
    """The linked library's version, "MAJOR.MINOR.PATCH"."""
    return _lib.lf_version_string().decode()


class LoraFuseError(Exception):
    """A call the library refused or could not run: .status (the lf_status value), .name, message."""

    def __init__(self, status, message):
        self.status = status
        self.name = _lib.lf_status_name(status).decode()
        super().__init__(f"{self.name}: {message}")


class _Handle:
    """A library object's pointer and its destroy function, shared by the Python object that uses it
    and the context that must outlive it: whichever closes first destroys it, the other finds None.
    Strong references both ways, so that no garbage-collection order frees a child after its
    context."""

    def __init__(self, destroy):
        self.ptr = ctypes.c_void_p()
        self._destroy = destroy

    def release(self):
        if self.ptr:
            self._destroy(self.ptr)
            self.ptr = ctypes.c_void_p()


class Matrix:
    """A row-major view: dtype, rows, cols and a row stride in elements (stride >= cols)."""

    def __init__(self, buffer, dtype, rows, cols, stride=None):
        """A view of a writable host buffer (array.array, bytearray, numpy array, ...), exported
        for as long as this view lives (the buffer cannot be resized meanwhile). The buffer must
        hold (rows - 1) * stride + cols elements."""
        stride = cols if stride is None else stride
        view = memoryview(buffer).cast("B")
        need = ((rows - 1) * stride + cols) * _ELEMENT_SIZE[dtype] if rows > 0 else 0
        if view.nbytes < need:
            raise ValueError(f"the buffer has {view.nbytes} bytes, the view needs {need}")
        self._keep, self._owner, self.host = view, None, True
        self._struct = _MatrixStruct(_view_address(view), dtype, rows, cols, stride)

    @classmethod
    def from_pointer(cls, pointer, dtype, rows, cols, stride=None):
        """A view of memory the caller owns: a device pointer from a CUDA context's allocations."""
        m = cls.__new__(cls)
        m._keep, m._owner, m.host = None, None, False
        m._struct = _MatrixStruct(pointer, dtype, rows, cols, cols if stride is None else stride)
        return m


def _view_address(view):
    return ctypes.addressof(ctypes.c_char.from_buffer(view)) if view.nbytes else None


def _ref(m):
    if m is None:
        return None
    if m._owner is not None and not m._owner.ptr:
        raise ValueError("the adapter this view points into is closed")
    return ctypes.byref(m._struct)


def _host_bytes(data, nbytes, what, itemsize=None):
    """The address of host buffer `data` after checking that it holds nbytes (and, for int32
    tables, 4-byte items); an int (a device pointer) or None passes as it is."""
    if data is None or isinstance(data, int):
        return data
    view = memoryview(data)
    if itemsize is not None and view.itemsize != itemsize:
        raise ValueError(f"{what}: items of {view.itemsize} bytes, expected {itemsize} (array('i'))")
    view = view.cast("B")
    if view.nbytes < nbytes:
        raise ValueError(f"{what}: the buffer has {view.nbytes} bytes, {nbytes} are needed")
    return _view_address(view)


class _Closing:
    """close() at the end of a with block and when collected."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()


class Context(_Closing):
    """A lorafuse context on one backend; not thread-safe (one per thread), closed by close() or
    by leaving a with block, after the adapter sets and PEFT adapters made in it."""

    def __init__(self, backend=BACKEND_AUTO):
        self._children = []  # _Handle of every adapter set and PEFT adapter made in this context
        self._handle = _Handle(_lib.lf_context_destroy)
        status = _lib.lf_context_create(ctypes.byref(self._handle.ptr), backend)
        if status != 0:
            raise LoraFuseError(status, "lf_context_create failed")
        self._cuda = _lib.lf_context_backend(self._handle.ptr) == BACKEND_CUDA

    @property
    def _ctx(self):
        if not self._handle.ptr:
            raise ValueError("the context is closed")
        return self._handle.ptr

    def close(self):
        for child in getattr(self, "_children", []):
            child.release()
        if hasattr(self, "_handle"):
            self._handle.release()

    @property
    def backend(self):
        return _lib.lf_backend_name(_lib.lf_context_backend(self._ctx)).decode()

    @property
    def device_name(self):
        return _lib.lf_context_device_name(self._ctx).decode()

    def _check(self, status):
        if status != 0:
            raise LoraFuseError(status, _lib.lf_context_last_error(self._ctx).decode())

    def _views(self, *views):
        """The views' pointers, after refusing host buffers on a CUDA context (which would take them
        for device memory)."""
        if self._cuda and any(v is not None and v.host for v in views):
            raise ValueError("a CUDA context takes device memory: Matrix.from_pointer (Context.malloc)")
        return [_ref(v) for v in views]

    def lora_forward(self, layout, x, w, bias, a, b, scale, beta, y):
        """y = beta*y + x*W^T + bias + scale*(x*A^T)*B^T (w and bias may be None: the delta)."""
        x_, w_, bias_, a_, b_, y_ = self._views(x, w, bias, a, b, y)
        self._check(_lib.lf_lora_forward(self._ctx, layout, x_, w_, bias_, a_, b_, scale, beta, y_))

    def _ids(self, data, count, what):
        if self._cuda and data is not None and not isinstance(data, int):
            raise ValueError(f"{what}: a CUDA context takes a device pointer")
        return _host_bytes(data, 4 * count, what, itemsize=4)

    def lora_forward_multi(self, adapters, layout, x, w, bias, token_adapter, beta, y):
        """The layer (or, w None, the delta) with token t's own adapter: token_adapter holds an int32
        slot of `adapters` per token (-1: none), a host buffer (array("i")) or a device pointer."""
        x_, w_, bias_, y_ = self._views(x, w, bias, y)
        ids = self._ids(token_adapter, x._struct.rows if x is not None else 0, "token_adapter")
        self._check(_lib.lf_lora_forward_multi(self._ctx, adapters._ptr, layout, x_, w_, bias_, ids, beta, y_))

    def lora_forward_segments(self, adapters, layout, x, w, bias, seg_starts, seg_adapter, segments, beta, y):
        """The same with runs of tokens: segment s covers tokens [seg_starts[s], seg_starts[s + 1]) and
        uses slot seg_adapter[s] (int32 buffers of segments + 1 and segments entries)."""
        x_, w_, bias_, y_ = self._views(x, w, bias, y)
        starts = self._ids(seg_starts, segments + 1, "seg_starts")
        slots = self._ids(seg_adapter, segments, "seg_adapter")
        self._check(_lib.lf_lora_forward_segments(self._ctx, adapters._ptr, layout, x_, w_, bias_, starts, slots,
                                                  segments, beta, y_))

    def malloc(self, nbytes):
        """Memory of the context's kind (device memory for CUDA), as an int pointer; free() it."""
        ptr = ctypes.c_void_p()
        self._check(_lib.lf_malloc(self._ctx, ctypes.byref(ptr), nbytes))
        return ptr.value

    def free(self, pointer):
        self._check(_lib.lf_free(self._ctx, pointer))

    def memcpy(self, dst, src, nbytes, kind):
        """Copies nbytes; dst and src are host buffers (checked to hold nbytes) or int pointers, as
        kind says."""
        self._check(_lib.lf_memcpy(self._ctx, _host_bytes(dst, nbytes, "dst"), _host_bytes(src, nbytes, "src"),
                                   nbytes, kind))

    def synchronize(self):
        self._check(_lib.lf_synchronize(self._ctx))


class _Child(_Closing):
    """An object made in a context (adapter set, PEFT adapter), destroyed before it."""

    def _attach(self, context, destroy):
        self._context = context
        self._handle = _Handle(destroy)
        context._children = [h for h in context._children if h.ptr] + [self._handle]

    @property
    def _ptr(self):
        if not self._handle.ptr:
            raise ValueError(f"the {type(self).__name__} is closed")
        return self._handle.ptr

    def close(self):
        if hasattr(self, "_handle"):
            self._handle.release()


class AdapterSet(_Child):
    """capacity adapters of one layer (K inputs, N outputs), each of rank up to max_rank, resident
    in the context's memory; a slot is replaced between calls without touching the others."""

    def __init__(self, context, dtype, k, n, capacity, max_rank):
        self._attach(context, _lib.lf_adapter_set_destroy)
        context._check(_lib.lf_adapter_set_create(context._ctx, dtype, k, n, capacity, max_rank,
                                                  ctypes.byref(self._handle.ptr)))

    def load(self, slot, layout, a, b, scale, source=HOST_TO_DEVICE):
        """Copies adapter (a, b, scale) into slot: from host views (HOST_TO_DEVICE, also for a CPU
        context) or from the context's memory (DEVICE_TO_DEVICE)."""
        self._context._check(_lib.lf_adapter_set_load(self._ptr, slot, layout, _ref(a), _ref(b), scale, source))

    def clear(self, slot):
        self._context._check(_lib.lf_adapter_set_clear(self._ptr, slot))

    def rank(self, slot):
        return _lib.lf_adapter_set_rank(self._ptr, slot)


class PeftModule:
    """One LoRA module of a PEFT adapter: name ("model.layers.0.self_attn.q_proj"), base_tensor,
    in_features (K), out_features (N), rank, alpha and scale after rank_pattern / alpha_pattern
    (and rsLoRA), dtype of its A and B, and its index in the adapter."""

    def __init__(self, index, info):
        self.index = index
        self.name, self.base_tensor = info.name.decode(), info.base_tensor.decode()
        self.in_features, self.out_features, self.rank = info.in_features, info.out_features, info.rank
        self.alpha, self.scale, self.dtype = info.alpha, info.scale, info.dtype

    def __repr__(self):
        return f"PeftModule({self.name!r}, K={self.in_features}, N={self.out_features}, r={self.rank}, scale={self.scale})"


class PeftAdapter(_Child):
    """A PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors), read as PEFT
    means it. The file is mapped; module weights are views into it (host memory, read-only)."""

    def __init__(self, context, directory):
        self._attach(context, _lib.lf_peft_adapter_close)
        context._check(_lib.lf_peft_adapter_open(context._ctx, os.fsencode(directory), ctypes.byref(self._handle.ptr)))
        info = _PeftAdapterInfo()
        context._check(_lib.lf_peft_adapter_get_info(self._ptr, ctypes.byref(info)))
        self.r, self.lora_alpha, self.use_rslora = info.r, info.lora_alpha, bool(info.use_rslora)
        self.fan_in_fan_out, self.bias = bool(info.fan_in_fan_out), info.bias.decode()
        self.base_model = info.base_model.decode()
        self.modules = []
        for i in range(info.module_count):
            m = _PeftModuleInfo()
            context._check(_lib.lf_peft_adapter_module(self._ptr, i, ctypes.byref(m)))
            self.modules.append(PeftModule(i, m))

    def find(self, name):
        """The module called name; LoraFuseError (LF_ERR_NOT_FOUND) when there is none."""
        index = ctypes.c_size_t()
        self._context._check(_lib.lf_peft_adapter_find_module(self._ptr, name.encode(), ctypes.byref(index)))
        return self.modules[index.value]

    def host_weights(self, module):
        """(A, B) of a module as Matrix views in LF_LAYOUT_PEFT ([rank, K] and [N, rank]) into the
        mapped file, for a CPU context; once the adapter (or its context) is closed they are
        refused."""
        a, b = _MatrixStruct(), _MatrixStruct()
        self._context._check(_lib.lf_peft_adapter_host_weights(self._context._ctx, self._ptr, module.index,
                                                               ctypes.byref(a), ctypes.byref(b)))
        views = []
        for m in (a, b):
            v = Matrix.from_pointer(m.data, m.dtype, m.rows, m.cols, m.stride)
            v._owner, v.host = self._handle, True
            views.append(v)
        return tuple(views)

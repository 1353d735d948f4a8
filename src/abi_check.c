/*
 * abi_check.c — the layout that callers through an FFI mirror by hand (python/lorafuse.py's ctypes
 * structures, a Rust #[repr(C)] struct): a change to it would break them silently, so it fails the
 * build here instead. It is also the one source file of liblorafuse.so, which takes every object
 * of the archive (CMakeLists.txt).
 */
#include "lorafuse.h"

#include <stddef.h>

_Static_assert(sizeof(lf_status) == 4 && sizeof(lf_dtype) == 4 && sizeof(lf_layout) == 4 &&
                   sizeof(lf_backend) == 4,
               "the enums are C ints: FFI callers pass them as 32-bit integers");
_Static_assert(offsetof(lf_matrix, data) == 0 && offsetof(lf_matrix, dtype) == 8 && offsetof(lf_matrix, rows) == 16 &&
                   offsetof(lf_matrix, cols) == 24 && offsetof(lf_matrix, stride) == 32 && sizeof(lf_matrix) == 40,
               "lf_matrix as python/lorafuse.py mirrors it (64-bit platforms)");

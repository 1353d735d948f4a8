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
_Static_assert(offsetof(lf_peft_adapter_info, lora_alpha) == 8 && offsetof(lf_peft_adapter_info, use_rslora) == 16 &&
                   offsetof(lf_peft_adapter_info, bias) == 24 && offsetof(lf_peft_adapter_info, module_count) == 40 &&
                   sizeof(lf_peft_adapter_info) == 56,
               "lf_peft_adapter_info as python/lorafuse.py mirrors it");
_Static_assert(offsetof(lf_peft_module_info, in_features) == 16 && offsetof(lf_peft_module_info, alpha) == 40 &&
                   offsetof(lf_peft_module_info, scale) == 48 && offsetof(lf_peft_module_info, dtype) == 52 &&
                   sizeof(lf_peft_module_info) == 56,
               "lf_peft_module_info as python/lorafuse.py mirrors it");

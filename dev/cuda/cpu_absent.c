/* The lab links the front end without the CPU backend (no BLAS/OpenMP on the device machine):
 * only CUDA contexts are created here. */
#include "lf_internal.h"

const lf_backend_ops *lf_cpu_backend_ops(void) { return NULL; }

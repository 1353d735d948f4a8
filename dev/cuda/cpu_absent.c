/* The lab links the front end and the CUDA sources only (a quick nvcc build with no CMake, BLAS or
 * OpenMP): only CUDA contexts are created here, so the CPU backend is absent. */
#include "lf_internal.h"

const lf_backend_ops *lf_cpu_backend_ops(void) { return NULL; }

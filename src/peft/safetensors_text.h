/*
 * safetensors_text.h — helpers safetensors.c shares with the adapter code and the CLI: how
 * messages print a tensor's shape, and how an input file is opened.
 */
#ifndef LF_SAFETENSORS_TEXT_H
#define LF_SAFETENSORS_TEXT_H

#include "lf_internal.h"

#include <sys/stat.h>

/* Writes "[d0, d1, ...]" into buf (cap bytes, truncated if need be) and returns buf. */
const char *lf_safetensors_shape_text(const lf_safetensors_tensor_info *t, char *buf, size_t cap);

/* Opens `path` read-only if it is a regular file and fills *sb. A FIFO, a device or a directory
 * gives LF_ERR_IO without blocking: the open is non-blocking until fstat has seen what it is.
 * @return LF_OK and *fd (close it); LF_ERR_IO with the reason in ctx. */
lf_status lf_open_regular_file(lf_context *ctx, const char *path, int *fd, struct stat *sb);

#endif /* LF_SAFETENSORS_TEXT_H */

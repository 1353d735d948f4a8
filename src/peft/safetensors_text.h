/*
 * safetensors_text.h — how messages of the adapter code and the CLI print a tensor's shape.
 */
#ifndef LF_SAFETENSORS_TEXT_H
#define LF_SAFETENSORS_TEXT_H

#include "lf_internal.h"

/* Writes "[d0, d1, ...]" into buf (cap bytes, truncated if need be) and returns buf. */
const char *lf_safetensors_shape_text(const lf_safetensors_tensor_info *t, char *buf, size_t cap);

#endif /* LF_SAFETENSORS_TEXT_H */

/*
 * peft_config.h — adapter_config.json of a PEFT LoRA adapter, parsed (peft_config.c), and the
 * per-module rank and alpha PEFT derives from it. Internal: the adapter loader and the fuzz target
 * use it; users go through lf_peft_adapter_open.
 */
#ifndef LF_PEFT_CONFIG_H
#define LF_PEFT_CONFIG_H

#include "lf_internal.h"

#include <regex.h>

/* One rank_pattern or alpha_pattern entry: PEFT's key (a Python regular expression matched as
 * re.match(r"(.*\.)?(KEY)$", module_name)), translated to POSIX extended syntax and compiled as
 * ^(.*\.)?(KEY)$. Translated: \d \D \w \W \s \S (ASCII meaning; inside brackets too), escaped
 * punctuation, (?:...); the rest of what module-name patterns use (. * + ? | ( ) [ ]) means the
 * same in both. Refused with LF_ERR_UNSUPPORTED: {m,n} bounds (glibc's regcomp expands nested
 * bounds into gigabytes), back-references, other letter escapes, other (?...) groups. */
typedef struct lf_peft_pattern {
    char *key;
    regex_t re;
    double value; /* the rank (an integer) or the alpha */
} lf_peft_pattern;

typedef struct lf_peft_config {
    int64_t r;
    double lora_alpha;
    int use_rslora;
    int fan_in_fan_out;
    char bias[16];    /* "none", "all", "lora_only" */
    char *base_model; /* "" when absent */
    lf_peft_pattern *rank_pattern, *alpha_pattern;
    size_t rank_count, alpha_count;
} lf_peft_config;

/* Most pattern entries and longest key accepted: real configs hold a handful of short keys, and the
 * bounds keep a hostile file from making the matcher the slow part. */
#define LF_PEFT_MAX_PATTERNS 4096
#define LF_PEFT_MAX_KEY 512

/* Parses `len` bytes of JSON. On failure *cfg holds nothing that needs freeing.
 * @return LF_OK; LF_ERR_BAD_FORMAT (not JSON, missing or mistyped fields, bad patterns);
 * LF_ERR_UNSUPPORTED (a peft_type other than LORA; a LoraConfig feature that changes the computation
 * and is not off: use_dora, lora_bias, use_qalora, use_bdlora, layer_replication, aLoRA,
 * target_parameters, trainable tokens, Arrow, KaSA, LoftQ, ... (known_fields in peft_config.c);
 * init_lora_weights other than true, false, "gaussian", "eva"; an unknown field not null, false or
 * empty; a pattern key using syntax that is refused); LF_ERR_OUT_OF_MEMORY. */
lf_status lf_peft_config_parse(lf_context *ctx, const char *json, size_t len, lf_peft_config *cfg);
void lf_peft_config_free(lf_peft_config *cfg);

/* The rank and alpha PEFT gives the module `name` ("model.layers.0.self_attn.q_proj"): the value of
 * the first matching key of rank_pattern / alpha_pattern in file order, else r / lora_alpha.
 * *rank_key / *alpha_key (may be NULL) receive the key that matched, or NULL. */
void lf_peft_config_resolve(const lf_peft_config *cfg, const char *name, int64_t *rank, double *alpha,
                            const char **rank_key, const char **alpha_key);

#endif /* LF_PEFT_CONFIG_H */

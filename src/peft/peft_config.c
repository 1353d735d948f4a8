/*
 * peft_config.c — adapter_config.json through jansson, checked field by field against what PEFT's
 * LoraConfig means (peft/tuners/lora/config.py, 0.21), and PEFT's rank_pattern / alpha_pattern rule
 * (peft/utils/other.py: get_pattern_key): the first key, in the order the file lists them, for which
 * re.match(rf"(.*\.)?({key})$", module_name) succeeds.
 */
#define _GNU_SOURCE /* strdup */

#include "peft_config.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void free_patterns(lf_peft_pattern *p, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        regfree(&p[i].re);
        free(p[i].key);
    }
    free(p);
}

void lf_peft_config_free(lf_peft_config *cfg)
{
    if (!cfg)
        return;
    free_patterns(cfg->rank_pattern, cfg->rank_count);
    free_patterns(cfg->alpha_pattern, cfg->alpha_count);
    free(cfg->base_model);
    memset(cfg, 0, sizeof *cfg);
}

/* A boolean field that may be absent or null (= false). */
static lf_status get_flag(lf_context *ctx, json_t *root, const char *key, int *out)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        *out = 0;
        return LF_OK;
    }
    if (!json_is_boolean(v))
        return lf_fail(ctx, LF_ERR_BAD_FORMAT, "adapter_config.json: \"%s\" is not true or false", key);
    *out = json_is_true(v);
    return LF_OK;
}

/* Features whose adapters change what a LoRA layer computes: refused rather than half-applied. */
static lf_status check_unsupported(lf_context *ctx, json_t *root)
{
    static const struct {
        const char *key, *what;
    } flags[] = {
        {"use_dora", "DoRA (use_dora: a magnitude vector rescales the merged weight)"},
        {"lora_bias", "lora_bias (a bias on lora_B)"},
        {"use_qalora", "QA-LoRA (use_qalora)"},
    };
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
        int on;
        lf_status s = get_flag(ctx, root, flags[i].key, &on);
        if (s != LF_OK)
            return s;
        if (on)
            return lf_fail(ctx, LF_ERR_UNSUPPORTED, "adapter_config.json: %s is not supported", flags[i].what);
    }
    static const char *const must_be_empty[] = {"layer_replication", "alora_invocation_tokens", "target_parameters"};
    for (size_t i = 0; i < sizeof must_be_empty / sizeof must_be_empty[0]; i++) {
        json_t *v = json_object_get(root, must_be_empty[i]);
        if (v && !json_is_null(v) && !(json_is_array(v) && json_array_size(v) == 0))
            return lf_fail(ctx, LF_ERR_UNSUPPORTED, "adapter_config.json: \"%s\" is set; it is not supported",
                           must_be_empty[i]);
    }
    return LF_OK;
}

/* An integer-valued JSON number (PEFT writes ranks as integers; 8.0 is accepted as 8). */
static int json_integral(const json_t *v, int64_t *out)
{
    if (json_is_integer(v)) {
        *out = (int64_t)json_integer_value(v);
        return 1;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (d == floor(d) && fabs(d) < 9e15) {
            *out = (int64_t)d;
            return 1;
        }
    }
    return 0;
}

static lf_status compile_key(lf_context *ctx, const char *field, const char *key, regex_t *re)
{
    const size_t len = strlen(key);
    if (len == 0 || len > LF_PEFT_MAX_KEY)
        return lf_fail(ctx, LF_ERR_BAD_FORMAT, "adapter_config.json: %s key of %zu bytes (1..%d)", field, len,
                       LF_PEFT_MAX_KEY);
    /* Back-references are a glibc extension to ERE whose matching can take exponential time. */
    for (size_t i = 0; i + 1 < len; i++)
        if (key[i] == '\\' && key[i + 1] >= '1' && key[i + 1] <= '9')
            return lf_fail(ctx, LF_ERR_UNSUPPORTED, "adapter_config.json: %s key \"%.64s\" uses a back-reference",
                           field, key);
    char *pattern = malloc(len + 16);
    if (!pattern)
        return lf_fail(ctx, LF_ERR_OUT_OF_MEMORY, "adapter_config.json: no memory");
    snprintf(pattern, len + 16, "^(.*\\.)?(%s)$", key);
    int rc = regcomp(re, pattern, REG_EXTENDED | REG_NOSUB);
    free(pattern);
    if (rc != 0) {
        char why[128];
        regerror(rc, re, why, sizeof why);
        return lf_fail(ctx, LF_ERR_BAD_FORMAT, "adapter_config.json: %s key \"%.64s\" is not a regular expression "
                       "lorafuse can match (POSIX extended syntax): %s", field, key, why);
    }
    return LF_OK;
}

static lf_status parse_patterns(lf_context *ctx, json_t *root, const char *field, int integral,
                                lf_peft_pattern **out, size_t *count)
{
    *out = NULL;
    *count = 0;
    json_t *obj = json_object_get(root, field);
    if (!obj || json_is_null(obj))
        return LF_OK;
    if (!json_is_object(obj))
        return lf_fail(ctx, LF_ERR_BAD_FORMAT, "adapter_config.json: \"%s\" is not an object", field);
    const size_t n = json_object_size(obj);
    if (n > LF_PEFT_MAX_PATTERNS)
        return lf_fail(ctx, LF_ERR_BAD_FORMAT, "adapter_config.json: \"%s\" has %zu keys (at most %d)", field, n,
                       LF_PEFT_MAX_PATTERNS);
    lf_peft_pattern *p = calloc(n ? n : 1, sizeof *p);
    if (!p)
        return lf_fail(ctx, LF_ERR_OUT_OF_MEMORY, "adapter_config.json: no memory");
    size_t got = 0;
    lf_status s = LF_OK;
    const char *key;
    json_t *value;
    json_object_foreach(obj, key, value) { /* jansson keeps the file's order */
        int64_t iv = 0;
        if (integral ? !json_integral(value, &iv) || iv < 1 || iv > LF_MAX_RANK
                     : !json_is_number(value) || !isfinite(json_number_value(value))) {
            s = lf_fail(ctx, integral && json_integral(value, &iv) && iv > LF_MAX_RANK ? LF_ERR_UNSUPPORTED
                                                                                         : LF_ERR_BAD_FORMAT,
                        "adapter_config.json: %s[\"%.64s\"] is not %s", field, key,
                        integral ? "a rank in 1..1024" : "a finite number");
            break;
        }
        if ((s = compile_key(ctx, field, key, &p[got].re)) != LF_OK)
            break;
        p[got].value = integral ? (double)iv : json_number_value(value);
        if (!(p[got].key = strdup(key))) {
            regfree(&p[got].re);
            s = lf_fail(ctx, LF_ERR_OUT_OF_MEMORY, "adapter_config.json: no memory");
            break;
        }
        got++;
    }
    if (s != LF_OK) {
        free_patterns(p, got);
        return s;
    }
    *out = p;
    *count = got;
    return LF_OK;
}

/* Informational fields still have to be of the type PEFT writes. */
static lf_status check_string_list(lf_context *ctx, json_t *root, const char *key, int string_ok)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v) || (string_ok && json_is_string(v)))
        return LF_OK;
    if (json_is_array(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) if (!json_is_string(e)) goto bad;
        return LF_OK;
    }
bad:
    return lf_fail(ctx, LF_ERR_BAD_FORMAT, "adapter_config.json: \"%s\" is not %s", key,
                   string_ok ? "a string or a list of strings" : "a list of strings");
}

static lf_status parse_root(lf_context *ctx, json_t *root, lf_peft_config *cfg)
{
    if (!json_is_object(root))
        return lf_fail(ctx, LF_ERR_BAD_FORMAT, "adapter_config.json: not a JSON object");
    json_t *type = json_object_get(root, "peft_type");
    if (!json_is_string(type))
        return lf_fail(ctx, LF_ERR_BAD_FORMAT, "adapter_config.json: no \"peft_type\" string");
    if (strcmp(json_string_value(type), "LORA") != 0)
        return lf_fail(ctx, LF_ERR_UNSUPPORTED, "adapter_config.json: peft_type \"%.32s\"; only LORA adapters are "
                       "supported", json_string_value(type));
    lf_status s = check_unsupported(ctx, root);
    if (s != LF_OK)
        return s;
    json_t *r = json_object_get(root, "r"), *alpha = json_object_get(root, "lora_alpha");
    if (!r || !json_integral(r, &cfg->r) || cfg->r < 1)
        return lf_fail(ctx, LF_ERR_BAD_FORMAT, "adapter_config.json: \"r\" is not a positive integer");
    if (!json_is_number(alpha) || !isfinite(json_number_value(alpha)))
        return lf_fail(ctx, LF_ERR_BAD_FORMAT, "adapter_config.json: \"lora_alpha\" is not a finite number");
    cfg->lora_alpha = json_number_value(alpha);
    if ((s = get_flag(ctx, root, "use_rslora", &cfg->use_rslora)) != LF_OK ||
        (s = get_flag(ctx, root, "fan_in_fan_out", &cfg->fan_in_fan_out)) != LF_OK)
        return s;
    json_t *bias = json_object_get(root, "bias");
    const char *b = bias && !json_is_null(bias) ? json_string_value(bias) : "none";
    if (!b || (strcmp(b, "none") != 0 && strcmp(b, "all") != 0 && strcmp(b, "lora_only") != 0))
        return lf_fail(ctx, LF_ERR_BAD_FORMAT, "adapter_config.json: \"bias\" is not \"none\", \"all\" or "
                       "\"lora_only\"");
    snprintf(cfg->bias, sizeof cfg->bias, "%s", b);
    if ((s = check_string_list(ctx, root, "target_modules", 1)) != LF_OK ||
        (s = check_string_list(ctx, root, "modules_to_save", 0)) != LF_OK)
        return s;
    json_t *base = json_object_get(root, "base_model_name_or_path");
    if (base && !json_is_null(base) && !json_is_string(base))
        return lf_fail(ctx, LF_ERR_BAD_FORMAT, "adapter_config.json: \"base_model_name_or_path\" is not a string");
    if (!(cfg->base_model = strdup(json_is_string(base) ? json_string_value(base) : "")))
        return lf_fail(ctx, LF_ERR_OUT_OF_MEMORY, "adapter_config.json: no memory");
    if ((s = parse_patterns(ctx, root, "rank_pattern", 1, &cfg->rank_pattern, &cfg->rank_count)) != LF_OK)
        return s;
    return parse_patterns(ctx, root, "alpha_pattern", 0, &cfg->alpha_pattern, &cfg->alpha_count);
}

lf_status lf_peft_config_parse(lf_context *ctx, const char *json, size_t len, lf_peft_config *cfg)
{
    if (!cfg || (!json && len > 0))
        return lf_fail(ctx, LF_ERR_NULL_POINTER, "lf_peft_config_parse: a NULL argument");
    memset(cfg, 0, sizeof *cfg);
    json_error_t jerr;
    json_t *root = json_loadb(len ? json : "", len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return lf_fail(ctx, LF_ERR_BAD_FORMAT, "adapter_config.json is not valid JSON: %s (line %d, column %d)",
                       jerr.text, jerr.line, jerr.column);
    lf_status s = parse_root(ctx, root, cfg);
    json_decref(root);
    if (s != LF_OK)
        lf_peft_config_free(cfg);
    return s;
}

static const lf_peft_pattern *first_match(const lf_peft_pattern *p, size_t count, const char *name)
{
    for (size_t i = 0; i < count; i++)
        if (regexec(&p[i].re, name, 0, NULL, 0) == 0)
            return &p[i];
    return NULL;
}

void lf_peft_config_resolve(const lf_peft_config *cfg, const char *name, int64_t *rank, double *alpha,
                            const char **rank_key, const char **alpha_key)
{
    const lf_peft_pattern *rp = first_match(cfg->rank_pattern, cfg->rank_count, name);
    const lf_peft_pattern *ap = first_match(cfg->alpha_pattern, cfg->alpha_count, name);
    *rank = rp ? (int64_t)rp->value : cfg->r;
    *alpha = ap ? ap->value : cfg->lora_alpha;
    if (rank_key)
        *rank_key = rp ? rp->key : NULL;
    if (alpha_key)
        *alpha_key = ap ? ap->key : NULL;
}

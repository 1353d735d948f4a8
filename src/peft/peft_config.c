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

/* PEFT's "off" for a feature: absent, null, false, or an empty list or object. */
static int json_is_off(const json_t *v)
{
    return !v || json_is_null(v) || json_is_false(v) || (json_is_array(v) && json_array_size(v) == 0) ||
           (json_is_object(v) && json_object_size(v) == 0);
}

/* Every field of PEFT 0.21's LoraConfig (save_pretrained writes them all), runtime_config, and two
 * of PEFT <= 0.2. An allowlist: a field lorafuse does not know could change what the adapter
 * computes, so like a known feature lorafuse does not implement, it is refused unless it is off. */
typedef enum field_use {
    FIELD_READ, /* parsed and checked by parse_root */
    FIELD_INFO, /* any value: training, initialization or which modules got adapters (the file says) */
    FIELD_OFF,  /* a feature lorafuse does not implement: must be off */
} field_use;

static const struct {
    const char *key;
    field_use use;
    const char *what; /* FIELD_OFF: the feature, for the message */
} known_fields[] = {
    {"peft_type", FIELD_READ, NULL},
    {"r", FIELD_READ, NULL},
    {"lora_alpha", FIELD_READ, NULL},
    {"use_rslora", FIELD_READ, NULL},
    {"fan_in_fan_out", FIELD_READ, NULL},
    {"bias", FIELD_READ, NULL},
    {"rank_pattern", FIELD_READ, NULL},
    {"alpha_pattern", FIELD_READ, NULL},
    {"target_modules", FIELD_READ, NULL},
    {"modules_to_save", FIELD_READ, NULL},
    {"base_model_name_or_path", FIELD_READ, NULL},
    {"init_lora_weights", FIELD_READ, NULL},
    {"auto_mapping", FIELD_INFO, NULL},
    {"inference_mode", FIELD_INFO, NULL},
    {"peft_version", FIELD_INFO, NULL},
    {"revision", FIELD_INFO, NULL},
    {"task_type", FIELD_INFO, NULL},
    {"lora_dropout", FIELD_INFO, NULL},
    {"exclude_modules", FIELD_INFO, NULL},
    {"layers_pattern", FIELD_INFO, NULL},
    {"layers_to_transform", FIELD_INFO, NULL},
    {"megatron_core", FIELD_INFO, NULL},      /* a module name, used only with megatron_config */
    {"qalora_group_size", FIELD_INFO, NULL},  /* used only with use_qalora */
    {"ensure_weight_tying", FIELD_INFO, NULL},
    {"eva_config", FIELD_INFO, NULL},         /* EVA initializes A; the saved A is what counts */
    {"runtime_config", FIELD_INFO, NULL},     /* how PEFT loads (ephemeral_gpu_offload) */
    {"merge_weights", FIELD_INFO, NULL},      /* PEFT <= 0.2: merge on eval, not the weights */
    {"use_dora", FIELD_OFF, "DoRA (a magnitude vector rescales the merged weight)"},
    {"lora_bias", FIELD_OFF, "lora_bias (a bias on lora_B)"},
    {"use_qalora", FIELD_OFF, "QA-LoRA"},
    {"use_bdlora", FIELD_OFF, "BD-LoRA (block-diagonal LoRA)"},
    {"layer_replication", FIELD_OFF, "layer replication"},
    {"alora_invocation_tokens", FIELD_OFF, "aLoRA (activated LoRA)"},
    {"target_parameters", FIELD_OFF, "LoRA on parameters"},
    {"trainable_token_indices", FIELD_OFF, "trainable tokens (embedding rows)"},
    {"arrow_config", FIELD_OFF, "Arrow routing"},
    {"kasa_config", FIELD_OFF, "KaSA"},
    {"monteclora_config", FIELD_OFF, "MonteCLoRA"},
    {"velora_config", FIELD_OFF, "VeLoRA"},
    {"megatron_config", FIELD_OFF, "Megatron parallel layers"},
    {"loftq_config", FIELD_OFF, "LoftQ (the base weights are quantized and changed)"},
    {"corda_config", FIELD_OFF, "CorDA (the base weights are changed)"},
    {"lora_ga_config", FIELD_OFF, "LoRA-GA (the base weights are changed)"},
    {"enable_lora", FIELD_OFF, "merged-layer LoRA (enable_lora, PEFT <= 0.2)"},
};

static lf_status check_fields(lf_context *ctx, json_t *root)
{
    const char *key;
    json_t *value;
    json_object_foreach(root, key, value) {
        size_t i = 0;
        while (i < sizeof known_fields / sizeof known_fields[0] && strcmp(known_fields[i].key, key) != 0)
            i++;
        if (i == sizeof known_fields / sizeof known_fields[0]) {
            if (!json_is_off(value))
                return lf_fail(ctx, LF_ERR_UNSUPPORTED, "adapter_config.json: unknown field \"%.64s\" is set; "
                               "lorafuse knows PEFT 0.21's LoraConfig and refuses what might change the result",
                               key);
        } else if (known_fields[i].use == FIELD_OFF && !json_is_off(value)) {
            return lf_fail(ctx, LF_ERR_UNSUPPORTED, "adapter_config.json: \"%s\" is set: %s is not supported", key,
                           known_fields[i].what);
        }
    }
    /* Initializations that rewrite the base weights (PiSSA, OLoRA, CorDA, LoftQ, ...) leave an adapter
     * for those weights, unless PEFT converted it on saving, which writes true. */
    json_t *init = json_object_get(root, "init_lora_weights");
    if (json_is_string(init) && strcmp(json_string_value(init), "gaussian") != 0 &&
        strcmp(json_string_value(init), "eva") != 0)
        return lf_fail(ctx, LF_ERR_UNSUPPORTED, "adapter_config.json: init_lora_weights \"%.32s\" is not supported: "
                       "such an adapter belongs to base weights its initialization changed (PEFT converts it when "
                       "saved with path_initial_model_for_weight_conversion, and writes true)",
                       json_string_value(init));
    if (init && !json_is_null(init) && !json_is_boolean(init) && !json_is_string(init))
        return lf_fail(ctx, LF_ERR_BAD_FORMAT, "adapter_config.json: \"init_lora_weights\" is not true, false or a "
                       "string");
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

/* ---- pattern keys: Python `re` syntax, as PEFT writes it, translated to POSIX extended -------- */

/* The characters a Python class matches (\d, [^.], [\w-], ...), for ASCII module names: which
 * ASCII characters, and whether every non-ASCII one too (the negated classes). POSIX spells any
 * such set as a bracket expression, so the translation never leans on locale-dependent ranges or
 * [:classes:]. */
typedef struct char_set {
    unsigned char has[128];
    int non_ascii;
} char_set;

/* Sets the members of Python's \d \w \s (lowercase letter); the uppercase escape is the complement. */
static void class_escape(char_set *set, char letter)
{
    const char lower = (char)(letter | 0x20);
    char_set c;
    memset(&c, 0, sizeof c);
    for (int ch = 1; ch < 128; ch++)
        c.has[ch] = lower == 'd'   ? ch >= '0' && ch <= '9'
                    : lower == 'w' ? (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                                         ch == '_'
                                   : ch == ' ' || (ch >= '\t' && ch <= '\r') || (ch >= 0x1c && ch <= 0x1f);
    for (int ch = 1; ch < 128; ch++)
        set->has[ch] |= letter == lower ? c.has[ch] : !c.has[ch];
    set->non_ascii |= letter != lower;
}

static int is_class_letter(char c) { return c && strchr("dDwWsS", c) != NULL; }

/* The translated pattern: sized by the caller for the worst case (see translate_key). */
typedef struct ere_text {
    char *text;
    size_t len;
} ere_text;

static void put(ere_text *out, const char *s, size_t n)
{
    memcpy(out->text + out->len, s, n);
    out->len += n;
}

/* A set as a bracket expression. Inside POSIX brackets a backslash is an ordinary character and
 * ] - ^ [ are special by position, so those four go in as collating symbols ([.-.]); the rest as
 * themselves. At most 3 + 127 + 4·4 bytes. 0 when the set is empty (it could match nothing). */
static int put_set(ere_text *out, const char_set *set)
{
    int members = 0;
    for (int ch = 1; ch < 128; ch++)
        members += set->has[ch];
    if (set->non_ascii && members == 127) {
        put(out, ".", 1);
        return 1;
    }
    if (!set->non_ascii && members == 0)
        return 0;
    put(out, set->non_ascii ? "[^" : "[", set->non_ascii ? 2 : 1);
    for (int ch = 1; ch < 128; ch++) {
        if (set->has[ch] == set->non_ascii) /* a member, or with ^ a non-member */
            continue;
        const char c = (char)ch;
        if (strchr("]-^[", c)) {
            const char sym[5] = {'[', '.', c, '.', ']'};
            put(out, sym, 5);
        } else {
            put(out, &c, 1);
        }
    }
    put(out, "]", 1);
    return 1;
}

static lf_status key_error(lf_context *ctx, lf_status status, const char *field, const char *key, const char *why)
{
    return lf_fail(ctx, status, "adapter_config.json: %s key \"%.64s\" %s", field, key, why);
}

/* The escape at p (p[0] == '\\') when it is not a class: its character, or a failure. */
static lf_status escaped_char(lf_context *ctx, const char *field, const char *key, const char *p, char *c)
{
    const unsigned char e = (unsigned char)p[1];
    char why[160];
    if (e == '\0')
        return key_error(ctx, LF_ERR_BAD_FORMAT, field, key, "ends with a lone backslash");
    if (e >= '0' && e <= '9') {
        snprintf(why, sizeof why, "uses \\%c (a back-reference or an octal escape): not supported", e);
        return key_error(ctx, LF_ERR_UNSUPPORTED, field, key, why);
    }
    if ((e >= 'a' && e <= 'z') || (e >= 'A' && e <= 'Z')) {
        snprintf(why, sizeof why, "uses the escape \\%c: not supported (lorafuse translates \\d \\D \\w \\W \\s \\S "
                 "and escaped punctuation)", e);
        return key_error(ctx, LF_ERR_UNSUPPORTED, field, key, why);
    }
    *c = (char)e;
    return LF_OK;
}

/* One Python bracket expression starting at *p (**p == '['), added to the output; *p moves past
 * its ']'. Python reads escapes and classes inside brackets; POSIX does not, hence the set. */
static lf_status translate_bracket(lf_context *ctx, const char *field, const char *key, const char **p,
                                   ere_text *out)
{
    const char *s = *p + 1;
    const int negated = *s == '^';
    s += negated;
    char_set set;
    memset(&set, 0, sizeof set);
    for (int first = 1; *s != ']' || first; first = 0) {
        if (*s == '\0')
            return key_error(ctx, LF_ERR_BAD_FORMAT, field, key, "has a '[' without its ']'");
        char lo;
        if (s[0] == '\\' && is_class_letter(s[1])) {
            class_escape(&set, s[1]);
            s += 2;
            if (s[0] == '-' && s[1] != ']')
                return key_error(ctx, LF_ERR_BAD_FORMAT, field, key, "has a range that starts at a class");
            continue;
        }
        lf_status st = s[0] == '\\' ? escaped_char(ctx, field, key, s, &lo) : (lo = s[0], LF_OK);
        if (st != LF_OK)
            return st;
        s += s[0] == '\\' ? 2 : 1;
        char hi = lo;
        if (s[0] == '-' && s[1] != ']' && s[1] != '\0') {
            if (s[1] == '\\' && is_class_letter(s[2]))
                return key_error(ctx, LF_ERR_BAD_FORMAT, field, key, "has a range that ends at a class");
            st = s[1] == '\\' ? escaped_char(ctx, field, key, s + 1, &hi) : (hi = s[1], LF_OK);
            if (st != LF_OK)
                return st;
            s += s[1] == '\\' ? 3 : 2;
        }
        if ((unsigned char)lo >= 128 || (unsigned char)hi >= 128)
            return key_error(ctx, LF_ERR_UNSUPPORTED, field, key, "has a non-ASCII character in brackets: not "
                             "supported");
        if (hi < lo)
            return key_error(ctx, LF_ERR_BAD_FORMAT, field, key, "has a range whose end comes before its start");
        for (int ch = lo; ch <= hi; ch++)
            set.has[ch] = 1;
    }
    *p = s + 1;
    if (negated) {
        for (int ch = 1; ch < 128; ch++)
            set.has[ch] = !set.has[ch];
        set.non_ascii = !set.non_ascii;
    }
    if (!put_set(out, &set))
        return key_error(ctx, LF_ERR_UNSUPPORTED, field, key, "has brackets that match no character");
    return LF_OK;
}

/* PEFT's key (Python `re` syntax) as the POSIX extended expression ^(.*\.)?(KEY)$. What module-name
 * patterns use carries over: literals, . * + ? | ( ) [ ], \d \D \w \W \s \S (in ASCII meaning,
 * also in brackets), escaped punctuation, (?:...). Refused: {m,n} bounds (glibc expands nested
 * bounds at compile time: ((a{1,100}){1,100}){1,100} alone takes a gigabyte), back-references
 * (exponential matching), other letter escapes and (?...) groups, which POSIX reads differently
 * or not at all. A class or bracket (2 key bytes or more) becomes at most 146 bytes (put_set), so
 * 147 bytes per key byte bound the output. */
static lf_status translate_key(lf_context *ctx, const char *field, const char *key, char **pattern)
{
    const size_t len = strlen(key);
    ere_text out = {malloc(147 * len + 16), 0};
    if (!out.text)
        return lf_fail(ctx, LF_ERR_OUT_OF_MEMORY, "adapter_config.json: no memory");
    put(&out, "^(.*\\.)?(", 9);
    lf_status st = LF_OK;
    for (const char *p = key; *p && st == LF_OK;) {
        if (p[0] == '[') {
            st = translate_bracket(ctx, field, key, &p, &out);
        } else if (p[0] == '\\' && is_class_letter(p[1])) {
            char_set set;
            memset(&set, 0, sizeof set);
            class_escape(&set, p[1]);
            put_set(&out, &set);
            p += 2;
        } else if (p[0] == '\\') {
            char c;
            if ((st = escaped_char(ctx, field, key, p, &c)) == LF_OK) {
                /* POSIX defines \c only for its special characters; a GNU \< or \` would be an anchor. */
                if (strchr(".[\\()*+?{|^$", c))
                    put(&out, "\\", 1);
                put(&out, &c, 1);
                p += 2;
            }
        } else if (p[0] == '{') {
            st = key_error(ctx, LF_ERR_UNSUPPORTED, field, key, "uses a {m,n} repetition bound: not supported "
                           "(write the repetition out, or \\{ for a literal brace)");
        } else if (p[0] == '(' && p[1] == '?') {
            if (p[2] == ':') {
                put(&out, "(", 1); /* a group that captures nothing: POSIX groups never matter here */
                p += 3;
            } else {
                st = key_error(ctx, LF_ERR_UNSUPPORTED, field, key, "uses a (?...) group other than (?:...): not "
                               "supported");
            }
        } else {
            put(&out, p, 1);
            p++;
        }
    }
    if (st != LF_OK) {
        free(out.text);
        return st;
    }
    put(&out, ")$", 3); /* with the terminating NUL */
    *pattern = out.text;
    return LF_OK;
}

static lf_status compile_key(lf_context *ctx, const char *field, const char *key, regex_t *re)
{
    const size_t len = strlen(key);
    if (len == 0 || len > LF_PEFT_MAX_KEY)
        return lf_fail(ctx, LF_ERR_BAD_FORMAT, "adapter_config.json: %s key of %zu bytes (1..%d)", field, len,
                       LF_PEFT_MAX_KEY);
    char *pattern = NULL;
    lf_status st = translate_key(ctx, field, key, &pattern);
    if (st != LF_OK)
        return st;
    int rc = regcomp(re, pattern, REG_EXTENDED | REG_NOSUB);
    free(pattern);
    if (rc != 0) {
        char why[128];
        regerror(rc, re, why, sizeof why);
        return lf_fail(ctx, LF_ERR_BAD_FORMAT, "adapter_config.json: %s key \"%.64s\" is not a regular expression "
                       "lorafuse can match (Python syntax translated to POSIX extended): %s", field, key, why);
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
    lf_status s = check_fields(ctx, root);
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

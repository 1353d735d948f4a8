/*
 * lorafuse_adapter.h — the CLI's adapter commands (lorafuse_adapter.c), called from main() in
 * lorafuse.c with argv[0] = the command's name. Each returns the process exit status.
 */
#ifndef LORAFUSE_ADAPTER_H
#define LORAFUSE_ADAPTER_H

/* lorafuse info ADAPTER_DIR */
int lf_cli_info(int argc, char **argv);
/* lorafuse merge --base MODEL.safetensors --adapter DIR --out OUT.safetensors [--unmerge] [--backend B] */
int lf_cli_merge(int argc, char **argv);
/* lorafuse bench-merge [--out-features N] [--in-features K] [--rank R] [--dtype T] [--backend B] [--json F] */
int lf_cli_bench_merge(int argc, char **argv);
/* The usage lines of these commands, for lorafuse's help text. */
extern const char lf_cli_adapter_usage[];

#endif /* LORAFUSE_ADAPTER_H */

/*
 * cli.c — exit statuses and error messages shared by the lorafuse command's files.
 */
#include "cli.h"

#include <stdarg.h>
#include <stdio.h>

void lf_cli_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("lorafuse: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

int lf_cli_exit_status(lf_status st)
{
    switch (st) {
    case LF_OK:
        return EXIT_PASS;
    case LF_ERR_IO:
    case LF_ERR_OUT_OF_MEMORY:
    case LF_ERR_DEVICE:
    case LF_ERR_INTERNAL:
    case LF_ERR_BACKEND_UNAVAILABLE:
        return EXIT_RUNTIME;
    default:
        return EXIT_USAGE;
    }
}

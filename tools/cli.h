/*
 * cli.h — what the lorafuse command's files share: exit statuses and error messages.
 */
#ifndef LF_CLI_H
#define LF_CLI_H

#include "lorafuse.h"

/* Exit statuses of every command. */
enum { EXIT_PASS = 0, EXIT_NUMERIC = 1, EXIT_USAGE = 2, EXIT_RUNTIME = 3 };

/* Prints "lorafuse: <message>" and a newline on stderr. */
void lf_cli_error(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;

/* The exit status of a failed library call: a request the library refused as invalid is the
 * user's to fix (EXIT_USAGE); files, memory, the device and bugs are runtime failures. */
int lf_cli_exit_status(lf_status st);

#endif /* LF_CLI_H */

/*
 * LD_PRELOAD shim for the project's TLS tests: make TLS 1.3 sessions
 * rekey early.
 *
 * Copyright (c) 2026 qemu-postcopy developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * GnuTLS rekeys a TLS 1.3 session with AES-GCM by itself after 2^24
 * records sent (tens of GiB of migration), and 3.7.9 cannot lower that.
 * This shim asks for a key update (gnutls_session_key_update(), this
 * side's keys) on the next record sent once GNUTLS_REKEY_MS milliseconds
 * (default 200) have passed since the last, in every session of the
 * process: the code path of the automatic rekey, early.  A peer takes at
 * most 8 updates a second, hence the interval.  Each update is counted
 * in the file GNUTLS_REKEY_COUNT names, if set.
 */

#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <gnutls/gnutls.h>

static _Atomic long long last_ms;

static long long now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

static void count_update(void)
{
    const char *path = getenv("GNUTLS_REKEY_COUNT");
    FILE *f;

    if (path && (f = fopen(path, "a"))) {
        fputs("rekey\n", f);
        fclose(f);
    }
}

ssize_t gnutls_record_send(gnutls_session_t session, const void *data,
                           size_t data_size)
{
    static ssize_t (*real)(gnutls_session_t, const void *, size_t);
    const char *env = getenv("GNUTLS_REKEY_MS");
    long long interval = env ? atoll(env) : 200, now = now_ms();
    long long last = atomic_load(&last_ms);

    if (!real) {
        real = dlsym(RTLD_NEXT, "gnutls_record_send");
    }
    if (gnutls_protocol_get_version(session) == GNUTLS_TLS1_3 &&
        now - last >= interval &&
        atomic_compare_exchange_strong(&last_ms, &last, now) &&
        gnutls_session_key_update(session, 0) == 0) {
        count_update();
    }
    return real(session, data, data_size);
}

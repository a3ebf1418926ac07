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
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
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

/*
 * A key update is started only between records, as GnuTLS's own one is:
 * never while a record the caller sent is partly written (a send that
 * failed with GNUTLS_E_AGAIN is repeated with the same data, and a key
 * update in between would make GnuTLS encrypt that data a second time).
 * An update whose KeyUpdate message cannot be written whole (a
 * non-blocking socket) is finished on the next send before any data, and
 * that send fails with GNUTLS_E_AGAIN until it is, as GnuTLS's automatic
 * rekey does.  State is kept per session in a small table.
 */
struct session_state {
    gnutls_session_t session;
    int send_incomplete;    /* the last send returned GNUTLS_E_AGAIN */
    int update_pending;     /* a key update started and not yet sent */
};

static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static struct session_state table[64];

static struct session_state *state_of(gnutls_session_t session)
{
    struct session_state *free_slot = NULL;
    size_t i;

    for (i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
        if (table[i].session == session) {
            return &table[i];
        }
        if (!table[i].session && !free_slot) {
            free_slot = &table[i];
        }
    }
    if (free_slot) {
        memset(free_slot, 0, sizeof(*free_slot));
        free_slot->session = session;
    }
    return free_slot;
}

static int is_again(int ret)
{
    return ret == GNUTLS_E_AGAIN || ret == GNUTLS_E_INTERRUPTED;
}

ssize_t gnutls_record_send(gnutls_session_t session, const void *data,
                           size_t data_size)
{
    static ssize_t (*real)(gnutls_session_t, const void *, size_t);
    const char *env = getenv("GNUTLS_REKEY_MS");
    long long interval = env ? atoll(env) : 200, now = now_ms();
    long long last = atomic_load(&last_ms);
    struct session_state *st;
    ssize_t ret;
    int update;

    if (!real) {
        real = dlsym(RTLD_NEXT, "gnutls_record_send");
    }
    if (gnutls_protocol_get_version(session) != GNUTLS_TLS1_3) {
        return real(session, data, data_size);
    }

    /* QEMU serialises its calls into one session, or not (issue 1937):
     * the table's lock is only for the table itself. */
    pthread_mutex_lock(&table_lock);
    st = state_of(session);
    pthread_mutex_unlock(&table_lock);
    if (!st) {
        return real(session, data, data_size);
    }

    update = st->update_pending;
    if (!update && !st->send_incomplete && now - last >= interval &&
        atomic_compare_exchange_strong(&last_ms, &last, now)) {
        update = 1;
    }
    if (update) {
        int r = gnutls_session_key_update(session, 0);

        if (is_again(r)) {
            st->update_pending = 1;
            return r;
        }
        st->update_pending = 0;
        if (r == 0) {
            count_update();
        }
    }
    ret = real(session, data, data_size);
    st->send_incomplete = is_again(ret);
    return ret;
}

void gnutls_deinit(gnutls_session_t session)
{
    static void (*real)(gnutls_session_t);
    size_t i;

    if (!real) {
        real = dlsym(RTLD_NEXT, "gnutls_deinit");
    }
    pthread_mutex_lock(&table_lock);
    for (i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
        if (table[i].session == session) {
            table[i].session = NULL;
        }
    }
    pthread_mutex_unlock(&table_lock);
    real(session);
}

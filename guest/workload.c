/*
 * The demo's guest workload: keeps memory busy and proves it intact
 *
 * Copyright (c) 2026 qemu-postcopy developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Fills N MiB with a pattern that follows from each page's index and a
 * per-page generation count, then reads, verifies and rewrites pages
 * forever, timing each access.  With T threads (-t) each thread owns an
 * equal slice of the pages, which only it verifies and rewrites; with
 * -r, a region of shared pages, filled once and never rewritten, which
 * every thread also verifies (one access in 16), so that several vCPUs
 * read the same pages.  Once a second it prints one line on the console:
 *
 *   WL t=<s> acc=<n> worst_us=<n> over1ms=<n> corrupt=<n> h=<c0>,...,<c21>
 *
 * counting the accesses of all threads in that second (corrupt: pages
 * found wrong since the start); h is a histogram of access times in
 * powers of two of microseconds (c0: under 1 us, ck: under 2^k us, c21:
 * 2^20 us or more).  A page that does not hold what it should prints
 *
 *   WL CORRUPTION page=<index> word=<i> want=<hex> got=<hex>
 *
 * once, puts the page right (its owner does) and goes on.  Nothing
 * depends on time but the timing.
 *
 *   workload [-m MiB] [-o random|seq|stride] [-s stride]
 *            [-w percent-rewritten] [-t threads] [-r shared-MiB]
 *            [-x seconds]   flip one byte after that many seconds, in the
 *                           page thread 0 checks next, to show that
 *                           corruption is caught
 *
 * The orders: random, sequential (a sweep), and strided (every s-th page,
 * default 8, then the sweep moves on by one page).
 */

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE_SIZE 4096
#define WORDS (PAGE_SIZE / sizeof(uint64_t))
#define BUCKETS 22
#define MAX_THREADS 64

enum { ORDER_RANDOM, ORDER_SEQ, ORDER_STRIDE };
static const char *const order_names[] = { "random", "seq", "stride" };

/* What every thread shares; read-only once the threads run */
static struct {
    uint8_t *mem;
    uint32_t *gen;
    uint64_t npages;            /* owned by the threads, in slices */
    uint64_t nshared;           /* the shared pages after them */
    unsigned long rewrite;
    unsigned long stride;
    int order;
    unsigned nthreads;
} wl;

/* One thread's counters: its own writes, read by the printer */
typedef struct Worker {
    pthread_t thread;
    unsigned id;
    uint64_t first, npages;     /* its slice */
    uint64_t acc, over1ms, corrupt, worst_ns;
    uint64_t hist[BUCKETS];
    volatile int flip;          /* set by the printer */
} Worker;

static Worker workers[MAX_THREADS];

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

/* splitmix64: a good 64-bit mix of one value */
static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t expected(uint64_t page, uint32_t gen, unsigned word)
{
    return mix((page << 24) ^ ((uint64_t)gen << 12) ^ word);
}

static void fill(uint64_t *p, uint64_t page, uint32_t gen)
{
    unsigned i;

    for (i = 0; i < WORDS; i++) {
        p[i] = expected(page, gen, i);
    }
}

/* Returns the number of wrong words; prints the first */
static unsigned verify(const uint64_t *p, uint64_t page, uint32_t gen)
{
    unsigned i, bad = 0;

    for (i = 0; i < WORDS; i++) {
        uint64_t want = expected(page, gen, i);

        if (p[i] != want && !bad++) {
            printf("WL CORRUPTION page=%llu word=%u want=%016llx "
                   "got=%016llx\n", (unsigned long long)page, i,
                   (unsigned long long)want, (unsigned long long)p[i]);
            fflush(stdout);
        }
    }
    return bad;
}

static unsigned bucket(uint64_t ns)
{
    uint64_t us = ns / 1000;
    unsigned b = 0;

    while (us && b < BUCKETS - 1) {
        us >>= 1;
        b++;
    }
    return b;
}

/* The @i-th page of a slice of @n pages in the workload's order */
static uint64_t nth_page(uint64_t i, uint64_t n, uint64_t *rng)
{
    uint64_t lap, s = wl.stride;

    switch (wl.order) {
    case ORDER_SEQ:
        return i % n;
    case ORDER_STRIDE:
        /* 0, s, 2s, ... then 1, s + 1, ...: every page once a round */
        lap = (i / ((n + s - 1) / s)) % s;
        return ((i % ((n + s - 1) / s)) * s + lap) % n;
    default:
        *rng = mix(*rng);
        return *rng % n;
    }
}

static void *worker_run(void *opaque)
{
    Worker *w = opaque;
    uint64_t rng = w->id + 1, draws = 0, i = 0, page = 0;
    uint64_t shared_rng = mix(w->id + 77);

    for (;;) {
        uint64_t t0, dt, *p, draw = mix(++draws ^ 0x5851f42d4c957f2dull);
        int shared = wl.nshared && (draw >> 60) == 0;

        if (shared) {
            shared_rng = mix(shared_rng);
            page = wl.npages + shared_rng % wl.nshared;
        } else {
            page = w->first + nth_page(i++, w->npages, &rng);
        }
        p = (uint64_t *)(wl.mem + page * PAGE_SIZE);
        if (w->flip && !shared) {
            /* On purpose, in the page checked next: caught at once */
            ((uint8_t *)p)[123] ^= 0x20;
            printf("WL flipped a byte of page %llu on purpose\n",
                   (unsigned long long)page);
            fflush(stdout);
            w->flip = 0;
        }

        t0 = now_ns();
        if (verify(p, page, wl.gen[page])) {
            /* Reported once: put it right (shared pages: their gen 0) */
            fill(p, page, wl.gen[page]);
            __atomic_add_fetch(&w->corrupt, 1, __ATOMIC_RELAXED);
        }
        /*
         * Which accesses rewrite: a stream of its own, one draw an access.
         * (A draw from the page and its generation froze each page at its
         * first "no": after a few seconds nothing was written any more.)
         */
        if (!shared && draw % 100 < wl.rewrite) {
            fill(p, page, ++wl.gen[page]);
        }
        dt = now_ns() - t0;

        __atomic_add_fetch(&w->acc, 1, __ATOMIC_RELAXED);
        __atomic_add_fetch(&w->hist[bucket(dt)], 1, __ATOMIC_RELAXED);
        if (dt > __atomic_load_n(&w->worst_ns, __ATOMIC_RELAXED)) {
            __atomic_store_n(&w->worst_ns, dt, __ATOMIC_RELAXED);
        }
        if (dt > 1000000) {
            __atomic_add_fetch(&w->over1ms, 1, __ATOMIC_RELAXED);
        }
    }
    return NULL;
}

/* Once a second: the last second's accesses of every thread */
static void report(uint64_t start, unsigned long flip_after)
{
    uint64_t last_acc = 0, last_over = 0, last_hist[BUCKETS] = { 0 };
    unsigned t, b;

    for (;;) {
        uint64_t acc = 0, over = 0, corrupt = 0, worst = 0;
        uint64_t hist[BUCKETS] = { 0 };
        uint64_t t0;

        sleep(1);
        t0 = now_ns();
        for (t = 0; t < wl.nthreads; t++) {
            Worker *w = &workers[t];

            acc += __atomic_load_n(&w->acc, __ATOMIC_RELAXED);
            over += __atomic_load_n(&w->over1ms, __ATOMIC_RELAXED);
            corrupt += __atomic_load_n(&w->corrupt, __ATOMIC_RELAXED);
            worst = worst > w->worst_ns ? worst : w->worst_ns;
            __atomic_store_n(&w->worst_ns, 0, __ATOMIC_RELAXED);
            for (b = 0; b < BUCKETS; b++) {
                hist[b] += __atomic_load_n(&w->hist[b], __ATOMIC_RELAXED);
            }
        }
        printf("WL t=%llu acc=%llu worst_us=%llu over1ms=%llu "
               "corrupt=%llu h=", (unsigned long long)((t0 - start) /
                                                       1000000000u),
               (unsigned long long)(acc - last_acc),
               (unsigned long long)(worst / 1000),
               (unsigned long long)(over - last_over),
               (unsigned long long)corrupt);
        for (b = 0; b < BUCKETS; b++) {
            printf("%llu%c", (unsigned long long)(hist[b] - last_hist[b]),
                   b + 1 < BUCKETS ? ',' : '\n');
            last_hist[b] = hist[b];
        }
        fflush(stdout);
        last_acc = acc;
        last_over = over;
        if (flip_after && (t0 - start) / 1000000000u >= flip_after) {
            workers[0].flip = 1;
            flip_after = 0;
        }
    }
}

static void usage(const char *argv0)
{
    fprintf(stderr, "usage: %s [-m MiB] [-o random|seq|stride] "
            "[-s stride] [-w percent] [-t threads] [-r shared-MiB] "
            "[-x seconds]\n", argv0);
    exit(2);
}

int main(int argc, char **argv)
{
    unsigned long mib = 256, shared_mib = 0, threads = 1, flip_after = 0;
    uint64_t page, slice;
    int opt;
    unsigned t;

    wl.rewrite = 50;
    wl.stride = 8;
    while ((opt = getopt(argc, argv, "m:o:s:w:t:r:x:")) != -1) {
        switch (opt) {
        case 'm':
            mib = strtoul(optarg, NULL, 0);
            break;
        case 'o':
            for (wl.order = 0; wl.order < 3; wl.order++) {
                if (!strcmp(optarg, order_names[wl.order])) {
                    break;
                }
            }
            if (wl.order == 3) {
                usage(argv[0]);
            }
            break;
        case 's':
            wl.stride = strtoul(optarg, NULL, 0);
            break;
        case 'w':
            wl.rewrite = strtoul(optarg, NULL, 0);
            break;
        case 't':
            threads = strtoul(optarg, NULL, 0);
            break;
        case 'r':
            shared_mib = strtoul(optarg, NULL, 0);
            break;
        case 'x':
            flip_after = strtoul(optarg, NULL, 0);
            break;
        default:
            usage(argv[0]);
        }
    }
    if (!mib || wl.rewrite > 100 || !wl.stride || !threads ||
        threads > MAX_THREADS) {
        usage(argv[0]);
    }
    wl.nthreads = threads;
    wl.npages = (uint64_t)mib * (1 << 20) / PAGE_SIZE;
    wl.nshared = (uint64_t)shared_mib * (1 << 20) / PAGE_SIZE;
    slice = wl.npages / threads;
    if (!slice) {
        usage(argv[0]);
    }
    wl.mem = mmap(NULL, (wl.npages + wl.nshared) * PAGE_SIZE,
                  PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    wl.gen = calloc(wl.npages + wl.nshared, sizeof(*wl.gen));
    if (wl.mem == MAP_FAILED || !wl.gen) {
        printf("WL ERROR cannot get %lu MiB: %s\n", mib + shared_mib,
               strerror(errno));
        return 1;
    }
    for (page = 0; page < wl.npages + wl.nshared; page++) {
        fill((uint64_t *)(wl.mem + page * PAGE_SIZE), page, 0);
    }
    printf("WL ready mib=%lu pages=%llu order=%s rewrite=%lu%% threads=%lu "
           "shared_mib=%lu\n", mib, (unsigned long long)wl.npages,
           order_names[wl.order], wl.rewrite, threads, shared_mib);
    fflush(stdout);

    for (t = 0; t < threads; t++) {
        workers[t].id = t;
        workers[t].first = t * slice;
        workers[t].npages = t + 1 < threads ? slice : wl.npages - t * slice;
        if (pthread_create(&workers[t].thread, NULL, worker_run,
                           &workers[t])) {
            printf("WL ERROR cannot start thread %u\n", t);
            return 1;
        }
    }
    report(now_ns(), flip_after);
    return 0;
}

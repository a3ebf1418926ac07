/*
 * The demo's guest workload: keeps memory busy and proves it intact
 *
 * Copyright (c) 2026 qemu-postcopy developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Fills N MiB with a pattern that follows from each page's index and a
 * per-page generation count, then reads, verifies and rewrites pages
 * forever (random or sequential order), timing each access.  Once a
 * second it prints one line on the console:
 *
 *   WL t=<s> acc=<n> worst_us=<n> over1ms=<n> corrupt=<n> h=<c0>,...,<c21>
 *
 * counting the accesses of that second (corrupt: pages found wrong since
 * the start); h is a histogram of access times
 * in powers of two of microseconds (c0: under 1 us, ck: under 2^k us,
 * c21: 2^20 us or more).  A page that does not hold what it should prints
 *
 *   WL CORRUPTION page=<index> word=<i> want=<hex> got=<hex>
 *
 * once, puts the page right and goes on.  Nothing depends on time but the timing.
 *
 *   workload [-m MiB] [-o random|seq] [-w percent-rewritten]
 *            [-x seconds]   flip one byte after that many seconds, in the
 *                           page the next access checks, to show that
 *                           corruption is caught
 */

#include <errno.h>
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

static void usage(const char *argv0)
{
    fprintf(stderr, "usage: %s [-m MiB] [-o random|seq] [-w percent] "
            "[-x seconds]\n", argv0);
    exit(2);
}

int main(int argc, char **argv)
{
    unsigned long mib = 256, rewrite = 50, flip_after = 0;
    int sequential = 0, opt;
    uint64_t npages, page = 0, rng = 1, start, second;
    uint64_t acc = 0, worst = 0, over1ms = 0, hist[BUCKETS] = { 0 };
    uint64_t corrupt = 0;
    uint32_t *gen;
    uint8_t *mem;
    unsigned i;

    while ((opt = getopt(argc, argv, "m:o:w:x:")) != -1) {
        switch (opt) {
        case 'm':
            mib = strtoul(optarg, NULL, 0);
            break;
        case 'o':
            if (!strcmp(optarg, "seq")) {
                sequential = 1;
            } else if (strcmp(optarg, "random")) {
                usage(argv[0]);
            }
            break;
        case 'w':
            rewrite = strtoul(optarg, NULL, 0);
            break;
        case 'x':
            flip_after = strtoul(optarg, NULL, 0);
            break;
        default:
            usage(argv[0]);
        }
    }
    if (!mib || rewrite > 100) {
        usage(argv[0]);
    }
    npages = (uint64_t)mib * (1 << 20) / PAGE_SIZE;
    mem = mmap(NULL, npages * PAGE_SIZE, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    gen = calloc(npages, sizeof(*gen));
    if (mem == MAP_FAILED || !gen) {
        printf("WL ERROR cannot get %lu MiB: %s\n", mib, strerror(errno));
        return 1;
    }
    for (page = 0; page < npages; page++) {
        fill((uint64_t *)(mem + page * PAGE_SIZE), page, 0);
    }
    printf("WL ready mib=%lu pages=%llu order=%s rewrite=%lu%%\n", mib,
           (unsigned long long)npages, sequential ? "seq" : "random",
           rewrite);
    fflush(stdout);

    start = second = now_ns();
    page = 0;
    for (;;) {
        uint64_t t0, dt, *p;

        if (sequential) {
            page = (page + 1) % npages;
        } else {
            rng = mix(rng);
            page = rng % npages;
        }
        p = (uint64_t *)(mem + page * PAGE_SIZE);

        t0 = now_ns();
        if (verify(p, page, gen[page])) {
            /* Reported once: put it right and go on */
            fill(p, page, gen[page]);
            corrupt++;
        }
        /* Deterministic choice of which accesses rewrite */
        if (mix(page ^ ((uint64_t)gen[page] << 40)) % 100 < rewrite) {
            fill(p, page, ++gen[page]);
        }
        dt = now_ns() - t0;

        acc++;
        hist[bucket(dt)]++;
        if (dt > worst) {
            worst = dt;
        }
        if (dt > 1000000) {
            over1ms++;
        }
        if (t0 - second >= 1000000000u) {
            printf("WL t=%llu acc=%llu worst_us=%llu over1ms=%llu "
                   "corrupt=%llu h=",
                   (unsigned long long)((t0 - start) / 1000000000u),
                   (unsigned long long)acc,
                   (unsigned long long)(worst / 1000),
                   (unsigned long long)over1ms,
                   (unsigned long long)corrupt);
            for (i = 0; i < BUCKETS; i++) {
                printf("%llu%c", (unsigned long long)hist[i],
                       i + 1 < BUCKETS ? ',' : '\n');
                hist[i] = 0;
            }
            fflush(stdout);
            acc = worst = over1ms = 0;
            second = t0;
            if (flip_after && (t0 - start) / 1000000000u >= flip_after) {
                /*
                 * On purpose, in the page the next access checks, so the
                 * check must say so at once
                 */
                uint64_t victim = sequential ? (page + 1) % npages
                                             : mix(rng) % npages;

                mem[victim * PAGE_SIZE + 123] ^= 0x20;
                printf("WL flipped a byte of page %llu on purpose\n",
                       (unsigned long long)victim);
                fflush(stdout);
                flip_after = 0;
            }
        }
    }
}

/*
 * place-cost: what placing a page costs this host, the way a postcopy
 * destination places it
 *
 * Copyright (c) 2026 qemu-postcopy developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Maps MIB MiB of anonymous memory, registers it with userfaultfd and
 * fills it with UFFDIO_COPY a 4 KiB page at a time, as QEMU's listen
 * thread does; prints the mean time a page.  The kernel takes a free page
 * for each: where this host is a virtual machine whose hypervisor has
 * taken free memory back (free page reporting, a balloon), the first
 * write to it faults in the hypervisor, and that, not the copy, is most
 * of the cost.  scripts/bench.py runs it before and after a run.
 *
 *   place-cost [MIB]       (default 256)
 */

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096

static int uffd_open(void)
{
    int fd = syscall(SYS_userfaultfd, O_CLOEXEC);

#ifdef USERFAULTFD_IOC_NEW
    if (fd < 0) {
        int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);

        if (dev >= 0) {
            fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC);
            close(dev);
        }
    }
#endif
    return fd;
}

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    char *end = NULL;
    long mib = argc > 1 ? strtol(argv[1], &end, 10) : 256;
    size_t len = (size_t)mib << 20;
    struct uffdio_api api = { .api = UFFD_API };
    struct uffdio_register reg;
    static char src[PAGE];
    size_t off;
    double start;
    char *mem;
    int uffd;

    if (mib <= 0 || argc > 2 || (end && (end == argv[1] || *end))) {
        fprintf(stderr, "usage: place-cost [MIB]\n");
        return 2;
    }
    mem = mmap(NULL, len, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        perror("place-cost: mmap");
        return 1;
    }
    /* Postcopy places small pages: so does the destination's RAM */
    madvise(mem, len, MADV_NOHUGEPAGE);
    uffd = uffd_open();
    if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api)) {
        perror("place-cost: userfaultfd");
        return 1;
    }
    reg = (struct uffdio_register) {
        .range = { .start = (unsigned long)mem, .len = len },
        .mode = UFFDIO_REGISTER_MODE_MISSING,
    };
    if (ioctl(uffd, UFFDIO_REGISTER, &reg)) {
        perror("place-cost: UFFDIO_REGISTER");
        return 1;
    }
    memset(src, 0x5a, sizeof(src));

    start = now();
    for (off = 0; off < len; off += PAGE) {
        struct uffdio_copy copy = {
            .dst = (unsigned long)mem + off,
            .src = (unsigned long)src,
            .len = PAGE,
        };

        if (ioctl(uffd, UFFDIO_COPY, &copy)) {
            fprintf(stderr, "place-cost: UFFDIO_COPY at %zu: %s\n", off,
                    strerror(errno));
            return 1;
        }
    }
    printf("%.2f\n", (now() - start) * 1e6 / (len / PAGE));
    return 0;
}

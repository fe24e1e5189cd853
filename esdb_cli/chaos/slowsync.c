/* LD_PRELOAD shim for `esdb chaos slow-disk`: fsync, fdatasync and msync first sleep
   $SLOWSYNC_DELAY_US microseconds, then do the real call (a disk whose flushes are slow).

   Built by esdb_cli/chaos/shims.py with `gcc -shared -fPIC`. The sleep is the raw syscall,
   so a libfaketime loaded beside it (`esdb chaos clock` on the same node) cannot alter it. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static long delay_us;

__attribute__((constructor)) static void slowsync_init(void) {
  const char *s = getenv("SLOWSYNC_DELAY_US");
  delay_us = s ? atol(s) : 0;
}

static void slowsync_wait(void) {
  if (delay_us <= 0) return;
  struct timespec req = {delay_us / 1000000, (delay_us % 1000000) * 1000}, rem;
  int saved = errno;
  while (syscall(SYS_nanosleep, &req, &rem) != 0 && errno == EINTR) req = rem;
  errno = saved;
}

#define WRAP(name, proto, args)                                   \
  int name proto {                                                \
    static int(*real) proto;                                      \
    if (!real) real = (int(*) proto)dlsym(RTLD_NEXT, #name);      \
    slowsync_wait();                                              \
    return real args;                                             \
  }

WRAP(fsync, (int fd), (fd))
WRAP(fdatasync, (int fd), (fd))
WRAP(msync, (void *addr, size_t len, int flags), (addr, len, flags))

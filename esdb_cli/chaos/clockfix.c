/* LD_PRELOAD shim for `esdb chaos clock`, loaded before libfaketime: sleeps on the monotonic
   and boot clocks go straight to the kernel.

   libfaketime 0.9.10 (Debian 12) shifts the deadline of clock_nanosleep(CLOCK_MONOTONIC,
   TIMER_ABSTIME, ...) by the fake offset even with FAKETIME_DONT_FAKE_MONOTONIC=1, so the
   kernel gets a negative time and every time.sleep() of Python >= 3.11 fails with EINVAL
   (libfaketime issue #426). Those clocks are never faked here, so bypassing it is exact. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int clock_nanosleep(clockid_t clock_id, int flags, const struct timespec *req,
                    struct timespec *rem) {
  static int (*next)(clockid_t, int, const struct timespec *, struct timespec *);
  if (clock_id == CLOCK_MONOTONIC || clock_id == CLOCK_BOOTTIME) {
    int saved = errno;
    long r = syscall(SYS_clock_nanosleep, clock_id, flags, req, rem);
    int err = r == 0 ? 0 : errno;
    errno = saved;
    return err; /* clock_nanosleep returns the error number instead of setting errno */
  }
  if (!next)
    next = (int (*)(clockid_t, int, const struct timespec *, struct timespec *))dlsym(
        RTLD_NEXT, "clock_nanosleep");
  return next(clock_id, flags, req, rem);
}

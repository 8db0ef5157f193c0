/*
 * What the bench's C programs (loadgen.c, forward_client.c, udp_loadgen.c)
 * share: clocks, the process's CPU time, the open-files limit, a bounded
 * wait on one socket, and the marks the driver samples /proc at. Each
 * program defines its own die(), which says what failed in its own way.
 */
#ifndef FERRY_BENCH_UTIL_H
#define FERRY_BENCH_UTIL_H

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <time.h>

static void die(const char *what);

/* Monotonic seconds. */
static inline double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CPU seconds this process has used, user and system. */
static inline double cpu_s(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
         (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* Raises the open-files limit to its hard limit; returns it (at most 2^20). */
static inline int max_fds(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) die("getrlimit");
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
  }
  return rl.rlim_cur > (1 << 20) ? (1 << 20) : (int)rl.rlim_cur;
}

/* Waits until `fd` is ready for `what` (POLLIN, POLLOUT): 0, or -1 past `deadline`. */
static inline int wait_fd(int fd, short what, double deadline) {
  for (;;) {
    double left = deadline - now_s();
    if (left <= 0) return -1;
    struct pollfd p = {.fd = fd, .events = what};
    int r = poll(&p, 1, (int)(left * 1000) + 1);
    if (r == 1) return 0;
    if (r < 0 && errno != EINTR) return -1;
  }
}

/* A line for the driver, which samples /proc when it sees it. */
static inline void mark(const char *m) {
  printf("%s\n", m);
  fflush(stdout);
}

#endif

/*
 * delay_link: a point-to-point "wire" with a fixed one-way delay, built from
 * two TUN devices, for bench/forward_bench.ts (this machine has no `tc netem`).
 *
 *   delay_link --dev-a NAME --dev-b NAME --delay-ms D --max-seconds T
 *
 * Opens /dev/net/tun twice (IFF_TUN | IFF_NO_PI: each read or write is one
 * bare IP packet), creating the devices NAME-A and NAME-B, and prints
 * "ready" on stdout. The driver then moves device B into a network namespace
 * and gives both ends addresses (10.200.x.1 peer 10.200.x.2 and back). From
 * then on every packet the host's kernel routes out of device A is read here,
 * held for D ms, and written to device B, where the namespace's kernel
 * receives it; packets from B go to A the same way. Each direction is a FIFO
 * with one constant delay, so order is kept; the round trip is 2 × D.
 *
 * It asks for SCHED_FIFO (real-time) priority so that other work on its core
 * does not make packets late; it runs without it where that is not allowed.
 *
 * The devices are not persistent: they vanish when this program exits, which
 * it does on EOF on stdin, on SIGTERM/SIGINT, or after T seconds (alarm).
 * Its last act is one JSON line on stdout with packet counts and how late
 * (after their due time) packets were written.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define SLOT_BYTES 2048 /* TUN MTU is 1500: a packet never exceeds this */
#define SLOTS 8192      /* per direction; a full queue drops, like a router */

struct slot {
  int64_t due_ns;
  uint16_t len;
  unsigned char data[SLOT_BYTES];
};

struct queue {
  struct slot *slots;
  unsigned head, count;
  long long packets, bytes, dropped_full, dropped_big, write_errors, late_1ms;
  int64_t max_late_ns, sum_late_ns;
};

static volatile sig_atomic_t stop_flag = 0;
static void on_signal(int sig) {
  (void)sig;
  stop_flag = 1;
}

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int open_tun(const char *name) {
  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    fprintf(stderr, "delay_link: open /dev/net/tun: %s\n", strerror(errno));
    exit(3);
  }
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
  snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
  if (ioctl(fd, TUNSETIFF, &ifr) != 0) {
    fprintf(stderr, "delay_link: TUNSETIFF %s: %s\n", name, strerror(errno));
    exit(3);
  }
  return fd;
}

/* Reads every packet waiting on `fd` into `q`, due `delay_ns` from now. */
static void take_in(int fd, struct queue *q, int64_t delay_ns) {
  static unsigned char buf[65536];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0) return; /* EAGAIN, or the device went away */
    if (n == 0) return;
    int64_t due = now_ns() + delay_ns;
    if (n > SLOT_BYTES) {
      q->dropped_big++;
      continue;
    }
    if (q->count == SLOTS) {
      q->dropped_full++;
      continue;
    }
    struct slot *s = &q->slots[(q->head + q->count) % SLOTS];
    s->due_ns = due;
    s->len = (uint16_t)n;
    memcpy(s->data, buf, (size_t)n);
    q->count++;
  }
}

/* Writes every packet of `q` that is due to `fd`, in order. */
static void send_due(int fd, struct queue *q) {
  while (q->count) {
    struct slot *s = &q->slots[q->head];
    int64_t t = now_ns();
    if (s->due_ns > t) return;
    if (write(fd, s->data, s->len) != (ssize_t)s->len) q->write_errors++;
    int64_t late = t - s->due_ns;
    if (late > q->max_late_ns) q->max_late_ns = late;
    if (late > 1000000) q->late_1ms++;
    q->sum_late_ns += late;
    q->packets++;
    q->bytes += s->len;
    q->head = (q->head + 1) % SLOTS;
    q->count--;
  }
}

int main(int argc, char **argv) {
  const char *dev_a = NULL, *dev_b = NULL;
  double delay_ms = 10, max_seconds = 600;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--dev-a")) dev_a = argv[i + 1];
    else if (!strcmp(argv[i], "--dev-b")) dev_b = argv[i + 1];
    else if (!strcmp(argv[i], "--delay-ms")) delay_ms = atof(argv[i + 1]);
    else if (!strcmp(argv[i], "--max-seconds")) max_seconds = atof(argv[i + 1]);
    else {
      fprintf(stderr, "delay_link: unknown option %s\n", argv[i]);
      return 2;
    }
  }
  if (!dev_a || !dev_b || delay_ms < 0 || max_seconds <= 0) {
    fprintf(stderr, "usage: delay_link --dev-a NAME --dev-b NAME --delay-ms D --max-seconds T\n");
    return 2;
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal; /* no SA_RESTART: ppoll returns EINTR */
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGALRM, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);
  alarm((unsigned)max_seconds + 1);

  int fa = open_tun(dev_a), fb = open_tun(dev_b);
  struct queue qa = {0}, qb = {0}; /* qa: read from A, for B; qb: from B, for A */
  qa.slots = malloc(sizeof(struct slot) * SLOTS);
  qb.slots = malloc(sizeof(struct slot) * SLOTS);
  if (!qa.slots || !qb.slots) {
    fprintf(stderr, "delay_link: out of memory\n");
    return 3;
  }
  /* Real-time priority keeps the delay exact while the core has other work;
   * the kernel's RT throttling still leaves others 5% should this misbehave. */
  struct sched_param sp = {.sched_priority = 10};
  int realtime = sched_setscheduler(0, SCHED_FIFO, &sp) == 0;
  printf("ready\n");
  fflush(stdout);

  const int64_t delay_ns = (int64_t)(delay_ms * 1e6);
  const int64_t deadline = now_ns() + (int64_t)(max_seconds * 1e9);
  int stdin_open = 1;
  while (!stop_flag) {
    int64_t t = now_ns();
    if (t >= deadline) break;
    int64_t wait = deadline - t;
    if (qa.count && qa.slots[qa.head].due_ns - t < wait) wait = qa.slots[qa.head].due_ns - t;
    if (qb.count && qb.slots[qb.head].due_ns - t < wait) wait = qb.slots[qb.head].due_ns - t;
    if (wait < 0) wait = 0;
    struct timespec ts = {.tv_sec = wait / 1000000000LL, .tv_nsec = wait % 1000000000LL};
    struct pollfd p[3] = {
        {.fd = fa, .events = POLLIN},
        {.fd = fb, .events = POLLIN},
        {.fd = stdin_open ? 0 : -1, .events = POLLIN},
    };
    int n = ppoll(p, 3, &ts, NULL);
    if (n < 0 && errno != EINTR) break;
    if (n > 0) {
      if (p[0].revents & POLLIN) take_in(fa, &qa, delay_ns);
      if (p[1].revents & POLLIN) take_in(fb, &qb, delay_ns);
      if (p[2].revents) {
        char tmp[64];
        ssize_t r = read(0, tmp, sizeof tmp);
        if (r <= 0) break; /* the driver is done (or gone) */
      }
    }
    send_due(fb, &qa);
    send_due(fa, &qb);
  }
  printf("{\"a_to_b_packets\":%lld,\"b_to_a_packets\":%lld,\"a_to_b_bytes\":%lld,"
         "\"b_to_a_bytes\":%lld,\"dropped_queue_full\":%lld,\"dropped_too_big\":%lld,"
         "\"write_errors\":%lld,\"max_late_us\":%.1f,\"mean_late_us\":%.1f,\"late_over_1ms\":%lld,\"realtime\":%d}\n",
         qa.packets, qb.packets, qa.bytes, qb.bytes, qa.dropped_full + qb.dropped_full,
         qa.dropped_big + qb.dropped_big, qa.write_errors + qb.write_errors,
         (double)(qa.max_late_ns > qb.max_late_ns ? qa.max_late_ns : qb.max_late_ns) / 1e3,
         (qa.packets + qb.packets)
             ? (double)(qa.sum_late_ns + qb.sum_late_ns) / 1e3 / (double)(qa.packets + qb.packets)
             : 0.0,
         qa.late_1ms + qb.late_1ms, realtime);
  fflush(stdout);
  close(fa);
  close(fb);
  return 0;
}

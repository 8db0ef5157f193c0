/*
 * forward_client: targets and client modes for bench/forward_bench.ts that
 * bench/loadgen.c does not have. One small single-threaded program; the
 * driver compiles it at run time (`cc -O2`, into bench/out/). Every mode stops
 * by itself (alarm), and the client modes only connect to 127.0.0.0/8 or to
 * 10.200.0.0/16, the private range the bench gives to the network namespace
 * it creates itself.
 *
 *   forward_client serve --bind ADDR --max-seconds T [--echo-close-after N]
 *       Two target servers on ADDR, port 0 each; prints "echo P",
 *       "echo-open P", "ready" on stdout:
 *         echo      - writes back what it reads; with --echo-close-after N it
 *                     closes once it has echoed N bytes (the target closes
 *                     first, as in the SOCKS bench, so TIME_WAIT stays on the
 *                     target side); otherwise it closes on EOF. If the first
 *                     byte a client sends is 'G', it is a source instead: it
 *                     writes an endless stream until the peer goes. Either
 *                     way it never speaks first, so a forwarder may keep
 *                     connections to it in a pool, and one forwarder (one
 *                     upstream) serves both the echo and the download tests.
 *         echo-open - writes back what it reads; closes on EOF only
 *       Exits after T seconds or at EOF on stdin.
 *
 *   forward_client rtt --host H --port P --count N
 *       N sequential TCP connects to H:P (connect() time is one round trip),
 *       then N one-byte ping-pongs on one connection (an echo-open port).
 *       Prints one JSON line.
 *
 *   forward_client ttfb --host H --port P --count N --pause-ms X --payload B
 *       N sessions, one at a time, X ms apart: connect, send B bytes as soon
 *       as connect() completes, read the B-byte echo, close. For each, the
 *       time from just before connect() to the first byte of the response
 *       (and to its last byte). Prints one JSON line with percentiles.
 *
 *   forward_client download --host H --port P --seconds S --warmup W
 *       One stream: connect, send "G", then read the source's stream for
 *       S seconds after a W-second warm-up. Prints "M" when measuring starts,
 *       "E" when it ends (the driver samples /proc then), then one JSON line.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"

static void die(const char *what) {
  fprintf(stderr, "forward_client: %s: %s\n", what, strerror(errno));
  exit(2);
}

/* ---- options ------------------------------------------------------------ */

static const char *opt_host = "127.0.0.1", *opt_bind = "127.0.0.1";
static int opt_port = 0, opt_count = 100, opt_payload = 64, opt_echo_close_after = 0;
static double opt_pause_ms = 0, opt_seconds = 3, opt_warmup = 0, opt_max_seconds = 600;
static double opt_timeout_ms = 3000;

static void parse_opts(int argc, char **argv) {
  for (int i = 2; i < argc; i++) {
    const char *k = argv[i];
    if (i + 1 >= argc) {
      fprintf(stderr, "forward_client: option %s needs a value\n", k);
      exit(2);
    }
    const char *v = argv[++i];
    if (!strcmp(k, "--host")) opt_host = v;
    else if (!strcmp(k, "--bind")) opt_bind = v;
    else if (!strcmp(k, "--port")) opt_port = atoi(v);
    else if (!strcmp(k, "--count")) opt_count = atoi(v);
    else if (!strcmp(k, "--payload")) opt_payload = atoi(v);
    else if (!strcmp(k, "--pause-ms")) opt_pause_ms = atof(v);
    else if (!strcmp(k, "--timeout-ms")) opt_timeout_ms = atof(v);
    else if (!strcmp(k, "--seconds")) opt_seconds = atof(v);
    else if (!strcmp(k, "--warmup")) opt_warmup = atof(v);
    else if (!strcmp(k, "--max-seconds")) opt_max_seconds = atof(v);
    else if (!strcmp(k, "--echo-close-after")) opt_echo_close_after = atoi(v);
    else {
      fprintf(stderr, "forward_client: unknown option %s\n", k);
      exit(2);
    }
  }
  if (opt_payload < 1 || opt_payload > 4096) opt_payload = 64;
  if (opt_count < 1) opt_count = 1;
}

/* Parses an IPv4 address that this bench may talk to: 127/8 or 10.200/16. */
static struct in_addr allowed_addr(const char *text) {
  struct in_addr a;
  if (inet_pton(AF_INET, text, &a) != 1) {
    fprintf(stderr, "forward_client: not an IPv4 address: %s\n", text);
    exit(2);
  }
  uint32_t h = ntohl(a.s_addr);
  if ((h >> 24) != 127 && (h >> 16) != ((10u << 8) | 200u)) {
    fprintf(stderr, "forward_client: %s is outside 127.0.0.0/8 and 10.200.0.0/16\n", text);
    exit(2);
  }
  return a;
}

static struct sockaddr_in target(void) {
  struct sockaddr_in sa = {0};
  sa.sin_family = AF_INET;
  sa.sin_addr = allowed_addr(opt_host);
  sa.sin_port = htons((uint16_t)opt_port);
  return sa;
}

/* Non-blocking connect, waited for with poll. Returns the fd or -1. */
static int connect_to(const struct sockaddr_in *sa, double deadline) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(fd, (const struct sockaddr *)sa, sizeof *sa) != 0 && errno != EINPROGRESS) {
    close(fd);
    return -1;
  }
  if (wait_fd(fd, POLLOUT, deadline)) {
    close(fd);
    return -1;
  }
  int err = 0;
  socklen_t len = sizeof err;
  getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
  if (err) {
    close(fd);
    return -1;
  }
  return fd;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* Percentile by nearest rank on a sorted array. */
static double pct(const double *v, int n, double p) {
  if (n == 0) return 0;
  int i = (int)((double)n * p);
  if (i >= n) i = n - 1;
  return v[i];
}

static void print_stats(const char *name, double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  double sum = 0;
  for (int i = 0; i < n; i++) sum += v[i];
  printf("\"%s\":{\"n\":%d,\"min\":%.3f,\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"max\":%.3f,"
         "\"mean\":%.3f}",
         name, n, n ? v[0] : 0, pct(v, n, 0.5), pct(v, n, 0.9), pct(v, n, 0.99),
         n ? v[n - 1] : 0, n ? sum / n : 0);
}

/* ---- serve -------------------------------------------------------------- */

enum { K_FREE, K_L_ECHO, K_L_OPEN, K_ECHO, K_OPEN, K_SOURCE, K_STDIN };

struct sconn {
  unsigned char kind;
  unsigned int echoed;
  unsigned int pend_off, pend_len;
  unsigned char *pend;
};

#define SRC_CHUNK (256 * 1024)
static unsigned char src_buf[SRC_CHUNK];
static unsigned char io_buf[256 * 1024];

static int listen_port0(struct in_addr addr, int *port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket");
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_addr = addr;
  /* Port 0 can fail for a moment (EADDRINUSE) when other programs on this
   * machine have used up the ephemeral range: retry for up to 10 s. */
  for (int tries = 0; bind(fd, (struct sockaddr *)&a, sizeof a) != 0; tries++) {
    if (errno != EADDRINUSE || tries >= 100) die("bind");
    usleep(100000);
  }
  if (listen(fd, 65535) != 0) die("listen");
  socklen_t len = sizeof a;
  getsockname(fd, (struct sockaddr *)&a, &len);
  *port = ntohs(a.sin_port);
  return fd;
}

static void set_events(int ep, int fd, uint32_t events) {
  struct epoll_event ev = {.events = events, .data.fd = fd};
  epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
}

static int run_serve(void) {
  struct in_addr addr = allowed_addr(opt_bind);
  int nfd = max_fds();
  struct sconn *c = calloc((size_t)nfd, sizeof *c);
  if (!c) die("calloc");
  for (int i = 0; i < SRC_CHUNK; i++) src_buf[i] = (unsigned char)(i * 7 + 1);
  int ep = epoll_create1(EPOLL_CLOEXEC);
  int pe, po;
  int le = listen_port0(addr, &pe), lo = listen_port0(addr, &po);
  c[le].kind = K_L_ECHO;
  c[lo].kind = K_L_OPEN;
  int fds[3] = {le, lo, 0};
  c[0].kind = K_STDIN;
  for (int i = 0; i < 3; i++) {
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fds[i]};
    epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
  }
  printf("echo %d\necho-open %d\nready\n", pe, po);
  fflush(stdout);

  double deadline = now_s() + opt_max_seconds;
  struct epoll_event evs[512];
  for (;;) {
    double left = deadline - now_s();
    if (left <= 0) break;
    int n = epoll_wait(ep, evs, 512, left > 1 ? 1000 : (int)(left * 1000) + 1);
    if (n < 0 && errno != EINTR) die("epoll_wait");
    for (int i = 0; i < n; i++) {
      int fd = evs[i].data.fd;
      uint32_t e = evs[i].events;
      struct sconn *s = &c[fd];
      int dead = 0;
      switch (s->kind) {
      case K_STDIN: {
        char tmp[256];
        if (read(0, tmp, sizeof tmp) <= 0) return 0;
        break;
      }
      case K_L_ECHO:
      case K_L_OPEN:
        for (;;) {
          int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (cfd < 0) break;
          if (cfd >= nfd) { close(cfd); continue; }
          int one = 1;
          setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          c[cfd].kind = s->kind == K_L_ECHO ? K_ECHO : K_OPEN;
          c[cfd].echoed = 0;
          c[cfd].pend_len = 0;
          struct epoll_event ce = {.events = EPOLLIN, .data.fd = cfd};
          epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &ce);
        }
        break;
      case K_ECHO:
      case K_OPEN: {
        int closing = s->kind == K_ECHO && opt_echo_close_after > 0;
        if (s->pend_len) {
          ssize_t w = send(fd, s->pend + s->pend_off, s->pend_len, MSG_NOSIGNAL);
          if (w < 0 && errno != EAGAIN) { dead = 1; break; }
          if (w > 0) { s->pend_off += (unsigned)w; s->pend_len -= (unsigned)w; }
          if (s->pend_len) break;
          set_events(ep, fd, EPOLLIN);
          if (closing && s->echoed >= (unsigned)opt_echo_close_after) { dead = 1; break; }
        }
        for (;;) {
          ssize_t r = read(fd, io_buf, 32768);
          if (r == 0 || (r < 0 && errno != EAGAIN)) { dead = 1; break; }
          if (r < 0) break;
          if (s->kind == K_ECHO && s->echoed == 0 && io_buf[0] == 'G') {
            s->kind = K_SOURCE; /* a download: stream from now on */
            set_events(ep, fd, EPOLLIN | EPOLLOUT);
            break;
          }
          s->echoed += (unsigned)r;
          ssize_t w = send(fd, io_buf, (size_t)r, MSG_NOSIGNAL);
          if (w < 0 && errno != EAGAIN) { dead = 1; break; }
          if (w < 0) w = 0;
          if (w < r) {
            if (!s->pend) s->pend = malloc(32768);
            memcpy(s->pend, io_buf + w, (size_t)(r - w));
            s->pend_off = 0;
            s->pend_len = (unsigned)(r - w);
            set_events(ep, fd, EPOLLOUT);
            break;
          }
          if (closing && s->echoed >= (unsigned)opt_echo_close_after) { dead = 1; break; }
          if (r < 32768) break;
        }
        break;
      }
      case K_SOURCE: {
        if (e & (EPOLLERR | EPOLLHUP)) { dead = 1; break; }
        if (e & EPOLLIN) {
          ssize_t r = read(fd, io_buf, sizeof io_buf);
          if (r == 0 || (r < 0 && errno != EAGAIN)) { dead = 1; break; }
        }
        if (e & EPOLLOUT) {
          for (int k = 0; k < 16; k++) {
            ssize_t w = send(fd, src_buf, SRC_CHUNK, MSG_NOSIGNAL);
            if (w < 0) { if (errno != EAGAIN) dead = 1; break; }
            if (w < SRC_CHUNK) break;
          }
        }
        break;
      }
      default:
        epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
        break;
      }
      if (dead) {
        s->kind = K_FREE;
        s->pend_len = 0;
        close(fd);
      }
    }
  }
  return 0;
}

/* ---- rtt ---------------------------------------------------------------- */

static int run_rtt(void) {
  struct sockaddr_in sa = target();
  double *conn_ms = calloc((size_t)opt_count, sizeof(double));
  double *ping_ms = calloc((size_t)opt_count, sizeof(double));
  int nc = 0, np = 0, errors = 0;
  for (int i = 0; i < opt_count; i++) {
    double t0 = now_s();
    int fd = connect_to(&sa, t0 + opt_timeout_ms / 1000);
    if (fd < 0) { errors++; continue; }
    conn_ms[nc++] = (now_s() - t0) * 1000;
    close(fd);
    usleep(5000);
  }
  int fd = connect_to(&sa, now_s() + opt_timeout_ms / 1000);
  if (fd >= 0) {
    for (int i = 0; i < opt_count; i++) {
      unsigned char b = 'p';
      double t0 = now_s();
      if (send(fd, &b, 1, MSG_NOSIGNAL) != 1) { errors++; break; }
      if (wait_fd(fd, POLLIN, t0 + opt_timeout_ms / 1000) || read(fd, &b, 1) != 1) {
        errors++;
        break;
      }
      ping_ms[np++] = (now_s() - t0) * 1000;
      usleep(5000);
    }
    close(fd);
  } else {
    errors++;
  }
  printf("{\"errors\":%d,", errors);
  print_stats("connect_ms", conn_ms, nc);
  printf(",");
  print_stats("ping_ms", ping_ms, np);
  printf("}\n");
  return 0;
}

/* ---- ttfb --------------------------------------------------------------- */

static int run_ttfb(void) {
  struct sockaddr_in sa = target();
  unsigned char req[4096], resp[4096];
  memset(req, 'q', sizeof req);
  double *first = calloc((size_t)opt_count, sizeof(double));
  double *last = calloc((size_t)opt_count, sizeof(double));
  double *conn = calloc((size_t)opt_count, sizeof(double));
  double *order = calloc((size_t)opt_count, sizeof(double));
  double *conn_order = calloc((size_t)opt_count, sizeof(double));
  int n = 0, errors = 0, short_reads = 0;
  double t_begin = now_s();
  for (int i = 0; i < opt_count; i++) {
    if (i > 0 && opt_pause_ms > 0) usleep((useconds_t)(opt_pause_ms * 1000));
    double t0 = now_s(), deadline = t0 + opt_timeout_ms / 1000;
    int fd = connect_to(&sa, deadline);
    if (fd < 0) { errors++; continue; }
    double tc = now_s();
    if (send(fd, req, (size_t)opt_payload, MSG_NOSIGNAL) != opt_payload) {
      errors++;
      close(fd);
      continue;
    }
    int got = 0;
    double tf = 0;
    while (got < opt_payload) {
      if (wait_fd(fd, POLLIN, deadline)) break;
      ssize_t r = read(fd, resp + got, (size_t)(opt_payload - got));
      if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (r <= 0) break;
      if (got == 0) tf = now_s();
      got += (int)r;
    }
    double tl = now_s();
    close(fd);
    if (got == 0) { errors++; continue; }
    if (got < opt_payload) { short_reads++; continue; }
    conn[n] = (tc - t0) * 1000;
    first[n] = (tf - t0) * 1000;
    order[n] = first[n];
    conn_order[n] = conn[n];
    last[n] = (tl - t0) * 1000;
    n++;
  }
  printf("{\"sessions\":%d,\"errors\":%d,\"short_reads\":%d,\"elapsed\":%.3f,", n, errors,
         short_reads, now_s() - t_begin);
  print_stats("connect_ms", conn, n);
  printf(",");
  print_stats("first_byte_ms", first, n);
  printf(",");
  print_stats("last_byte_ms", last, n);
  /* The raw samples too, in run order (print_stats sorted its arrays). */
  printf(",\"first_byte_samples_ms\":[");
  for (int i = 0; i < n; i++) printf("%s%.3f", i ? "," : "", order[i]);
  printf("],\"connect_samples_ms\":[");
  for (int i = 0; i < n; i++) printf("%s%.3f", i ? "," : "", conn_order[i]);
  printf("]}\n");
  return 0;
}

/* ---- download ----------------------------------------------------------- */

static unsigned char dl_buf[1 << 20];

static int run_download(void) {
  struct sockaddr_in sa = target();
  int fd = connect_to(&sa, now_s() + 10);
  unsigned char go = 'G';
  if (fd < 0 || send(fd, &go, 1, MSG_NOSIGNAL) != 1) {
    printf("{\"error\":\"connect failed\"}\n");
    return 1;
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  struct timeval tv = {.tv_sec = 0, .tv_usec = 100000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  double t_measure = now_s() + opt_warmup, t_end = t_measure + opt_seconds;
  long long bytes = 0, warm_bytes = 0;
  int measuring = opt_warmup <= 0, failed = 0;
  double cpu0 = 0, t_first = t_measure;
  if (measuring) {
    cpu0 = cpu_s();
    t_first = now_s();
    printf("M\n");
    fflush(stdout);
  }
  for (;;) {
    double t = now_s();
    if (!measuring && t >= t_measure) {
      measuring = 1;
      cpu0 = cpu_s();
      t_first = t;
      printf("M\n");
      fflush(stdout);
    }
    if (t >= t_end) break;
    ssize_t r = read(fd, dl_buf, sizeof dl_buf);
    if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) { failed = 1; break; }
    if (r < 0) continue;
    if (measuring) bytes += r; else warm_bytes += r;
  }
  double elapsed = now_s() - t_first, cpu = cpu_s() - cpu0;
  printf("E\n");
  fflush(stdout);
  close(fd);
  printf("{\"bytes\":%lld,\"warmup_bytes\":%lld,\"elapsed\":%.4f,\"mib_s\":%.1f,\"cpu\":%.4f,"
         "\"stream_ended_early\":%s}\n",
         bytes, warm_bytes, elapsed, (double)bytes / elapsed / 1048576.0, cpu,
         failed ? "true" : "false");
  return 0;
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  if (argc < 2) {
    fprintf(stderr, "usage: forward_client serve|rtt|ttfb|download [options]\n");
    return 2;
  }
  parse_opts(argc, argv);
  double budget = opt_max_seconds;
  if (!strcmp(argv[1], "download")) budget = opt_warmup + opt_seconds + 30;
  if (!strcmp(argv[1], "rtt") || !strcmp(argv[1], "ttfb"))
    budget = opt_count * (opt_pause_ms + 2 * opt_timeout_ms + 10) / 1000 + 30;
  alarm((unsigned)budget + 30);
  if (!strcmp(argv[1], "serve")) return run_serve();
  if (!strcmp(argv[1], "rtt")) return run_rtt();
  if (!strcmp(argv[1], "ttfb")) return run_ttfb();
  if (!strcmp(argv[1], "download")) return run_download();
  fprintf(stderr, "forward_client: unknown mode %s\n", argv[1]);
  return 2;
}

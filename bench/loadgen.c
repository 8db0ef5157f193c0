/*
 * loadgen: the load generator and target servers for `make bench`.
 *
 * One small single-threaded epoll program with four modes. bench/bench.ts
 * compiles it at run time (`cc -O2`, into bench/out/) and pins it to core 0.
 * Every socket it opens is on 127.0.0.1; every mode stops by itself.
 *
 *   loadgen serve --max-seconds T [--echo-close-after N]
 *       Runs four target servers on 127.0.0.1, port 0 each, and prints
 *       "echo P", "echo-open P", "source P", "hold P", "ready" on stdout:
 *         echo   - writes back whatever it reads; closes on EOF, or as soon
 *                  as it has echoed N bytes when --echo-close-after is given
 *                  (the target closes first)
 *         echo-open - writes back whatever it reads; closes on EOF only (the
 *                  client closes first)
 *         source - writes an endless stream of bytes until the peer goes
 *         hold   - accepts and keeps the connection open, idle
 *       A line "drop" on stdin closes every held connection (and prints
 *       "dropped N"). Exits after T seconds or when stdin reaches EOF.
 *
 *   loadgen sessions --proxy HOST:PORT|none --target-port P --conc N
 *                    --seconds S --warmup W --payload B [--pause-ms X]
 *       Full sessions: connect, SOCKS5 greeting 05 01 00, read the method
 *       reply, CONNECT 127.0.0.1:P, read the reply, send B bytes, read the B
 *       byte echo, close. N sessions at a time. With --proxy none: connect to
 *       the target, B-byte echo, close. Prints one JSON line.
 *
 *   loadgen download --proxy HOST:PORT|none --target-port P --seconds S
 *                    --warmup W --max-bytes M
 *       One stream through the proxy from the source server; reads for S
 *       seconds after a W-second warm-up (or until M bytes). Prints JSON.
 *
 *   loadgen idle --proxy HOST:PORT|none --target-port P --count N --conc C
 *                --max-seconds T
 *       Opens N SOCKS sessions to the hold server (C handshakes in flight),
 *       prints a JSON line when done, then holds them, idle, until stdin
 *       gets a line or EOF (or T seconds pass). Then it prints "R", waits up
 *       to 5 s for the proxy to close them (after the driver has the hold
 *       server drop its ends), closes the rest, and prints a last JSON line
 *       that says how many the proxy had dropped while they were idle.
 *
 *   sessions and download print "M" when the measured window starts and "E"
 *   when it ends, so that the driver can read /proc at those moments.
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
  fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
  exit(2);
}

/* ---- options ------------------------------------------------------------ */

static const char *opt_proxy = "none";
static int opt_target_port = 0, opt_conc = 50, opt_payload = 64, opt_count = 5000;
static int opt_echo_close_after = 0;
static double opt_seconds = 5, opt_warmup = 0, opt_max_seconds = 600;
/* sessions: how long each slot waits after a session before the next (--conc 1
 * and a pause: the latency of a session that finds the proxy idle). */
static double opt_pause_ms = 0;
static long long opt_max_bytes = 1LL << 40;

static void parse_opts(int argc, char **argv) {
  for (int i = 2; i < argc; i++) {
    const char *k = argv[i];
    if (i + 1 >= argc) {
      fprintf(stderr, "loadgen: option %s needs a value\n", k);
      exit(2);
    }
    const char *v = argv[++i];
    if (!strcmp(k, "--proxy")) opt_proxy = v;
    else if (!strcmp(k, "--target-port")) opt_target_port = atoi(v);
    else if (!strcmp(k, "--conc")) opt_conc = atoi(v);
    else if (!strcmp(k, "--payload")) opt_payload = atoi(v);
    else if (!strcmp(k, "--count")) opt_count = atoi(v);
    else if (!strcmp(k, "--seconds")) opt_seconds = atof(v);
    else if (!strcmp(k, "--warmup")) opt_warmup = atof(v);
    else if (!strcmp(k, "--pause-ms")) opt_pause_ms = atof(v);
    else if (!strcmp(k, "--max-seconds")) opt_max_seconds = atof(v);
    else if (!strcmp(k, "--max-bytes")) opt_max_bytes = atoll(v);
    else if (!strcmp(k, "--echo-close-after")) opt_echo_close_after = atoi(v);
    else {
      fprintf(stderr, "loadgen: unknown option %s\n", k);
      exit(2);
    }
  }
}

/* The address the client connects to: the proxy, or the target itself. */
static struct sockaddr_in first_hop;
static int via_proxy;

static void setup_first_hop(void) {
  memset(&first_hop, 0, sizeof first_hop);
  first_hop.sin_family = AF_INET;
  if (!strcmp(opt_proxy, "none")) {
    via_proxy = 0;
    first_hop.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    first_hop.sin_port = htons((uint16_t)opt_target_port);
    return;
  }
  via_proxy = 1;
  char host[64];
  const char *colon = strrchr(opt_proxy, ':');
  if (!colon || (size_t)(colon - opt_proxy) >= sizeof host) {
    fprintf(stderr, "loadgen: bad --proxy %s\n", opt_proxy);
    exit(2);
  }
  memcpy(host, opt_proxy, (size_t)(colon - opt_proxy));
  host[colon - opt_proxy] = 0;
  if (inet_pton(AF_INET, host, &first_hop.sin_addr) != 1) {
    fprintf(stderr, "loadgen: --proxy must be an IPv4 address: %s\n", host);
    exit(2);
  }
  /* The network rule of this benchmark: loopback only. */
  if ((ntohl(first_hop.sin_addr.s_addr) >> 24) != 127) {
    fprintf(stderr, "loadgen: --proxy must be on 127.0.0.0/8\n");
    exit(2);
  }
  first_hop.sin_port = htons((uint16_t)atoi(colon + 1));
}

static int start_connect(void) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  /* No TCP_NODELAY: every message here goes out with nothing unacknowledged
   * before it (request/response), so Nagle never holds one back. */
  if (connect(fd, (struct sockaddr *)&first_hop, sizeof first_hop) != 0 &&
      errno != EINPROGRESS) {
    close(fd);
    return -1;
  }
  return fd;
}

static unsigned char socks_greeting[3] = {5, 1, 0};
static unsigned char socks_request[10];

static void build_request(void) {
  unsigned char r[10] = {5, 1, 0, 1, 127, 0, 0, 1, 0, 0};
  r[8] = (unsigned char)(opt_target_port >> 8);
  r[9] = (unsigned char)(opt_target_port & 0xff);
  memcpy(socks_request, r, sizeof r);
}

/* Bytes in a SOCKS5 reply, once its first 5 bytes are in; -1 if malformed. */
static int socks_reply_len(const unsigned char *b) {
  switch (b[3]) {
  case 1: return 4 + 4 + 2;
  case 4: return 4 + 16 + 2;
  case 3: return 4 + 1 + b[4] + 2;
  default: return -1;
  }
}

/* ---- serve -------------------------------------------------------------- */

enum { K_FREE, K_LISTEN_ECHO, K_LISTEN_ECHO_OPEN, K_LISTEN_SOURCE, K_LISTEN_HOLD, K_ECHO, K_SOURCE, K_HOLD, K_STDIN };

struct sconn {
  unsigned char kind;
  unsigned int echoed; /* bytes echoed so far, for --echo-close-after */
  unsigned int close_after; /* close once this many are echoed; 0: on EOF only */
  unsigned short pend_off, pend_len; /* echo bytes not yet written back */
  unsigned char *pend;
};

static int listen_on_port0(int *port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket");
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0) die("bind");
  if (listen(fd, 65535) != 0) die("listen");
  socklen_t len = sizeof a;
  getsockname(fd, (struct sockaddr *)&a, &len);
  *port = ntohs(a.sin_port);
  return fd;
}

#define SRC_CHUNK (256 * 1024)
static unsigned char src_buf[SRC_CHUNK];
static unsigned char io_buf[256 * 1024];

static int run_serve(void) {
  int nfd = max_fds();
  struct sconn *c = calloc((size_t)nfd, sizeof *c);
  if (!c) die("calloc");
  for (int i = 0; i < SRC_CHUNK; i++) src_buf[i] = (unsigned char)(i * 7 + 1);
  int ep = epoll_create1(EPOLL_CLOEXEC);
  int max_fd_seen = 0;
  int pe, po, ps, ph;
  int le = listen_on_port0(&pe), lo = listen_on_port0(&po);
  int ls = listen_on_port0(&ps), lh = listen_on_port0(&ph);
  c[le].kind = K_LISTEN_ECHO;
  c[lo].kind = K_LISTEN_ECHO_OPEN;
  c[ls].kind = K_LISTEN_SOURCE;
  c[lh].kind = K_LISTEN_HOLD;
  struct epoll_event ev = {.events = EPOLLIN};
  ev.data.fd = le; epoll_ctl(ep, EPOLL_CTL_ADD, le, &ev);
  ev.data.fd = lo; epoll_ctl(ep, EPOLL_CTL_ADD, lo, &ev);
  ev.data.fd = ls; epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
  ev.data.fd = lh; epoll_ctl(ep, EPOLL_CTL_ADD, lh, &ev);
  c[0].kind = K_STDIN;
  ev.data.fd = 0; epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev); /* EOF on stdin: exit */
  printf("echo %d\necho-open %d\nsource %d\nhold %d\nready\n", pe, po, ps, ph);
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
      switch (s->kind) {
      case K_STDIN: {
        /* A line "drop" closes every held connection; EOF ends the server. */
        char tmp[256];
        ssize_t r = read(0, tmp, sizeof tmp - 1);
        if (r <= 0) return 0;
        tmp[r] = 0;
        if (strstr(tmp, "drop")) {
          int dropped = 0;
          for (int k = 0; k <= max_fd_seen; k++)
            if (c[k].kind == K_HOLD) { c[k].kind = K_FREE; close(k); dropped++; }
          printf("dropped %d\n", dropped);
          fflush(stdout);
        }
        break;
      }
      case K_LISTEN_ECHO:
      case K_LISTEN_ECHO_OPEN:
      case K_LISTEN_SOURCE:
      case K_LISTEN_HOLD:
        for (;;) {
          int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (cfd < 0) break; /* EAGAIN, or EMFILE: the peer will see it */
          if (cfd >= nfd) { close(cfd); continue; }
          if (cfd > max_fd_seen) max_fd_seen = cfd;
          struct epoll_event ce = {0};
          ce.data.fd = cfd;
          if (s->kind == K_LISTEN_ECHO || s->kind == K_LISTEN_ECHO_OPEN) {
            c[cfd].kind = K_ECHO;
            ce.events = EPOLLIN;
          }
          else if (s->kind == K_LISTEN_SOURCE) { c[cfd].kind = K_SOURCE; ce.events = EPOLLIN | EPOLLOUT; }
          else { c[cfd].kind = K_HOLD; ce.events = EPOLLIN | EPOLLRDHUP; }
          c[cfd].pend_len = 0;
          c[cfd].echoed = 0;
          c[cfd].close_after = s->kind == K_LISTEN_ECHO ? (unsigned int)opt_echo_close_after : 0;
          epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &ce);
        }
        break;
      case K_ECHO: {
        int dead = 0;
        if (s->pend_len) { /* finish an earlier short write first */
          ssize_t w = send(fd, s->pend + s->pend_off, s->pend_len, MSG_NOSIGNAL);
          if (w < 0 && errno != EAGAIN) dead = 1;
          else if (w > 0) { s->pend_off += (unsigned short)w; s->pend_len -= (unsigned short)w; }
          if (!dead && s->pend_len == 0) {
            struct epoll_event ce = {.events = EPOLLIN, .data.fd = fd};
            epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ce);
            if (s->close_after > 0 && s->echoed >= s->close_after)
              dead = 1;
          }
          if (!dead) break;
        }
        while (!dead) {
          ssize_t r = read(fd, io_buf, 32768);
          if (r == 0 || (r < 0 && errno != EAGAIN)) { dead = 1; break; }
          if (r < 0) break;
          s->echoed += (unsigned int)r;
          ssize_t w = send(fd, io_buf, (size_t)r, MSG_NOSIGNAL);
          if (w < 0 && errno != EAGAIN) { dead = 1; break; }
          if (w < 0) w = 0;
          if (w < r) {
            if (!s->pend) s->pend = malloc(32768);
            memcpy(s->pend, io_buf + w, (size_t)(r - w));
            s->pend_off = 0;
            s->pend_len = (unsigned short)(r - w);
            struct epoll_event ce = {.events = EPOLLOUT, .data.fd = fd};
            epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ce);
            break;
          }
          if (s->close_after > 0 && s->echoed >= s->close_after) {
            dead = 1; /* the target closes first: see --echo-close-after */
            break;
          }
          if (r < 32768) break;
        }
        if (dead) { s->kind = K_FREE; s->pend_len = 0; close(fd); }
        break;
      }
      case K_SOURCE: {
        int dead = (e & (EPOLLERR | EPOLLHUP)) != 0;
        if (!dead && (e & EPOLLIN)) {
          ssize_t r = read(fd, io_buf, sizeof io_buf);
          if (r == 0 || (r < 0 && errno != EAGAIN)) dead = 1;
        }
        if (!dead && (e & EPOLLOUT)) {
          for (int k = 0; k < 16; k++) {
            ssize_t w = send(fd, src_buf, SRC_CHUNK, MSG_NOSIGNAL);
            if (w < 0) { if (errno != EAGAIN) dead = 1; break; }
            if (w < SRC_CHUNK) break;
          }
        }
        if (dead) { s->kind = K_FREE; close(fd); }
        break;
      }
      case K_HOLD: {
        ssize_t r = read(fd, io_buf, sizeof io_buf);
        if (r == 0 || (r < 0 && errno != EAGAIN) || (e & (EPOLLHUP | EPOLLERR))) {
          s->kind = K_FREE;
          close(fd);
        }
        break;
      }
      default:
        epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
        break;
      }
    }
  }
  return 0;
}

/* ---- client state machine (sessions, idle) ------------------------------ */

enum { S_CONNECT, S_GREET, S_REPLY, S_ECHO, S_HELD };

struct cconn {
  int fd;
  unsigned char state;
  unsigned short got;
  double t0;
  double next_start; /* sessions: when this slot may start its next one (--pause-ms) */
  unsigned char buf[300];
};

static unsigned char payload[65536];

/* Sends what the state after connect needs. Returns 0 or -1 on error. */
static int send_all_small(int fd, const void *p, size_t n) {
  ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
  return w == (ssize_t)n ? 0 : -1;
}

/* One step of a session on an epoll event. Sockets are registered once,
 * edge-triggered, for EPOLLIN | EPOLLOUT | EPOLLRDHUP. Each message is read
 * with one read() into a buffer larger than the message (a proxy must not send
 * more than the step's message, so extra bytes are an error); only a short
 * read makes us read again, to EAGAIN. Returns 1 when the session is complete
 * (echo received or, in hold mode, SOCKS reply received), 0 when still going,
 * -1 on error. */
static int client_step(struct cconn *c, uint32_t e, int hold_mode) {
  if (c->state == S_CONNECT) {
    if (e & (EPOLLERR | EPOLLHUP)) return -1;
    if (!(e & EPOLLOUT)) return 0;
    c->got = 0;
    if (via_proxy) {
      if (send_all_small(c->fd, socks_greeting, sizeof socks_greeting)) return -1;
      c->state = S_GREET;
      return 0;
    }
    if (hold_mode) return 1;
    if (send_all_small(c->fd, payload, (size_t)opt_payload)) return -1;
    c->state = S_ECHO;
    return 0;
  }
  if (e & EPOLLERR) return -1;
  if (c->state == S_HELD) return -1; /* the proxy closed or sent something */
  for (;;) {
    int echo = c->state == S_ECHO;
    unsigned char *dst = echo ? io_buf + c->got : c->buf + c->got;
    size_t room = (echo ? 4096 : sizeof c->buf) - c->got;
    ssize_t r = read(c->fd, dst, room);
    if (r == 0) return -1;
    if (r < 0) return errno == EAGAIN ? 0 : -1;
    c->got += (unsigned short)r;
    size_t want;
    if (c->state == S_GREET) want = 2;
    else if (c->state == S_REPLY) {
      if (c->got < 5) continue;
      int n = socks_reply_len(c->buf);
      if (n < 0) return -1;
      want = (size_t)n;
    } else want = (size_t)opt_payload;
    if (c->got < want) continue;
    if (c->got > want) return -1;
    if (c->state == S_GREET) {
      if (c->buf[0] != 5 || c->buf[1] != 0) return -1;
      if (send_all_small(c->fd, socks_request, sizeof socks_request)) return -1;
      c->state = S_REPLY;
      c->got = 0;
      return 0;
    }
    if (c->state == S_REPLY) {
      if (c->buf[0] != 5 || c->buf[1] != 0) return -1;
      if (hold_mode) return 1;
      if (send_all_small(c->fd, payload, (size_t)opt_payload)) return -1;
      c->state = S_ECHO;
      c->got = 0;
      return 0;
    }
    return 1; /* S_ECHO: the whole echo is back */
  }
}

static int cmp_float(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return x < y ? -1 : x > y;
}

/* Percentile by nearest rank on a sorted array (0 when empty). */
static double pct_of(const float *v, size_t n, double p) {
  return n ? v[(size_t)((double)n * p)] : 0;
}

static int run_sessions(void) {
  setup_first_hop();
  build_request();
  memset(payload, 'x', sizeof payload);
  if (opt_payload <= 0 || opt_payload > 65536) opt_payload = 64;
  int ep = epoll_create1(EPOLL_CLOEXEC);
  struct cconn *cs = calloc((size_t)opt_conc, sizeof *cs);
  size_t lat_cap = 1 << 23, nlat = 0;
  float *lat = malloc(lat_cap * sizeof *lat);
  long long done = 0, errors = 0, connect_errors = 0, warm_done = 0;
  double t_start = now_s();
  double t_measure = t_start + opt_warmup;
  double t_end = t_measure + opt_seconds;
  double cpu0 = 0;
  int measuring = opt_warmup <= 0;
  if (measuring) { cpu0 = cpu_s(); mark("M"); }

  for (int i = 0; i < opt_conc; i++) cs[i].fd = -1;
  struct epoll_event evs[256];
  for (;;) {
    double t = now_s();
    if (!measuring && t >= t_measure) { measuring = 1; cpu0 = cpu_s(); mark("M"); }
    if (t >= t_end) break;
    for (int i = 0; i < opt_conc; i++) {
      if (cs[i].fd >= 0 || t < cs[i].next_start) continue;
      int fd = start_connect();
      if (fd < 0) { connect_errors++; errors += measuring; continue; }
      cs[i].fd = fd;
      cs[i].state = S_CONNECT;
      cs[i].got = 0;
      cs[i].t0 = t;
      struct epoll_event ce = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = &cs[i]};
      epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ce);
    }
    /* With a pause, wake every millisecond to start the next session on time. */
    int n = epoll_wait(ep, evs, 256, opt_pause_ms > 0 ? 1 : 50);
    if (n < 0 && errno != EINTR) die("epoll_wait");
    double tn = now_s();
    for (int i = 0; i < n; i++) {
      struct cconn *c = evs[i].data.ptr;
      int r = client_step(c, evs[i].events, 0);
      if (r == 0) continue;
      close(c->fd);
      c->fd = -1;
      c->next_start = tn + opt_pause_ms / 1000;
      if (tn < t_measure) { warm_done += r == 1; continue; }
      if (tn >= t_end) continue;
      if (r == 1) {
        done++;
        if (nlat < lat_cap) lat[nlat++] = (float)((tn - c->t0) * 1e6);
      } else {
        errors++;
      }
    }
  }
  double elapsed = now_s() - t_measure;
  double cpu = cpu_s() - cpu0;
  mark("E");
  for (int i = 0; i < opt_conc; i++)
    if (cs[i].fd >= 0) close(cs[i].fd);
  qsort(lat, nlat, sizeof *lat, cmp_float);
  double p50 = pct_of(lat, nlat, 0.5), p90 = pct_of(lat, nlat, 0.9), p99 = pct_of(lat, nlat, 0.99);
  printf("{\"sessions\":%lld,\"errors\":%lld,\"connect_errors\":%lld,\"warmup_sessions\":%lld,"
         "\"elapsed\":%.4f,\"rate\":%.1f,\"cpu\":%.4f,\"p50_us\":%.1f,\"p90_us\":%.1f,"
         "\"p99_us\":%.1f}\n",
         done, errors, connect_errors, warm_done, elapsed, (double)done / elapsed, cpu, p50, p90,
         p99);
  return 0;
}

/* ---- download ----------------------------------------------------------- */

static int read_exact(int fd, unsigned char *b, size_t n, double deadline) {
  size_t got = 0;
  while (got < n) {
    if (wait_fd(fd, POLLIN, deadline)) return -1;
    ssize_t r = read(fd, b + got, n - got);
    if (r == 0) return -1;
    if (r < 0) { if (errno == EAGAIN || errno == EINTR) continue; return -1; }
    got += (size_t)r;
  }
  return 0;
}

static int connect_via(double deadline) {
  int fd = start_connect();
  if (fd < 0) return -1;
  if (wait_fd(fd, POLLOUT, deadline)) { close(fd); return -1; }
  int err = 0;
  socklen_t len = sizeof err;
  getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
  if (err) { close(fd); return -1; }
  if (!via_proxy) return fd;
  unsigned char b[300];
  if (send_all_small(fd, socks_greeting, 3) || read_exact(fd, b, 2, deadline) || b[0] != 5 ||
      b[1] != 0 || send_all_small(fd, socks_request, 10) || read_exact(fd, b, 5, deadline) ||
      b[0] != 5 || b[1] != 0) {
    close(fd);
    return -1;
  }
  int n = socks_reply_len(b);
  if (n < 0 || read_exact(fd, b + 5, (size_t)n - 5, deadline)) { close(fd); return -1; }
  return fd;
}

static unsigned char dl_buf[1 << 20];

static int run_download(void) {
  setup_first_hop();
  build_request();
  double t_start = now_s();
  int fd = connect_via(t_start + 10);
  if (fd < 0) {
    printf("{\"error\":\"connect or SOCKS handshake failed\"}\n");
    return 1;
  }
  /* Blocking reads with a 100 ms timeout: one syscall per wake-up. */
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  struct timeval tv = {.tv_sec = 0, .tv_usec = 100000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  double t_measure = now_s() + opt_warmup, t_end = t_measure + opt_seconds;
  long long bytes = 0, warm_bytes = 0;
  int measuring = opt_warmup <= 0, failed = 0;
  double cpu0 = measuring ? cpu_s() : 0, t_first = t_measure;
  if (measuring) mark("M");
  for (;;) {
    double t = now_s();
    if (!measuring && t >= t_measure) { measuring = 1; cpu0 = cpu_s(); t_first = t; mark("M"); }
    if (t >= t_end || bytes >= opt_max_bytes) break;
    ssize_t r = read(fd, dl_buf, sizeof dl_buf);
    if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) { failed = 1; break; }
    if (r < 0) continue;
    if (measuring) bytes += r; else warm_bytes += r;
  }
  double elapsed = now_s() - t_first;
  double cpu = cpu_s() - cpu0;
  mark("E");
  close(fd);
  printf("{\"bytes\":%lld,\"warmup_bytes\":%lld,\"elapsed\":%.4f,\"mib_s\":%.1f,\"cpu\":%.4f,"
         "\"stream_ended_early\":%s}\n",
         bytes, warm_bytes, elapsed, (double)bytes / elapsed / 1048576.0, cpu,
         failed ? "true" : "false");
  return 0;
}

/* ---- idle --------------------------------------------------------------- */

static int run_idle(void) {
  setup_first_hop();
  build_request();
  max_fds();
  int ep = epoll_create1(EPOLL_CLOEXEC);
  struct cconn *cs = calloc((size_t)opt_count, sizeof *cs);
  int next = 0, inflight = 0, ok = 0, errors = 0;
  double t0 = now_s(), deadline = t0 + opt_max_seconds;
  /* The establishing phase gets at most 60 s, whatever the proxy does. */
  double est_deadline = t0 + (opt_max_seconds < 60 ? opt_max_seconds : 60);
  struct epoll_event evs[256];
  while ((ok + errors) < opt_count && now_s() < est_deadline) {
    while (inflight < opt_conc && next < opt_count) {
      struct cconn *c = &cs[next++];
      c->fd = start_connect();
      if (c->fd < 0) { errors++; continue; }
      c->state = S_CONNECT;
      c->got = 0;
      struct epoll_event ce = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = c};
      epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ce);
      inflight++;
    }
    int n = epoll_wait(ep, evs, 256, 100);
    if (n < 0 && errno != EINTR) die("epoll_wait");
    for (int i = 0; i < n; i++) {
      struct cconn *c = evs[i].data.ptr;
      int r = client_step(c, evs[i].events, 1);
      if (r == 0) continue;
      inflight--;
      if (r == 1) {
        ok++;
        c->state = S_HELD;
        struct epoll_event ce = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ce);
      } else {
        errors++;
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
      }
    }
  }
  int unfinished = opt_count - ok - errors;
  printf("{\"event\":\"established\",\"ok\":%d,\"errors\":%d,\"unfinished\":%d,\"elapsed\":%.3f}\n",
         ok, errors, unfinished, now_s() - t0);
  fflush(stdout);
  /* Hold: wait for a line or EOF on stdin; count sessions the proxy drops. */
  struct epoll_event ce = {.events = EPOLLIN, .data.ptr = NULL};
  epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ce);
  int dropped = 0, released = 0, held = ok, stop = 0;
  double release_deadline = 0;
  while (now_s() < deadline && !(stop && (held == 0 || now_s() >= release_deadline))) {
    int n = epoll_wait(ep, evs, 256, 100);
    if (n < 0 && errno != EINTR) die("epoll_wait");
    for (int i = 0; i < n; i++) {
      struct cconn *c = evs[i].data.ptr;
      if (!c) {
        /* Released: the driver has the hold server close its ends, so the
         * proxy closes ours; wait up to 5 s for that, then close the rest. */
        stop = 1;
        release_deadline = now_s() + 5;
        epoll_ctl(ep, EPOLL_CTL_DEL, 0, NULL);
        mark("R"); /* the driver now has the hold server close its ends */
        continue;
      }
      if (c->state == S_HELD) {
        if (stop) released++; else dropped++;
        held--;
      }
      epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
      close(c->fd);
      c->fd = -1;
      c->state = S_CONNECT;
    }
  }
  int closed_by_us = 0;
  for (int i = 0; i < next; i++)
    if (cs[i].fd > 0) { close(cs[i].fd); closed_by_us++; }
  printf("{\"event\":\"closed\",\"dropped_while_idle\":%d,\"closed_by_proxy_after_release\":%d,"
         "\"closed_by_client\":%d}\n", dropped, released, closed_by_us);
  return 0;
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  if (argc < 2) {
    fprintf(stderr, "usage: loadgen serve|sessions|download|idle [options]\n");
    return 2;
  }
  parse_opts(argc, argv);
  /* Everything stops by itself: a hard alarm past the longest allowed run. */
  double budget = opt_max_seconds;
  if (!strcmp(argv[1], "sessions") || !strcmp(argv[1], "download"))
    budget = opt_warmup + opt_seconds + 30;
  alarm((unsigned)budget + 30);
  if (!strcmp(argv[1], "serve")) return run_serve();
  if (!strcmp(argv[1], "sessions")) return run_sessions();
  if (!strcmp(argv[1], "download")) return run_download();
  if (!strcmp(argv[1], "idle")) return run_idle();
  fprintf(stderr, "loadgen: unknown mode %s\n", argv[1]);
  return 2;
}

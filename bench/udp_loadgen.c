/*
 * udp_loadgen: load generator and UDP echo server for bench/udp_bench.ts.
 *
 * Single-threaded; bench/udp_bench.ts compiles it at run time (`cc -O2`, into
 * bench/out/) and pins it to core 0. Every socket is on 127.0.0.1; every mode
 * stops by itself (alarm).
 *
 *   udp_loadgen echo --max-seconds T
 *       Binds a UDP socket on 127.0.0.1 port 0, prints "echo P" and "ready",
 *       and sends every datagram back to its source. Exits after T seconds or
 *       when stdin reaches EOF.
 *
 *   udp_loadgen client --proxy HOST:PORT|none --echo-port P --rate R
 *                      --seconds S --warmup W --payload B
 *       With a proxy: TCP control connection, greeting 05 01 00, UDP
 *       ASSOCIATE 0.0.0.0:0; the reply's BND.ADDR:PORT is the relay. Then it
 *       sends B-byte payloads wrapped in the SOCKS UDP header
 *       (00 00 00 01 127.0.0.1 P) to the relay at R datagrams/s (busy-wait
 *       pacing) for W + S seconds, and counts the replies (which carry a SOCKS
 *       UDP header too). With --proxy none it sends to 127.0.0.1:P bare.
 *       Each payload carries a sequence number and its send time. Datagrams
 *       sent in the measured window (after the warm-up) count; their replies
 *       are awaited up to 0.5 s after the window. Prints "M" and "E" at the
 *       window's start and end, then one JSON line.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) {
  printf("{\"error\":\"%s: %s\"}\n", what, strerror(errno));
  fflush(stdout);
  exit(1);
}

static const char *opt_proxy = "none";
static int opt_echo_port = 0;
static double opt_rate = 20000, opt_seconds = 5, opt_warmup = 0.5, opt_max_seconds = 600;
static int opt_payload = 64;

static void parse(int argc, char **argv) {
  for (int i = 2; i + 1 < argc; i += 2) {
    const char *k = argv[i], *v = argv[i + 1];
    if (!strcmp(k, "--proxy")) opt_proxy = v;
    else if (!strcmp(k, "--echo-port")) opt_echo_port = atoi(v);
    else if (!strcmp(k, "--rate")) opt_rate = atof(v);
    else if (!strcmp(k, "--seconds")) opt_seconds = atof(v);
    else if (!strcmp(k, "--warmup")) opt_warmup = atof(v);
    else if (!strcmp(k, "--payload")) opt_payload = atoi(v);
    else if (!strcmp(k, "--max-seconds")) opt_max_seconds = atof(v);
    else {
      fprintf(stderr, "unknown option %s\n", k);
      exit(2);
    }
  }
  if (opt_payload < 16) opt_payload = 16;
  if (opt_payload > 1400) opt_payload = 1400;
}

static void big_buffers(int fd) {
  int size = 4 << 20;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
}

static struct sockaddr_in loopback(int port) {
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

/* ------------------------------------------------------------------------ */

static int mode_echo(void) {
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  if (fd < 0) die("socket");
  big_buffers(fd);
  struct sockaddr_in a = loopback(0);
  if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
  socklen_t len = sizeof a;
  getsockname(fd, (struct sockaddr *)&a, &len);
  printf("echo %d\nready\n", ntohs(a.sin_port));
  fflush(stdout);

  enum { BATCH = 64 };
  static char bufs[BATCH][2048];
  struct mmsghdr msgs[BATCH];
  struct iovec iov[BATCH];
  struct sockaddr_in from[BATCH];
  struct pollfd pfd[2] = {{.fd = fd, .events = POLLIN}, {.fd = 0, .events = POLLIN}};
  for (;;) {
    if (poll(pfd, 2, 1000) < 0) {
      if (errno == EINTR) continue;
      die("poll");
    }
    if (pfd[1].revents) {
      char c[64];
      ssize_t n = read(0, c, sizeof c);
      if (n <= 0) return 0;
    }
    if (!(pfd[0].revents & POLLIN)) continue;
    for (;;) {
      for (int i = 0; i < BATCH; i++) {
        iov[i].iov_base = bufs[i];
        iov[i].iov_len = sizeof bufs[i];
        memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &from[i];
        msgs[i].msg_hdr.msg_namelen = sizeof from[i];
      }
      int n = recvmmsg(fd, msgs, BATCH, MSG_DONTWAIT, NULL);
      if (n <= 0) break;
      for (int i = 0; i < n; i++) iov[i].iov_len = msgs[i].msg_len;
      int off = 0;
      while (off < n) {
        int s = sendmmsg(fd, msgs + off, (unsigned)(n - off), 0);
        if (s <= 0) break; /* dropped: counted as loss by the client */
        off += s;
      }
    }
  }
}

/* ------------------------------------------------------------------------ */

static int read_full(int fd, unsigned char *buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, buf + got, n - got);
    if (r <= 0) return -1;
    got += (size_t)r;
  }
  return 0;
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

static int mode_client(void) {
  struct sockaddr_in relay;
  int ctl = -1;
  int direct = !strcmp(opt_proxy, "none");
  if (direct) {
    relay = loopback(opt_echo_port);
  } else {
    char host[64];
    const char *colon = strrchr(opt_proxy, ':');
    if (!colon || (size_t)(colon - opt_proxy) >= sizeof host) {
      errno = EINVAL;
      die("--proxy");
    }
    memcpy(host, opt_proxy, (size_t)(colon - opt_proxy));
    host[colon - opt_proxy] = 0;
    struct sockaddr_in pa;
    memset(&pa, 0, sizeof pa);
    pa.sin_family = AF_INET;
    pa.sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &pa.sin_addr) != 1) {
      errno = EINVAL;
      die("proxy host");
    }
    ctl = socket(AF_INET, SOCK_STREAM, 0);
    if (ctl < 0) die("socket");
    if (connect(ctl, (struct sockaddr *)&pa, sizeof pa) < 0) die("connect proxy");
    int one = 1;
    setsockopt(ctl, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    unsigned char greet[3] = {5, 1, 0}, rep[10];
    if (write(ctl, greet, 3) != 3) die("write greeting");
    if (read_full(ctl, rep, 2) < 0) die("read method reply");
    if (rep[0] != 5 || rep[1] != 0) {
      errno = EPROTO;
      die("method refused");
    }
    unsigned char req[10] = {5, 3, 0, 1, 0, 0, 0, 0, 0, 0};
    if (write(ctl, req, 10) != 10) die("write associate");
    if (read_full(ctl, rep, 4) < 0) die("read associate reply");
    if (rep[0] != 5 || rep[1] != 0) {
      printf("{\"error\":\"UDP ASSOCIATE refused with reply code %d\"}\n", rep[1]);
      return 1;
    }
    if (rep[3] != 1) {
      printf("{\"error\":\"UDP ASSOCIATE reply has address type %d, not IPv4\"}\n", rep[3]);
      return 1;
    }
    if (read_full(ctl, rep + 4, 6) < 0) die("read associate address");
    memset(&relay, 0, sizeof relay);
    relay.sin_family = AF_INET;
    memcpy(&relay.sin_addr, rep + 4, 4);
    memcpy(&relay.sin_port, rep + 8, 2);
    /* 0.0.0.0 in BND.ADDR means "the proxy's address" (RFC 1928 §6). */
    if (relay.sin_addr.s_addr == 0) relay.sin_addr = pa.sin_addr;
  }

  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  if (fd < 0) die("socket");
  big_buffers(fd);
  struct sockaddr_in self = loopback(0);
  if (bind(fd, (struct sockaddr *)&self, sizeof self) < 0) die("bind");

  /* The SOCKS UDP header: RSV RSV FRAG ATYP(1) 127.0.0.1 port. */
  int hdr = direct ? 0 : 10;
  unsigned char out[2048];
  memset(out, 'x', sizeof out);
  if (!direct) {
    unsigned char h[10] = {0, 0, 0, 1, 127, 0, 0, 1, (unsigned char)(opt_echo_port >> 8),
                           (unsigned char)(opt_echo_port & 0xff)};
    memcpy(out, h, 10);
  }
  size_t out_len = (size_t)(hdr + opt_payload);

  uint64_t total = (uint64_t)((opt_warmup + opt_seconds) * opt_rate) + 1;
  uint64_t first_measured = (uint64_t)(opt_warmup * opt_rate);
  uint64_t measured = total - first_measured;
  unsigned char *seen = calloc(total, 1);
  uint32_t *rtt_us = malloc(sizeof(uint32_t) * (measured + 1));
  if (!seen || !rtt_us) die("malloc");
  uint64_t n_rtt = 0, received = 0, bad = 0, dup = 0, send_errors = 0;
  uint64_t warm_received = 0;

  double interval = 1.0 / opt_rate;
  double t0 = now_s();
  double t_measure = t0 + opt_warmup, t_end = t_measure + opt_seconds, t_stop = t_end + 0.5;
  uint64_t next = 0;
  int measuring = 0, ended = 0;
  double cpu0 = 0, cpu1 = 0;
  unsigned char in[2048];

  for (;;) {
    double t = now_s();
    if (!measuring && t >= t_measure) {
      measuring = 1;
      cpu0 = cpu_s();
      mark("M");
    }
    if (!ended && t >= t_end) {
      ended = 1;
      cpu1 = cpu_s();
      mark("E");
    }
    if (t >= t_stop) break;
    /* Send whatever is due (at most 64 at once if we fell behind). */
    int burst = 0;
    while (next < total && t0 + (double)next * interval <= t && burst < 64) {
      uint64_t seq = next, ts = now_ns();
      memcpy(out + hdr, &seq, 8);
      memcpy(out + hdr + 8, &ts, 8);
      ssize_t s = sendto(fd, out, out_len, MSG_DONTWAIT, (struct sockaddr *)&relay, sizeof relay);
      if (s < 0) send_errors++;
      next++;
      burst++;
    }
    /* Wait (without spinning: the echo server shares this core) for a reply
       or the next send time, whichever comes first. */
    if (next < total) {
      double wait = t0 + (double)next * interval - now_s();
      if (wait > 2e-6) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)(wait * 1e9)};
        ppoll(&pfd, 1, &ts, NULL);
      }
    } else {
      struct pollfd pfd = {.fd = fd, .events = POLLIN};
      poll(&pfd, 1, 10);
    }
    /* Drain replies. */
    for (;;) {
      ssize_t r = recv(fd, in, sizeof in, MSG_DONTWAIT);
      if (r < 0) break;
      uint64_t arrived = now_ns();
      int off = 0;
      if (!direct) {
        if (r < 4 || in[0] || in[1] || in[2]) {
          bad++;
          continue;
        }
        off = in[3] == 1 ? 10 : in[3] == 4 ? 22 : in[3] == 3 && r > 4 ? 7 + in[4] : -1;
        if (off < 0) {
          bad++;
          continue;
        }
      }
      if (r - off != opt_payload) {
        bad++;
        continue;
      }
      uint64_t seq, ts;
      memcpy(&seq, in + off, 8);
      memcpy(&ts, in + off + 8, 8);
      if (seq >= total) {
        bad++;
        continue;
      }
      if (seen[seq]) {
        dup++;
        continue;
      }
      seen[seq] = 1;
      if (seq >= first_measured) {
        received++;
        if (n_rtt <= measured) rtt_us[n_rtt++] = (uint32_t)((arrived - ts) / 1000);
      } else {
        warm_received++;
      }
    }
  }
  if (!ended) cpu1 = cpu_s();
  uint64_t sent = next > first_measured ? next - first_measured : 0;
  double p50 = 0, p99 = 0;
  if (n_rtt) {
    qsort(rtt_us, n_rtt, sizeof *rtt_us, cmp_u32);
    p50 = rtt_us[(n_rtt - 1) / 2];
    p99 = rtt_us[(uint64_t)((double)(n_rtt - 1) * 0.99)];
  }
  printf("{\"sent\":%llu,\"received\":%llu,\"warm_received\":%llu,\"loss\":%.6f,"
         "\"rate\":%.1f,\"offered\":%.1f,\"p50_us\":%.1f,\"p99_us\":%.1f,\"bad\":%llu,"
         "\"dup\":%llu,\"send_errors\":%llu,\"cpu\":%.4f}\n",
         (unsigned long long)sent, (unsigned long long)received,
         (unsigned long long)warm_received, sent ? 1.0 - (double)received / (double)sent : 1.0,
         (double)received / opt_seconds, (double)sent / opt_seconds, p50, p99,
         (unsigned long long)bad, (unsigned long long)dup, (unsigned long long)send_errors,
         cpu1 - cpu0);
  fflush(stdout);
  if (ctl >= 0) close(ctl);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: udp_loadgen echo|client [options]\n");
    return 2;
  }
  parse(argc, argv);
  double budget = opt_max_seconds;
  if (!strcmp(argv[1], "client")) budget = opt_warmup + opt_seconds + 1;
  alarm((unsigned)budget + 30);
  if (!strcmp(argv[1], "echo")) return mode_echo();
  if (!strcmp(argv[1], "client")) return mode_client();
  fprintf(stderr, "unknown mode %s\n", argv[1]);
  return 2;
}

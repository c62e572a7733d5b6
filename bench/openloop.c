/* openloop: an open-loop HTTP/1.1 load generator, for bench/bench_open_loop.py.

Why C: the Python client on the same two cores took a share of the CPU that grew with the
load and added its own scheduling delays to every latency it measured. This one sends each
request at its scheduled (Poisson) arrival on an idle keep-alive connection (a queued arrival
goes on the next connection to come free), and a request's latency runs from its scheduled
arrival to the last byte of its answer, so waiting for a connection or for a busy server
counts (no coordinated omission). One thread, epoll, a timerfd for the next arrival.

Usage: openloop PORT PATH BODIES RATE SECONDS CONNECTIONS SEED OFFSET [HEADER ...]
  BODIES: one JSON body a line, with __ID__ replaced by a fresh event id per request;
  OFFSET: the line to start at (a server's event stream goes on from run to run).
  HEADER: extra request header lines (e.g. "Authorization: Bearer k").
Prints one JSON object: requests, errors, rps, and p50/p90/p99/p99.9/max in ms, for all
requests and separately for those whose answer says "decision":"approve" and the others.
With OPENLOOP_TRACE=FILE in the environment it also writes each answer as a line of FILE:
its arrival (µs from the start), its latency (µs) and 1 if it was an approval, else 0.
Built by bench_open_loop.py with `cc -O2` (gcc is on every machine of this kind). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 1024
#define BUF 65536

typedef struct {
  int fd;
  int busy;
  int64_t scheduled;     /* arrival time of the request in flight, ns */
  char in[BUF];
  size_t got;            /* bytes of the answer so far */
  const char *out;       /* unsent rest of the request */
  size_t out_left;
  char req[BUF];
} conn_t;

static conn_t conns[MAX_CONNS];
static int nconns;
static char **bodies;
static size_t nbodies;
static char headers_extra[4096];
static const char *path;
static int64_t *lat_all, *lat_ok, *lat_other;
static int64_t *sched_all; /* each answer's arrival time, for OPENLOOP_TRACE */
static char *ok_all;       /* and whether it was an approval */
static size_t n_all, n_ok, n_other, errors, sent;
static int64_t *queue;           /* scheduled times of arrivals waiting for a connection */
static size_t q_head, q_tail, q_cap;
static long long run_id;
static size_t reconnects;
static size_t most; /* room for this many latencies */

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what) {
  perror(what);
  exit(2);
}

static int connect_one(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) die("socket");
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("connect");
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  return fd;
}

static void try_send(conn_t *c) {
  while (c->out_left > 0) {
    ssize_t w = write(c->fd, c->out, c->out_left);
    if (w < 0) {
      if (errno == EAGAIN) return; /* EPOLLOUT finishes it */
      die("write");
    }
    c->out += w;
    c->out_left -= (size_t)w;
  }
}

static void start(conn_t *c, int64_t scheduled) {
  const char *tpl = bodies[sent % nbodies];
  char id[64];
  snprintf(id, sizeof id, "%lld-%zu", run_id, sent);
  sent++;
  char body[BUF / 2];
  const char *mark = strstr(tpl, "__ID__");
  int blen;
  if (mark)
    blen = snprintf(body, sizeof body, "%.*s%s%s", (int)(mark - tpl), tpl, id, mark + 6);
  else
    blen = snprintf(body, sizeof body, "%s", tpl);
  if (blen < 0 || (size_t)blen >= sizeof body) {
    fprintf(stderr, "a body is longer than %zu bytes\n", sizeof body - 1);
    exit(2);
  }
  int len = snprintf(c->req, sizeof c->req,
                     "POST %s HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                     "%sContent-Length: %d\r\n\r\n%s",
                     path, headers_extra, blen, body);
  if (len < 0 || (size_t)len >= sizeof c->req) {
    fprintf(stderr, "a request is longer than %zu bytes\n", sizeof c->req - 1);
    exit(2);
  }
  c->busy = 1;
  c->scheduled = scheduled;
  c->got = 0;
  c->out = c->req;
  c->out_left = (size_t)len;
  try_send(c);
}

static conn_t *idle_conn(void) {
  for (int i = 0; i < nconns; i++)
    if (!conns[i].busy) return &conns[i];
  return NULL;
}

/* A whole answer in c->in? Returns its length, 0 if not yet. */
static size_t answer_length(conn_t *c) {
  c->in[c->got] = 0;
  char *end = strstr(c->in, "\r\n\r\n");
  if (!end) return 0;
  size_t head = (size_t)(end - c->in) + 4;
  long length = 0;
  char *cl = strcasestr(c->in, "\r\ncontent-length:");
  if (cl && cl < end) length = strtol(cl + 17, NULL, 10);
  if (c->got < head + (size_t)length) return 0;
  return head + (size_t)length;
}

static void finish(conn_t *c, size_t length, int64_t t) {
  int64_t latency = t - c->scheduled;
  if (n_all >= most) {
    fprintf(stderr, "more answers than expected\n");
    exit(2);
  }
  int ok = strncmp(c->in, "HTTP/1.1 200", 12) == 0;
  if (!ok) errors++;
  int approved = ok && strstr(c->in, "\"decision\":\"approve\"") != NULL;
  sched_all[n_all] = c->scheduled;
  ok_all[n_all] = (char)approved;
  lat_all[n_all++] = latency;
  if (approved) lat_ok[n_ok++] = latency;
  else lat_other[n_other++] = latency;
  c->busy = 0;
  if (c->got > length) { /* never: one request in flight a connection */
    fprintf(stderr, "unexpected bytes after an answer\n");
    exit(2);
  }
  c->got = 0;
}

static int cmp64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

static void print_stats(const char *name, int64_t *v, size_t n, int last) {
  qsort(v, n, sizeof *v, cmp64);
  printf("\"%s\": {\"requests\": %zu", name, n);
  if (n > 0) {
    double q[] = {0.5, 0.9, 0.99, 0.999};
    const char *names[] = {"p50_ms", "p90_ms", "p99_ms", "p999_ms"};
    for (int i = 0; i < 4; i++) {
      size_t k = (size_t)(q[i] * (double)n);
      if (k >= n) k = n - 1;
      printf(", \"%s\": %.4f", names[i], (double)v[k] / 1e6);
    }
    printf(", \"max_ms\": %.4f", (double)v[n - 1] / 1e6);
  }
  printf("}%s", last ? "" : ", ");
}

int main(int argc, char **argv) {
  if (argc < 9) {
    fprintf(stderr,
            "usage: openloop PORT PATH BODIES RATE SECONDS CONNECTIONS SEED OFFSET [HEADER...]\n");
    return 2;
  }
  int port = atoi(argv[1]);
  path = argv[2];
  double rate = atof(argv[4]), seconds = atof(argv[5]);
  nconns = atoi(argv[6]);
  unsigned seed = (unsigned)atoi(argv[7]);
  if (nconns < 1 || nconns > MAX_CONNS) nconns = MAX_CONNS;
  sent = (size_t)atol(argv[8]);
  for (int i = 9; i < argc; i++) {
    strncat(headers_extra, argv[i], sizeof headers_extra - strlen(headers_extra) - 3);
    strcat(headers_extra, "\r\n");
  }
  FILE *f = fopen(argv[3], "r");
  if (!f) die("bodies");
  size_t cap = 1024;
  bodies = malloc(cap * sizeof *bodies);
  char *line = NULL;
  size_t lcap = 0;
  ssize_t l;
  while ((l = getline(&line, &lcap, f)) > 0) {
    while (l > 0 && (line[l - 1] == '\n' || line[l - 1] == '\r')) line[--l] = 0;
    if (l == 0) continue;
    if (nbodies == cap) bodies = realloc(bodies, (cap *= 2) * sizeof *bodies);
    bodies[nbodies++] = strdup(line);
  }
  fclose(f);
  if (nbodies == 0) die("no bodies");
  most = (size_t)(rate * seconds * 1.5) + 1000; /* arrivals: Poisson, never near 1.5x */
  lat_all = malloc(most * sizeof(int64_t));
  lat_ok = malloc(most * sizeof(int64_t));
  lat_other = malloc(most * sizeof(int64_t));
  sched_all = malloc(most * sizeof(int64_t));
  ok_all = malloc(most);
  q_cap = most;
  queue = malloc(q_cap * sizeof(int64_t));
  run_id = (long long)time(NULL) * 1000 + (long long)(now_ns() % 1000);

  int ep = epoll_create1(0);
  for (int i = 0; i < nconns; i++) {
    conns[i].fd = connect_one(port);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = &conns[i]};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &ev) < 0) die("epoll_ctl");
  }
  int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
  struct epoll_event tev = {.events = EPOLLIN, .data.ptr = NULL};
  epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &tev);

  srand48(seed);
  int64_t t0 = now_ns() + 20000000LL; /* connections settle first */
  int64_t stop_at = t0 + (int64_t)(seconds * 1e9);
  int64_t due = t0;
  struct epoll_event events[256];
  while (1) {
    int64_t t = now_ns();
    while (due <= t && due < stop_at) { /* every arrival already due: send or queue */
      conn_t *c = idle_conn();
      if (c) start(c, due);
      else if (q_tail < q_cap) queue[q_tail++] = due;
      else {
        fprintf(stderr, "more arrivals waiting than expected\n");
        exit(2);
      }
      due += (int64_t)(-log(1.0 - drand48()) / rate * 1e9);
    }
    int in_flight = 0;
    for (int i = 0; i < nconns; i++) in_flight += conns[i].busy;
    if (due >= stop_at && in_flight == 0 && q_head == q_tail) break;
    if (due < stop_at) {
      struct itimerspec its = {0};
      its.it_value.tv_sec = due / 1000000000LL;
      its.it_value.tv_nsec = due % 1000000000LL;
      timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
    }
    int n = epoll_wait(ep, events, 256, 1000);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("epoll_wait");
    }
    int64_t got_at = now_ns();
    for (int i = 0; i < n; i++) {
      conn_t *c = events[i].data.ptr;
      if (c == NULL) {
        uint64_t ticks;
        (void)!read(tfd, &ticks, sizeof ticks);
        continue;
      }
      if (events[i].events & EPOLLOUT) try_send(c);
      if (!(events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) continue;
      while (1) {
        ssize_t r = read(c->fd, c->in + c->got, BUF - 1 - c->got);
        if (r < 0 && errno == EAGAIN) break;
        if (r < 0 && errno != ECONNRESET) die("read");
        if (r == 0 || (r < 0 && errno == ECONNRESET)) {
          /* the server closed it (an idle keep-alive connection past its timeout): a new one;
             a request in flight on it is sent again, its latency still from its arrival */
          epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
          close(c->fd);
          c->fd = connect_one(port);
          struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = c};
          if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl");
          reconnects++;
          if (c->busy) {
            c->got = 0;
            c->out = c->req;
            c->out_left = strlen(c->req);
            try_send(c);
          }
          break;
        }
        c->got += (size_t)r;
        size_t length = answer_length(c);
        if (!length && c->got >= BUF - 1) {
          fprintf(stderr, "an answer is longer than %d bytes\n", BUF - 1);
          exit(2);
        }
        if (length) {
          finish(c, length, got_at);
          if (q_head < q_tail) start(c, queue[q_head++]);
          break;
        }
      }
    }
  }
  double elapsed = (double)(now_ns() - t0) / 1e9;
  const char *trace_path = getenv("OPENLOOP_TRACE");
  if (trace_path && *trace_path) { /* before print_stats sorts the latencies */
    FILE *trace = fopen(trace_path, "w");
    if (!trace) die("OPENLOOP_TRACE");
    for (size_t i = 0; i < n_all; i++)
      fprintf(trace, "%lld %lld %d\n", (long long)((sched_all[i] - t0) / 1000),
              (long long)(lat_all[i] / 1000), ok_all[i]);
    fclose(trace);
  }
  printf("{\"offered_rps\": %.1f, \"rps\": %.1f, \"errors\": %zu, \"connections\": %d, "
         "\"reconnects\": %zu, ", rate, (double)n_all / elapsed, errors, nconns, reconnects);
  print_stats("all", lat_all, n_all, 0);
  print_stats("approve", lat_ok, n_ok, 0);
  print_stats("other", lat_other, n_other, 1);
  printf("}\n");
  return 0;
}

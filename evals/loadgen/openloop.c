/* Open-loop HTTP/1.1 load generator: one thread, epoll, N keep-alive connections.

   Request i is scheduled at start + i / rate, whether or not earlier ones were answered (open loop). It goes out
   on the first idle connection; when all N are busy it waits for one, and that wait counts: every latency is
   measured from the request's SCHEDULED time (no coordinated omission), and the wait itself is reported as the
   generator's send delay (scheduled time -> request written). Responses are classed 2xx / shed (503 whose body
   contains the --shed-marker) / other 503 / other status, with percentiles per class. JSON on stdout.

   Built by evals/bench_overload.py with `cc -O2`; why C: a Python generator on the same 2 cores could not send
   2x the server's saturation rate (its own delay reached seconds, evals/results/overload_fast_path.md).

   usage: openloop -p PORT -r RATE -d SECONDS [-c CONNS] [-m METHOD] [-u PATH] [-b BODYFILE]
                   [-H 'Name: value']... [-s SHED_MARKER] [-t DRAIN_TIMEOUT_S] [-h HOST_IPV4]
*/
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { C_2XX, C_SHED, C_503, C_OTHER, NCLASS };
static const char *CLASS_NAME[NCLASS] = {"2xx", "shed", "503_other", "other"};

typedef struct {
    int fd;
    int state;  /* 0 connecting, 1 idle, 2 busy (request written, awaiting response) */
    long req;   /* index of the request in flight */
    size_t wrote;
    char *buf;
    size_t len, cap;
} conn_t;

static struct sockaddr_in addr;
static char *request;
static size_t request_len;
static const char *shed_marker = "overloaded";
static conn_t *conns;
static int nconns, epfd;
static long *idle; /* stack of idle connection indexes */
static int nidle;
static double *sched_t, *sent_t, *done_t; /* per request; done_t < 0: unanswered */
static int *klass;
static long errors, reconnects, status_count[600];

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *msg) {
    fprintf(stderr, "openloop: %s: %s\n", msg, strerror(errno));
    exit(2);
}

static void conn_open(int i) {
    conn_t *c = &conns[i];
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) die("socket");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->state = 0;
    c->len = 0;
    c->req = -1;
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) die("connect");
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP, .data.u32 = (uint32_t)i};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl");
}

/* The connection failed or was closed: its request (if any) is an error; open a fresh one. */
static void conn_reset(int i, int failed) {
    conn_t *c = &conns[i];
    if (c->state == 2 && failed) errors++;
    if (c->state == 1) { /* drop it from the idle stack */
        for (int k = 0; k < nidle; k++)
            if (idle[k] == i) { idle[k] = idle[--nidle]; break; }
    }
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    reconnects++;
    conn_open(i);
}

static void set_events(int i, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.u32 = (uint32_t)i};
    epoll_ctl(epfd, EPOLL_CTL_MOD, conns[i].fd, &ev);
}

/* Write the rest of the request; returns 0 on a broken connection. */
static int conn_write(int i) {
    conn_t *c = &conns[i];
    while (c->wrote < request_len) {
        ssize_t n = send(c->fd, request + c->wrote, request_len - c->wrote, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) { set_events(i, EPOLLIN | EPOLLOUT | EPOLLRDHUP); return 1; }
            return 0;
        }
        c->wrote += (size_t)n;
    }
    sent_t[c->req] = now();
    return 1;
}

static void send_on(int i, long r) {
    conn_t *c = &conns[i];
    c->state = 2;
    c->req = r;
    c->wrote = 0;
    if (!conn_write(i)) conn_reset(i, 1);
}

static const char *find_header(const char *head, size_t hlen, const char *name) {
    size_t nl = strlen(name);
    for (const char *p = head; p + nl < head + hlen; p++) {
        if (p[0] == '\n' && strncasecmp(p + 1, name, nl) == 0 && p[1 + nl] == ':') {
            p += 2 + nl;
            while (*p == ' ' || *p == '\t') p++;
            return p;
        }
    }
    return NULL;
}

/* Parse complete responses in the buffer; returns -1 on a protocol error, 1 if the server closes after it. */
static int conn_parse(int i) {
    conn_t *c = &conns[i];
    char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
    if (!end) return 0;
    size_t hlen = (size_t)(end - c->buf) + 4;
    if (c->len < 12 || strncmp(c->buf, "HTTP/1.", 7) != 0) return -1;
    int st = atoi(c->buf + 9);
    const char *cl = find_header(c->buf, hlen, "content-length");
    if (!cl) return -1; /* chunked bodies are not supported (the servers measured send Content-Length) */
    size_t blen = strtoul(cl, NULL, 10);
    if (c->len < hlen + blen) return 0;
    if (c->state != 2) return -1; /* a response nobody asked for */
    const char *conn_h = find_header(c->buf, hlen, "connection");
    int closing = conn_h && strncasecmp(conn_h, "close", 5) == 0;
    long r = c->req;
    done_t[r] = now();
    if (st >= 0 && st < 600) status_count[st]++;
    if (st >= 200 && st < 300) klass[r] = C_2XX;
    else if (st == 503) klass[r] = memmem(c->buf + hlen, blen, shed_marker, strlen(shed_marker)) ? C_SHED : C_503;
    else klass[r] = C_OTHER;
    memmove(c->buf, c->buf + hlen + blen, c->len - hlen - blen);
    c->len -= hlen + blen;
    c->state = 1;
    c->req = -1;
    return closing ? 1 : 2;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void print_pcts(const char *name, double *xs, long n, int last) {
    qsort(xs, (size_t)n, sizeof *xs, cmp_double);
    printf("\"%s\": {\"n\": %ld", name, n);
    static const double ps[] = {0.5, 0.9, 0.99, 0.999};
    static const char *pn[] = {"p50_ms", "p90_ms", "p99_ms", "p999_ms"};
    for (int k = 0; k < 4; k++) {
        if (n) printf(", \"%s\": %.3f", pn[k], xs[(long)(ps[k] * (double)(n - 1) + 0.5)] * 1e3);
        else printf(", \"%s\": null", pn[k]);
    }
    if (n) printf(", \"max_ms\": %.3f}", xs[n - 1] * 1e3);
    else printf(", \"max_ms\": null}");
    printf(last ? "" : ", ");
}

int main(int argc, char **argv) {
    int port = 0, opt;
    double rate = 0, seconds = 0, drain = 30;
    const char *method = "GET", *path = "/", *bodyfile = NULL, *host = "127.0.0.1";
    char headers[8192] = "";
    nconns = 16;
    while ((opt = getopt(argc, argv, "p:r:d:c:m:u:b:H:s:t:h:")) != -1) {
        switch (opt) {
        case 'p': port = atoi(optarg); break;
        case 'r': rate = atof(optarg); break;
        case 'd': seconds = atof(optarg); break;
        case 'c': nconns = atoi(optarg); break;
        case 'm': method = optarg; break;
        case 'u': path = optarg; break;
        case 'b': bodyfile = optarg; break;
        case 'H':
            if (strlen(headers) + strlen(optarg) + 3 >= sizeof headers) { fprintf(stderr, "openloop: headers too long\n"); return 2; }
            strcat(headers, optarg);
            strcat(headers, "\r\n");
            break;
        case 's': shed_marker = optarg; break;
        case 't': drain = atof(optarg); break;
        case 'h': host = optarg; break;
        default: fprintf(stderr, "usage: see the head of openloop.c\n"); return 2;
        }
    }
    if (port <= 0 || rate <= 0 || seconds <= 0 || nconns <= 0) {
        fprintf(stderr, "openloop: -p PORT, -r RATE, -d SECONDS (and -c CONNS) must be positive\n");
        return 2;
    }
    char *body = NULL;
    size_t blen = 0;
    if (bodyfile) {
        FILE *f = fopen(bodyfile, "rb");
        if (!f) die("body file");
        fseek(f, 0, SEEK_END);
        blen = (size_t)ftell(f);
        fseek(f, 0, SEEK_SET);
        body = malloc(blen + 1);
        if (fread(body, 1, blen, f) != blen) die("read body");
        fclose(f);
    }
    request = malloc(blen + strlen(headers) + strlen(path) + strlen(method) + 256);
    request_len = (size_t)sprintf(request, "%s %s HTTP/1.1\r\nHost: %s:%d\r\n%sContent-Length: %zu\r\n\r\n", method,
                                  path, host, port, headers, blen);
    if (blen) memcpy(request + request_len, body, blen), request_len += blen;

    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) { fprintf(stderr, "openloop: bad IPv4 host %s\n", host); return 2; }

    long n = (long)(rate * seconds);
    sched_t = calloc((size_t)n, sizeof(double));
    sent_t = calloc((size_t)n, sizeof(double));
    done_t = malloc((size_t)n * sizeof(double));
    klass = calloc((size_t)n, sizeof(int));
    conns = calloc((size_t)nconns, sizeof(conn_t));
    idle = calloc((size_t)nconns, sizeof(long));
    for (long r = 0; r < n; r++) done_t[r] = -1;
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1");
    for (int i = 0; i < nconns; i++) {
        conns[i].cap = 65536;
        conns[i].buf = malloc(conns[i].cap);
        conn_open(i);
    }
    /* Connections up before the clock starts (they are not part of any request's latency). */
    double t_conn = now() + 10;
    int up = 0;
    struct epoll_event evs[256];
    while (up < nconns && now() < t_conn) {
        int k = epoll_wait(epfd, evs, 256, 100);
        for (int e = 0; e < k; e++) {
            int i = (int)evs[e].data.u32;
            if (conns[i].state != 0) continue;
            int err = 0;
            socklen_t el = sizeof err;
            getsockopt(conns[i].fd, SOL_SOCKET, SO_ERROR, &err, &el);
            if (err || (evs[e].events & (EPOLLERR | EPOLLHUP))) { fprintf(stderr, "openloop: cannot connect\n"); return 2; }
            conns[i].state = 1;
            idle[nidle++] = i;
            set_events(i, EPOLLIN | EPOLLRDHUP);
            up++;
        }
    }
    if (up < nconns) { fprintf(stderr, "openloop: only %d of %d connections up\n", up, nconns); return 2; }

    struct rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    double start = now() + 0.01;
    for (long r = 0; r < n; r++) sched_t[r] = start + (double)r / rate;
    long next = 0;
    double deadline = start + seconds + drain; /* then the unanswered count as such */
    for (;;) {
        double t = now();
        while (next < n && sched_t[next] <= t && nidle > 0) send_on((int)idle[--nidle], next++);
        if (next >= n) {
            int busy = 0;
            for (int i = 0; i < nconns && !busy; i++) busy = conns[i].state == 2 || conns[i].state == 0;
            if (!busy || t > deadline) break;
        }
        struct timespec ts;
        double wait = 0.05; /* nothing due that can go out: wake for responses (or the drain deadline) */
        if (next < n && nidle > 0) wait = sched_t[next] - t;
        if (wait < 0) wait = 0;
        ts.tv_sec = (time_t)wait;
        ts.tv_nsec = (long)((wait - (double)ts.tv_sec) * 1e9);
        int k = epoll_pwait2(epfd, evs, 256, &ts, NULL); /* ns timeout: sends leave on time, no spinning */
        if (k < 0 && errno != EINTR) die("epoll_pwait2");
        for (int e = 0; e < k; e++) {
            int i = (int)evs[e].data.u32;
            conn_t *c = &conns[i];
            uint32_t ev = evs[e].events;
            if (c->state == 0) { /* a reconnect completing */
                int err = 0;
                socklen_t el = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
                if (err || (ev & (EPOLLERR | EPOLLHUP))) { conn_reset(i, 0); continue; }
                c->state = 1;
                idle[nidle++] = i;
                set_events(i, EPOLLIN | EPOLLRDHUP);
                continue;
            }
            if ((ev & EPOLLOUT) && c->state == 2 && c->wrote < request_len) {
                if (!conn_write(i)) { conn_reset(i, 1); continue; }
                if (c->wrote >= request_len) set_events(i, EPOLLIN | EPOLLRDHUP);
            }
            if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
                int closed = 0;
                for (;;) {
                    if (c->len == c->cap) c->buf = realloc(c->buf, c->cap *= 2);
                    ssize_t got = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
                    if (got > 0) {
                        c->len += (size_t)got;
                        /* Level-triggered: if more is waiting, epoll says so again; a second recv returning
                           EAGAIN would cost a syscall per response. */
                        if (c->len < c->cap) break;
                        continue;
                    }
                    if (got < 0 && errno == EAGAIN) break;
                    closed = 1; /* EOF or error */
                    break;
                }
                int pr, close_after = 0, answered = 0;
                while ((pr = conn_parse(i)) > 0) {
                    answered = 1;
                    if (pr == 1) close_after = 1;
                }
                if (pr < 0) { conn_reset(i, 1); continue; }
                if (close_after || closed) { conn_reset(i, closed && c->state == 2); continue; }
                if (answered && c->state == 1) idle[nidle++] = i; /* (a wake-up without a response: not again) */
            }
        }
    }
    double end = now();
    getrusage(RUSAGE_SELF, &ru1);

    double *buf = malloc((size_t)(n ? n : 1) * sizeof(double));
    long unanswered = 0;
    for (long r = 0; r < next; r++) unanswered += done_t[r] < 0;
    printf("{\"rate\": %.3f, \"duration_s\": %.3f, \"connections\": %d, \"scheduled\": %ld, \"sent\": %ld, "
           "\"unsent\": %ld, \"unanswered\": %ld, \"errors\": %ld, \"reconnects\": %ld, \"elapsed_s\": %.3f, ",
           rate, seconds, nconns, n, next, n - next, unanswered, errors, reconnects, end - start);
    double cpu_user = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) + (double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) * 1e-6;
    double cpu_sys = (double)(ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) + (double)(ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) * 1e-6;
    printf("\"cpu_user_s\": %.3f, \"cpu_sys_s\": %.3f, \"status\": {", cpu_user, cpu_sys);
    int first = 1;
    for (int s = 0; s < 600; s++)
        if (status_count[s]) printf("%s\"%d\": %ld", first ? "" : ", ", s, status_count[s]), first = 0;
    printf("}, ");
    for (int k = 0; k < NCLASS; k++) {
        long m = 0;
        for (long r = 0; r < next; r++)
            if (done_t[r] >= 0 && klass[r] == k) buf[m++] = done_t[r] - sched_t[r];
        print_pcts(CLASS_NAME[k], buf, m, 0);
    }
    long m = 0;
    for (long r = 0; r < next; r++)
        if (sent_t[r] > 0) buf[m++] = sent_t[r] - sched_t[r];
    print_pcts("send_delay", buf, m, 1);
    printf("}\n");
    return 0;
}

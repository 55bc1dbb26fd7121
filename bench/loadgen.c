/* bench/loadgen.c: the benchmark's load generator, in C so that the client side costs
 * a few microseconds per request and is never what limits the measurement.
 *
 * N client processes (each its own peer, as N QEMUs are), each with its own connection
 * (helper mode) or its own device fd (raw mode),
 * issue requests back to back. Helper mode speaks the qemu-pr-helper wire protocol the
 * way QEMU does (CDB with the fd as SCM_RIGHTS, then the PR OUT parameter list, then read
 * the 104-byte header and the payload). Raw mode issues the SG_IO ioctl in-process with
 * the header the C helper builds: the physical limit.
 *
 * Prints one line of JSON with the latency percentiles of the measured phase.
 *
 *   loadgen --mode helper|raw --device PATH [--socket PATH] [--op readkeys|regpair]
 *           [--clients N] [--duration S] [--warmup S] [--count N] [--timeout S]
 *           [--expect-status N] [--key HEX]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <scsi/sg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { OP_READKEYS, OP_REGPAIR };

static const char *g_mode = "helper", *g_socket = NULL, *g_device = NULL;
static int g_raw, g_op = OP_READKEYS, g_clients = 1, g_expect = -1;
static double g_duration = 2.0, g_warmup = 0.5, g_timeout = 5.0;
static long g_count = 0; /* > 0: stop after this many measured iterations in total */
static uint64_t g_key = 0x00BE4C0000000001ULL;

/* shared between the client processes (MAP_SHARED, set up before fork) */
struct shared {
    pthread_barrier_t ready, go;
    uint64_t t0, warm_end, end; /* ns, CLOCK_MONOTONIC */
    atomic_long issued;
};
static struct shared *g;
/* latencies kept in all (the rest are counted): enough for stable percentiles */
#define SAMPLE_CAP (4u << 20)

struct thread_result {
    int id;
    uint32_t *lat; /* ns, measured phase only; points into shared memory */
    size_t n, cap, counted;
    long unexpected, errors, timeouts;
    int last_status;
    char first_error[160];
};

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void set_error(struct thread_result *r, const char *what, int err) {
    if (!r->first_error[0])
        snprintf(r->first_error, sizeof r->first_error, "%s: %s", what,
                 err ? strerror(err) : "EOF");
}

static void record(struct thread_result *r, uint64_t lat) {
    r->counted++;
    if (r->n < r->cap) r->lat[r->n++] = lat > UINT32_MAX ? UINT32_MAX : (uint32_t)lat;
}

static void put_be16(uint8_t *p, unsigned v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void put_be64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (56 - 8 * i));
}

/* one request's CDB and parameter list */
struct req { uint8_t cdb[16]; uint8_t params[24]; size_t plen; };

static void make_readkeys(struct req *q) {
    memset(q, 0, sizeof *q);
    q->cdb[0] = 0x5E; q->cdb[1] = 0x00; put_be16(q->cdb + 7, 8192);
}

static void make_register(struct req *q, uint64_t key, uint64_t sakey) {
    memset(q, 0, sizeof *q);
    q->cdb[0] = 0x5F; q->cdb[1] = 0x00; put_be16(q->cdb + 7, 24);
    put_be64(q->params, key); put_be64(q->params + 8, sakey); q->plen = 24;
}

/* -1 on error (recorded), -2 on timeout, else the SCSI status */
static int io_exact(int sock, void *buf, size_t len, int reading, struct thread_result *r) {
    uint8_t *p = buf;
    while (len) {
        ssize_t got = reading ? recv(sock, p, len, 0) : send(sock, p, len, MSG_NOSIGNAL);
        if (got > 0) { p += got; len -= (size_t)got; continue; }
        if (got < 0 && errno == EINTR) continue;
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return -2;
        set_error(r, reading ? "recv" : "send", got < 0 ? errno : 0);
        return -1;
    }
    return 0;
}

static int helper_request(int sock, int fd, const struct req *q, struct thread_result *r) {
    static uint8_t reply[104 + 8192];
    char ctl[CMSG_SPACE(sizeof(int))];
    memset(ctl, 0, sizeof ctl);
    struct iovec iov = { .iov_base = (void *)q->cdb, .iov_len = 16 };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl,
                          .msg_controllen = sizeof ctl };
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET; c->cmsg_type = SCM_RIGHTS; c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
    ssize_t s;
    do s = sendmsg(sock, &msg, MSG_NOSIGNAL); while (s < 0 && errno == EINTR);
    if (s < 0) {
        if (errno == EAGAIN) return -2;
        set_error(r, "sendmsg", errno);
        return -1;
    }
    if (s != 16) { set_error(r, "short sendmsg", 0); return -1; }
    int rc;
    if (q->plen && (rc = io_exact(sock, (void *)q->params, q->plen, 0, r)) < 0) return rc;
    if ((rc = io_exact(sock, reply, 104, 1, r)) < 0) return rc;
    uint32_t sz = (uint32_t)reply[4] << 24 | (uint32_t)reply[5] << 16 | (uint32_t)reply[6] << 8
                  | reply[7];
    if (sz > 8192) { set_error(r, "reply size over 8192", 0); return -1; }
    if (sz && (rc = io_exact(sock, reply + 104, sz, 1, r)) < 0) return rc;
    return (int)((uint32_t)reply[0] << 24 | (uint32_t)reply[1] << 16 | (uint32_t)reply[2] << 8
                 | reply[3]);
}

static int raw_request(int fd, const struct req *q) {
    static uint8_t data[8192];
    uint8_t sense[96] = {0}, cdb[16];
    memcpy(cdb, q->cdb, 16);
    struct sg_io_hdr h;
    memset(&h, 0, sizeof h);
    h.interface_id = 'S';
    h.cmd_len = 16; h.cmdp = cdb; h.mx_sb_len = sizeof sense; h.sbp = sense;
    if (q->cdb[0] == 0x5E) {
        h.dxfer_direction = SG_DXFER_FROM_DEV; h.dxferp = data; h.dxfer_len = sizeof data;
    } else {
        memcpy(data, q->params, q->plen);
        h.dxfer_direction = SG_DXFER_TO_DEV; h.dxferp = data; h.dxfer_len = (unsigned)q->plen;
    }
    h.timeout = 30000;
    if (ioctl(fd, SG_IO, &h) < 0) return errno == EINVAL ? 2 : -1; /* the helpers' CHECK */
    return h.status;
}

static int one(int sock, int fd, const struct req *q, struct thread_result *r) {
    return g_raw ? raw_request(fd, q) : helper_request(sock, fd, q, r);
}

static int connect_helper(struct thread_result *r) {
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0) { set_error(r, "socket", errno); return -1; }
    struct timeval tv = { .tv_sec = (time_t)g_timeout,
                          .tv_usec = (suseconds_t)((g_timeout - (double)(time_t)g_timeout) * 1e6) };
    setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv); /* also bounds connect() */
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", g_socket);
    if (connect(sock, (struct sockaddr *)&sa, sizeof sa) < 0) {
        if (errno == EAGAIN) r->timeouts++; else r->errors++;
        set_error(r, "connect", errno);
        close(sock);
        return -1;
    }
    uint8_t hs[4];
    int rc = io_exact(sock, hs, 4, 1, r);
    if (rc == 0) { memset(hs, 0, 4); rc = io_exact(sock, hs, 4, 0, r); }
    if (rc < 0) {
        if (rc == -2) { r->timeouts++; set_error(r, "handshake", ETIMEDOUT); } else r->errors++;
        close(sock);
        return -1;
    }
    return sock;
}

static void *client(void *arg) {
    struct thread_result *r = arg;
    int fd = open(g_device, O_RDWR | O_CLOEXEC), sock = -1, ok = fd >= 0;
    if (!ok) { r->errors++; set_error(r, "open device", errno); }
    if (ok && !g_raw) { sock = connect_helper(r); ok = sock >= 0; }
    pthread_barrier_wait(&g->ready);
    pthread_barrier_wait(&g->go);
    struct req a, b;
    uint64_t key = g_key + (uint64_t)r->id;
    if (g_op == OP_READKEYS) make_readkeys(&a); else make_register(&a, 0, key);
    make_register(&b, key, 0);
    while (ok) {
        uint64_t start = now_ns();
        if (g_count) {
            if (atomic_fetch_add(&g->issued, 1) >= g_count) break;
        } else if (start >= g->end) break;
        int st = one(sock, fd, &a, r);
        if (st >= 0 && g_op == OP_REGPAIR) {
            if (g_expect >= 0 && st != g_expect) r->unexpected++;
            st = one(sock, fd, &b, r);
        }
        uint64_t done = now_ns();
        if (st == -2) { r->timeouts++; set_error(r, "reply", ETIMEDOUT); break; }
        if (st < 0) { r->errors++; break; }
        r->last_status = st;
        if (g_expect >= 0 && st != g_expect) r->unexpected++;
        if (g_count || start >= g->warm_end) record(r, done - start);
    }
    if (sock >= 0) close(sock);
    if (fd >= 0) close(fd);
    return NULL;
}

static int cmp_u32(const void *x, const void *y) {
    uint32_t a = *(const uint32_t *)x, b = *(const uint32_t *)y;
    return (a > b) - (a < b);
}

static double pct(const uint32_t *v, size_t n, double p) {
    if (!n) return -1;
    size_t i = (size_t)(p / 100.0 * (double)n);
    if (i >= n) i = n - 1;
    return v[i] / 1000.0;
}

static void usage(void) {
    fprintf(stderr, "usage: loadgen --mode helper|raw --device PATH [--socket PATH] "
                    "[--op readkeys|regpair] [--clients N] [--duration S] [--warmup S] "
                    "[--count N] [--timeout S] [--expect-status N] [--key HEX]\n");
    exit(2);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) usage();
        i++;
        if (!strcmp(o, "--mode")) g_mode = v;
        else if (!strcmp(o, "--socket")) g_socket = v;
        else if (!strcmp(o, "--device")) g_device = v;
        else if (!strcmp(o, "--op")) g_op = !strcmp(v, "regpair") ? OP_REGPAIR : OP_READKEYS;
        else if (!strcmp(o, "--clients")) g_clients = atoi(v);
        else if (!strcmp(o, "--duration")) g_duration = atof(v);
        else if (!strcmp(o, "--warmup")) g_warmup = atof(v);
        else if (!strcmp(o, "--count")) g_count = atol(v);
        else if (!strcmp(o, "--timeout")) g_timeout = atof(v);
        else if (!strcmp(o, "--expect-status")) g_expect = atoi(v);
        else if (!strcmp(o, "--key")) g_key = strtoull(v, NULL, 16);
        else usage();
    }
    g_raw = !strcmp(g_mode, "raw");
    if (!g_device || (!g_raw && !g_socket) || g_clients < 1) usage();
    size_t cap = SAMPLE_CAP / (size_t)g_clients;
    size_t bytes = sizeof(struct shared) + (size_t)g_clients * sizeof(struct thread_result)
                   + (size_t)g_clients * cap * sizeof(uint32_t);
    void *mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) { perror("mmap"); return 2; }
    g = mem;
    struct thread_result *res = (struct thread_result *)(g + 1);
    uint32_t *lat = (uint32_t *)(res + g_clients);
    pthread_barrierattr_t ba;
    pthread_barrierattr_init(&ba);
    pthread_barrierattr_setpshared(&ba, PTHREAD_PROCESS_SHARED);
    pthread_barrier_init(&g->ready, &ba, (unsigned)g_clients + 1);
    pthread_barrier_init(&g->go, &ba, (unsigned)g_clients + 1);
    atomic_init(&g->issued, 0);
    fflush(stdout);
    for (int i = 0; i < g_clients; i++) {
        res[i].id = i;
        res[i].lat = lat + (size_t)i * cap;
        res[i].cap = cap;
        pid_t pid = fork();
        if (pid < 0) { perror("fork"); return 2; }
        if (pid == 0) { client(&res[i]); _exit(0); }
    }
    pthread_barrier_wait(&g->ready); /* every connection is open */
    g->t0 = now_ns();
    g->warm_end = g->t0 + (uint64_t)(g_warmup * 1e9);
    g->end = g->warm_end + (uint64_t)(g_duration * 1e9);
    pthread_barrier_wait(&g->go);
    while (wait(NULL) > 0 || errno == EINTR) {}
    uint64_t t1 = now_ns();
    struct rusage ru0 = {0}, ru1;
    getrusage(RUSAGE_CHILDREN, &ru1);
    size_t total = 0, counted = 0;
    long unexpected = 0, errors = 0, timeouts = 0;
    const char *first_error = "";
    int last_status = -1;
    for (int i = 0; i < g_clients; i++) {
        total += res[i].n;
        counted += res[i].counted;
        unexpected += res[i].unexpected; errors += res[i].errors; timeouts += res[i].timeouts;
        if (!*first_error && res[i].first_error[0]) first_error = res[i].first_error;
        if (res[i].n) last_status = res[i].last_status;
    }
    uint32_t *all = malloc((total ? total : 1) * sizeof *all);
    size_t k = 0;
    double sum = 0;
    for (int i = 0; i < g_clients; i++)
        for (size_t j = 0; j < res[i].n; j++) { all[k++] = res[i].lat[j]; sum += res[i].lat[j]; }
    qsort(all, total, sizeof *all, cmp_u32);
    double elapsed = g_count ? (double)(t1 - g->t0) / 1e9 : g_duration;
    double cpu = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec)
                 + (double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) / 1e6
                 + (double)(ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec)
                 + (double)(ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;
    printf("{\"mode\": \"%s\", \"clients\": %d, \"requests\": %zu, \"elapsed_s\": %.4f, "
           "\"rps\": %.1f, \"p50_us\": %.2f, \"p90_us\": %.2f, \"p99_us\": %.2f, "
           "\"max_us\": %.2f, \"mean_us\": %.2f, \"unexpected\": %ld, \"errors\": %ld, "
           "\"timeouts\": %ld, \"last_status\": %d, \"client_cpu_s\": %.4f, "
           "\"first_error\": \"%s\"}\n",
           g_mode, g_clients, counted, elapsed, elapsed > 0 ? (double)counted / elapsed : 0.0,
           pct(all, total, 50), pct(all, total, 90), pct(all, total, 99),
           total ? all[total - 1] / 1000.0 : -1.0, total ? sum / (double)total / 1000.0 : -1.0,
           unexpected, errors, timeouts, last_status, cpu, first_error);
    return 0;
}

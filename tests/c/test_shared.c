/*
 * C workers of a `shared` listener, accepting through rcluster_acceptor: real TCP clients on
 * loopback, the share map's counts in the status, and a slow worker keeping its share.
 *
 * This program is also the worker (`test_shared --as-worker SLOW_MS`): worker 1 spends
 * SLOW_MS milliseconds on each request, as a request that computes does (its loop blocked).
 */
#include "harness.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>

#define WAIT_S 30.0
/* Connections a leaving worker takes from the socket before closing it (bounded). */
#define MAX_QUEUED_ACCEPTS 65536

static const char *self_path;

/* --- the worker ------------------------------------------------------------------------ */

static void serve(int fd, uint32_t id, int slow_ms) {
    /* Accepted non-blocking: this worker serves one connection at a time, blocking. */
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    char req[4096];
    size_t got = 0;
    while (got < sizeof req - 1) {
        ssize_t n = read(fd, req + got, sizeof req - 1 - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += (size_t)n;
        req[got] = '\0';
        if (strstr(req, "\r\n\r\n")) break;
    }
    req[got] = '\0';
    if (strstr(req, "\r\n\r\n")) {
        if (id == 1 && slow_ms > 0) usleep((useconds_t)slow_ms * 1000);
        char out[256], body[64];
        int blen = snprintf(body, sizeof body, "Hello from worker %u\n", id);
        int n = snprintf(out, sizeof out,
                         "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
                         blen, body);
        ssize_t w = send(fd, out, (size_t)n, MSG_NOSIGNAL);
        (void)w;
    }
    close(fd);
}

/* Takes what the primary sent; 1 when it asks this worker to leave. */
static int take_events(rcluster_worker *w) {
    rcluster_worker_event *ev = NULL;
    int leave = 0;
    while (rcluster_worker_try_next_event(w, &ev) == RCLUSTER_RESULT_OK) {
        leave |= ev->kind == RCLUSTER_WORKER_EVENT_KIND_DISCONNECT ||
                 ev->kind == RCLUSTER_WORKER_EVENT_KIND_PRIMARY_GONE;
        rcluster_worker_event_free(ev);
    }
    return leave;
}

static int as_worker(int slow_ms) {
    rcluster_worker *w = NULL;
    if (rcluster_worker_from_env(&w)) return 2;
    uint32_t id = 0;
    rcluster_worker_identity(w, &id, NULL);
    /* The inherited socket: fd 3, named first in LISTEN_FDNAMES. */
    char name[128] = "";
    const char *names = getenv("LISTEN_FDNAMES");
    if (names) snprintf(name, sizeof name, "%.*s", (int)strcspn(names, ":"), names);
    rcluster_acceptor *a = NULL;
    if (rcluster_acceptor_new(w, name, 3, &a)) {
        fprintf(stderr, "worker %u: %s\n", id, rcluster_last_error());
        rcluster_worker_free(w);
        return 1;
    }
    int wfd = -1, afd = -1;
    rcluster_worker_fd(w, &wfd);
    rcluster_acceptor_fd(a, &afd);
    rcluster_worker_ready(w);
    double last_beat = now_s(), resume = 0;
    /* Asking for the listener may have read events into memory, where poll does not see them. */
    int leaving = take_events(w);
    while (!leaving) {
        double now = now_s();
        int watch = now >= resume;
        struct pollfd p[2] = {{.fd = wfd, .events = POLLIN}, {.fd = afd, .events = POLLIN}};
        int wait_ms = watch ? 1000 : (int)((resume - now) * 1000) + 1;
        if (poll(p, watch ? 2 : 1, wait_ms) < 0 && errno != EINTR) break;
        if (now_s() - last_beat >= 1.0) {
            rcluster_worker_heartbeat(w);
            last_beat = now_s();
        }
        if (watch && (p[1].revents & POLLIN)) {
            int fd = -1;
            rcluster_result rc = rcluster_acceptor_next(a, &fd);
            if (rc == RCLUSTER_RESULT_OK) {
                serve(fd, id, slow_ms);
            } else if (rc == RCLUSTER_RESULT_DEFERRED) {
                resume = now_s() + 0.001;
            } else if (rc != RCLUSTER_RESULT_TIMEOUT) {
                if (errno != EMFILE && errno != ENFILE && errno != ENOBUFS && errno != ENOMEM)
                    fprintf(stderr, "worker %u: %s\n", id, rcluster_last_error());
                resume = now_s() + 0.1;
            }
        }
        if (p[0].revents) leaving = take_events(w);
    }
    /* Connections waiting in the socket were accepted by the kernel for their clients: take
     * them before closing it. */
    for (int i = 0; i < MAX_QUEUED_ACCEPTS; i++) {
        int fd = -1;
        rcluster_result rc = rcluster_acceptor_next(a, &fd);
        if (rc == RCLUSTER_RESULT_OK) serve(fd, id, slow_ms);
        else if (rc != RCLUSTER_RESULT_DEFERRED) break;
    }
    rcluster_acceptor_free(a);
    rcluster_worker_free(w);
    return 0;
}

/* --- the tests ------------------------------------------------------------------------- */

/* A cluster of two of this program's workers behind a shared loopback listener "web". */
static rcluster_supervisor *start_shared(const char *slow_ms, uint16_t *port) {
    const char *argv[] = {self_path, "--as-worker", slow_ms};
    rcluster_config *cfg = NULL;
    rcluster_supervisor *sup = NULL;
    if (rcluster_config_new(&cfg) || rcluster_config_set_argv(cfg, argv, 3) ||
        rcluster_config_set_workers(cfg, 2) ||
        rcluster_config_set_ready_on(cfg, RCLUSTER_READY_ON_EXPLICIT) ||
        rcluster_config_set_timeouts(cfg, 60000, 0, 5000) ||
        rcluster_config_add_listener(cfg, "web", "127.0.0.1:0", RCLUSTER_DISPATCH_SHARED) ||
        rcluster_supervisor_start(cfg, &sup) ||
        rcluster_supervisor_listener(sup, "web", &(const char *){NULL}, port) ||
        wait_ready(sup, 2, WAIT_S) != 2) {
        fprintf(stderr, "  start: %s\n", rcluster_last_error());
        rcluster_supervisor_free(sup);
        sup = NULL;
    }
    rcluster_config_free(cfg);
    return sup;
}

/* The sum of the workers' "connections_total" in the status. */
static long connections_total(rcluster_supervisor *sup) {
    char *json = NULL;
    if (rcluster_supervisor_status_json(sup, &json)) return -1;
    long sum = 0;
    const char key[] = "\"connections_total\":";
    for (const char *p = strstr(json, key); p; p = strstr(p + 1, key)) sum += atol(p + strlen(key));
    rcluster_string_free(json);
    return sum;
}

static int stop(rcluster_supervisor *sup) {
    CHECK_RC(rcluster_supervisor_stop(sup, 10000));
    int exits = 0, clean = 0;
    rcluster_event *ev = NULL;
    for (int i = 0; i < 1000 && rcluster_supervisor_next_event(sup, 1000, &ev) == RCLUSTER_RESULT_OK;
         i++) {
        if (ev->kind == RCLUSTER_EVENT_KIND_EXIT) {
            exits++;
            clean += ev->exit_code == 0;
        }
        rcluster_event_free(ev);
    }
    rcluster_supervisor_free(sup);
    CHECK(exits == 2 && clean == 2, "%d exits, %d clean", exits, clean);
    return 0;
}

static int acceptor_workers_serve_real_connections_and_count_them(void) {
    uint16_t port = 0;
    rcluster_supervisor *sup = start_shared("0", &port);
    CHECK(sup, "a cluster of two acceptor workers");
    char buf[1024];
    int served = 0;
    for (int i = 0; i < 20; i++) {
        int id = http_get(port, buf, sizeof buf);
        if (id != 0 && id != 1) fprintf(stderr, "  request %d got: %s\n", i, buf);
        served += id == 0 || id == 1;
    }
    /* Each connection a worker takes is counted in the listener's share map, which the
     * primary adds to the workers' totals: proof that the acceptor keeps level through it. */
    long total = -1;
    for (int i = 0; i < 50 && (total = connections_total(sup)) != 20; i++) usleep(20000);
    int stopped = stop(sup);
    CHECK(served == 20, "%d of 20 requests answered", served);
    CHECK(total == 20, "the workers' connections_total add up to %ld, not 20", total);
    return stopped;
}

struct load {
    uint16_t port;
    pthread_mutex_t lock;
    int sent, by[2], failed;
};

#define TOTAL 240
#define CLIENTS 6

static void *client(void *arg) {
    struct load *l = arg;
    char buf[1024];
    for (;;) {
        pthread_mutex_lock(&l->lock);
        int go = l->sent < TOTAL;
        l->sent += go;
        pthread_mutex_unlock(&l->lock);
        if (!go) return NULL;
        int id = http_get(l->port, buf, sizeof buf);
        pthread_mutex_lock(&l->lock);
        if (id == 0 || id == 1) l->by[id]++;
        else l->failed++;
        pthread_mutex_unlock(&l->lock);
    }
}

static int a_slow_worker_keeps_its_share(void) {
    /* Worker 1 spends 3 ms on each request. Accepting whenever a connection waits, worker 0
     * takes nearly all of them; keeping level, it leaves worker 1 a third or more. */
    struct load l = {.lock = PTHREAD_MUTEX_INITIALIZER};
    rcluster_supervisor *sup = start_shared("3", &l.port);
    CHECK(sup, "a cluster of two acceptor workers");
    pthread_t t[CLIENTS];
    for (int i = 0; i < CLIENTS; i++) pthread_create(&t[i], NULL, client, &l);
    for (int i = 0; i < CLIENTS; i++) pthread_join(t[i], NULL);
    int stopped = stop(sup);
    printf("# worker 0 answered %d, worker 1 (slow) %d, %d failed\n", l.by[0], l.by[1], l.failed);
    CHECK(l.failed == 0 && l.by[0] + l.by[1] == TOTAL, "%d failed", l.failed);
    CHECK(l.by[1] >= 80, "the slow worker answered %d of %d", l.by[1], TOTAL);
    return stopped;
}

int main(int argc, char **argv) {
    if (argc > 2 && strcmp(argv[1], "--as-worker") == 0) return as_worker(atoi(argv[2]));
    self_path = argv[0];
    RUN(acceptor_workers_serve_real_connections_and_count_them);
    RUN(a_slow_worker_keeps_its_share);
    return finish("test_shared");
}

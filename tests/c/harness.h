/*
 * A tiny test harness for the C tests: TEST(name) functions return 0 on success; CHECK stops a
 * test with a message naming the line; every wait is bounded. Results are printed as
 * "ok - name" / "not ok - name", then "C tests: N passed, M failed".
 */
#ifndef RCLUSTER_TEST_HARNESS_H
#define RCLUSTER_TEST_HARNESS_H

#define _GNU_SOURCE
#include <rcluster.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define CHECK(cond, ...)                                                      \
    do {                                                                      \
        if (!(cond)) {                                                        \
            fprintf(stderr, "  %s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                     \
            fprintf(stderr, " (last error: %s)\n", rcluster_last_error());   \
            return 1;                                                         \
        }                                                                     \
    } while (0)

#define CHECK_RC(expr) \
    do { \
        rcluster_result rc_ = (expr); \
        CHECK(rc_ == RCLUSTER_RESULT_OK, "%s returned %u (%s)", #expr, rc_, rcluster_result_text(rc_)); \
    } while (0)

static int passed, failed;

static void run_test(const char *name, int (*fn)(void)) {
    if (fn() == 0) {
        printf("ok - %s\n", name);
        passed++;
    } else {
        printf("not ok - %s\n", name);
        failed++;
    }
    fflush(stdout);
}

#define RUN(fn) run_test(#fn, fn)

static int finish(const char *suite) {
    printf("%s: %d passed, %d failed\n", suite, passed, failed);
    return failed ? 1 : 0;
}

static inline double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* The next event of `kind` (for worker `id`, or any worker if id < 0) within `seconds`;
 * other events are dropped. NULL on timeout. */
static inline rcluster_event *wait_event(rcluster_supervisor *sup, rcluster_event_kind kind, long id,
                                  double seconds) {
    double until = now_s() + seconds;
    while (now_s() < until) {
        rcluster_event *ev = NULL;
        int64_t left_ms = (int64_t)((until - now_s()) * 1000) + 1;
        rcluster_result rc = rcluster_supervisor_next_event(sup, left_ms, &ev);
        if (rc == RCLUSTER_RESULT_TIMEOUT) continue;
        if (rc != RCLUSTER_RESULT_OK) return NULL;
        if (ev->kind == kind && (id < 0 || ev->worker_id == (uint32_t)id)) return ev;
        rcluster_event_free(ev);
    }
    return NULL;
}

/* Waits for `n` READY events (any workers). Returns how many came. */
static inline int wait_ready(rcluster_supervisor *sup, int n, double seconds) {
    int got = 0;
    double until = now_s() + seconds;
    while (got < n && now_s() < until) {
        rcluster_event *ev = wait_event(sup, RCLUSTER_EVENT_KIND_READY, -1, until - now_s());
        if (!ev) break;
        rcluster_event_free(ev);
        got++;
    }
    return got;
}

/* One HTTP GET to 127.0.0.1:port on a new connection; the whole response goes to `out`.
 * Returns the worker id named in "Hello from worker N", or -1. */
static inline int http_get(uint16_t port, char *out, size_t cap) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct timeval tv = {20, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const char req[] = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    size_t got = 0;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
        write(fd, req, sizeof req - 1) == (ssize_t)(sizeof req - 1)) {
        for (int i = 0; i < 1000 && got < cap - 1; i++) {
            ssize_t n = read(fd, out + got, cap - 1 - got);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) break;
            got += (size_t)n;
        }
    }
    out[got] = '\0';
    close(fd);
    const char *p = strstr(out, "Hello from worker ");
    return (strncmp(out, "HTTP/1.1 200", 12) == 0 && p) ? atoi(p + 18) : -1;
}

#endif

/*
 * The IPC stream benchmark of bench/src/bin/ipc.rs, written against the C API: one worker
 * (bench_worker count), N user messages of 32 B primary -> worker, the clock stopped when the
 * worker answers "end" with the count (checked). The worker is the same Rust program as in the
 * Rust benchmark, so the difference between the two figures is the cost of the C API.
 *
 * Usage: ipc_stream BENCH_WORKER [messages] [repeats]   (defaults 2000000 3)
 * Prints "stream: ..." per run and "stream median: R msg/s (of K runs)", like `ipc`.
 */
#define _GNU_SOURCE
#include <rcluster.h>

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MSG_SIZE 32

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void die(const char *what) {
    fprintf(stderr, "ipc_stream: %s: %s\n", what, rcluster_last_error());
    exit(1);
}

/* Back-pressure (QUEUE_FULL) is retried, as send_retrying does in the Rust benchmark. */
static void send_retrying(rcluster_supervisor *sup, const uint8_t *data, size_t len) {
    rcluster_result rc;
    while ((rc = rcluster_supervisor_send(sup, 0, data, len)) == RCLUSTER_RESULT_QUEUE_FULL)
        sched_yield();
    if (rc) die("send");
}

/* The next user message, within 30 s; other events are skipped. */
static rcluster_event *next_message(rcluster_supervisor *sup, const char *waiting_for) {
    double until = now_s() + 30;
    while (now_s() < until) {
        rcluster_event *ev = NULL;
        rcluster_result rc = rcluster_supervisor_next_event(sup, 1000, &ev);
        if (rc == RCLUSTER_RESULT_TIMEOUT) continue;
        if (rc) die("next_event");
        if (ev->kind == RCLUSTER_EVENT_KIND_MESSAGE || (waiting_for == NULL && ev->kind == RCLUSTER_EVENT_KIND_READY))
            return ev;
        if (ev->kind == RCLUSTER_EVENT_KIND_EXIT) die("the bench worker exited");
        rcluster_event_free(ev);
    }
    fprintf(stderr, "ipc_stream: nothing within 30 s (%s)\n", waiting_for ? waiting_for : "ready");
    exit(1);
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: ipc_stream BENCH_WORKER [messages] [repeats]\n");
        return 2;
    }
    long n = argc > 2 ? atol(argv[2]) : 2000000;
    int repeats = argc > 3 ? atoi(argv[3]) : 3;
    if (n <= 0 || repeats <= 0 || repeats > 100) return 2;
    rcluster_config *cfg = NULL;
    const char *wargv[] = {argv[1], "count"};
    if (rcluster_config_new(&cfg) || rcluster_config_set_argv(cfg, wargv, 2)) die("config");
    rcluster_supervisor *sup = NULL;
    if (rcluster_supervisor_start(cfg, &sup)) die("start");
    rcluster_config_free(cfg);
    rcluster_event_free(next_message(sup, NULL));

    uint8_t msg[MSG_SIZE];
    memset(msg, 'x', sizeof msg);
    double rates[100];
    for (int r = 0; r < repeats; r++) {
        double t0 = now_s();
        for (long i = 0; i < n; i++) send_retrying(sup, msg, sizeof msg);
        send_retrying(sup, (const uint8_t *)"end", 3);
        rcluster_event *ev = next_message(sup, "the count");
        double dt = now_s() - t0;
        char count[32] = {0};
        memcpy(count, ev->data, ev->len < 31 ? ev->len : 31);
        rcluster_event_free(ev);
        if (atol(count) != n) {
            fprintf(stderr, "ipc_stream: the worker counted %s of %ld messages\n", count, n);
            return 1;
        }
        rates[r] = (double)n / dt;
        printf("stream: %ld msgs of %d B in %.3f s = %.0f msg/s\n", n, MSG_SIZE, dt, rates[r]);
    }
    qsort(rates, (size_t)repeats, sizeof rates[0], cmp);
    printf("stream median: %.0f msg/s (of %d runs)\n", rates[repeats / 2], repeats);
    if (rcluster_supervisor_stop(sup, 5000)) die("stop");
    rcluster_supervisor_free(sup);
    return 0;
}

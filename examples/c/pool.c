/*
 * A pool of worker processes in C: this one program is the primary and, started by it, each
 * worker. The primary submits 1,000 tasks ("square" of a number) and one task that crashes
 * its worker ("crash": abort()), then waits on the completion descriptor with poll(2) and
 * takes every outcome. Exactly the crashing task fails, naming SIGABRT; the others all
 * succeed, and the pool carries on. Exits 0 when that is what happened.
 *
 *   cc pool.c $(pkg-config --cflags --libs librcluster) -o pool && ./pool [workers]
 */
#define _GNU_SOURCE
#include <rcluster.h>

#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TASKS 1000

/* The worker: takes tasks and answers them until the primary says to stop. */
static int work(rcluster_worker *w) {
    if (rcluster_worker_ready(w) != RCLUSTER_RESULT_OK) return 1;
    for (;;) {
        rcluster_worker_event *ev;
        if (rcluster_worker_next_event(w, -1, &ev) != RCLUSTER_RESULT_OK) return 1;
        if (ev->kind == RCLUSTER_WORKER_EVENT_KIND_DISCONNECT ||
            ev->kind == RCLUSTER_WORKER_EVENT_KIND_PRIMARY_GONE) {
            rcluster_worker_event_free(ev);
            return 0;
        }
        /* Tasks are run as soon as they are taken: a cancel of one already taken
         * (RCLUSTER_WORKER_EVENT_KIND_TASK_CANCELLED) comes too late and is ignored; the
         * library drops a task whose cancel arrived before it was taken. */
        if (ev->kind == RCLUSTER_WORKER_EVENT_KIND_TASK) {
            if (strcmp(ev->name, "crash") == 0) abort();
            uint64_t x = 0;
            if (ev->len == sizeof x) memcpy(&x, ev->data, sizeof x);
            uint64_t y = x * x;
            rcluster_worker_answer(w, ev->task_id, true, 0, (const uint8_t *)&y, sizeof y);
        }
        rcluster_worker_event_free(ev);
    }
}

static int fail(const char *what) {
    fprintf(stderr, "%s: %s\n", what, rcluster_last_error());
    return 1;
}

int main(int argc, char **argv) {
    rcluster_worker *w;
    if (rcluster_worker_from_env(&w) == RCLUSTER_RESULT_OK) {
        int rc = work(w);
        rcluster_worker_free(w);
        return rc;
    }
    rcluster_config *cfg;
    if (rcluster_config_new(&cfg) != RCLUSTER_RESULT_OK) return fail("config");
    const char *args[] = {"/proc/self/exe"};
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return fail("readlink");
    self[n] = 0;
    args[0] = self;
    rcluster_config_set_argv(cfg, args, 1);
    rcluster_config_set_workers(cfg, argc > 1 ? (uint32_t)atoi(argv[1]) : 2);
    rcluster_pool_options opts = {0};
    opts.task_timeout_ms = 10000;
    /* Up to 8 tasks wait in each worker behind the one it runs (0 keeps the default, 32). */
    opts.max_tasks_ahead = 8;
    rcluster_pool *pool;
    if (rcluster_pool_start(cfg, &opts, &pool) != RCLUSTER_RESULT_OK) return fail("pool start");
    rcluster_config_free(cfg);

    uint64_t crash_id = 0;
    for (uint64_t i = 0; i < TASKS; i++) {
        if (i == TASKS / 3 &&
            rcluster_pool_submit(pool, "crash", 0, NULL, 0, 0, false, &crash_id) != RCLUSTER_RESULT_OK)
            return fail("submit");
        if (rcluster_pool_submit(pool, "square", 0, (const uint8_t *)&i, sizeof i, 0, false, NULL) !=
            RCLUSTER_RESULT_OK)
            return fail("submit");
    }

    /* The completion descriptor: poll it, then take what waits. */
    struct pollfd pfd = {.fd = rcluster_pool_outcome_fd(pool), .events = POLLIN};
    int ok = 0, crashed = 0, other = 0;
    uint64_t sum = 0;
    while (ok + crashed + other < TASKS + 1) {
        if (poll(&pfd, 1, 20000) <= 0) return fail("no outcome within 20 s");
        rcluster_outcome *o;
        while (rcluster_pool_try_next_outcome(pool, &o) == RCLUSTER_RESULT_OK) {
            if (o->status == RCLUSTER_OUTCOME_STATUS_VALUE && o->len == sizeof(uint64_t)) {
                uint64_t y;
                memcpy(&y, o->data, sizeof y);
                sum += y;
                ok++;
            } else if (o->status == RCLUSTER_OUTCOME_STATUS_CRASHED && o->id == crash_id &&
                       o->signal == SIGABRT) {
                printf("task %" PRIu64 ": %s\n", o->id, o->message);
                crashed++;
            } else {
                printf("unexpected outcome of task %" PRIu64 ": status %u %s\n", o->id, o->status,
                       o->message ? o->message : "");
                other++;
            }
            rcluster_outcome_free(o);
        }
    }
    rcluster_pool_counters stats;
    rcluster_pool_stats(pool, &stats);
    printf("%d tasks succeeded (sum of squares %" PRIu64 "), %d crashed, %d other; completed %" PRIu64
           ", failed by a crash %" PRIu64 ", moved from the crashed worker to another %" PRIu64 "\n",
           ok, sum, crashed, other, stats.completed, stats.failed_crashed, stats.requeued);
    rcluster_pool_stop(pool, true, 5000);
    rcluster_pool_free(pool);
    /* Sum of i^2 for i < 1000. */
    uint64_t want = (uint64_t)(TASKS - 1) * TASKS * (2 * TASKS - 1) / 6;
    return ok == TASKS && crashed == 1 && other == 0 && sum == want ? 0 : 1;
}

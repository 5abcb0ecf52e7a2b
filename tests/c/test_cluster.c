/*
 * End-to-end tests of the C API: a real cluster of the C example worker (examples/c/worker.c)
 * behind a loopback listener, driven through rcluster.h and exercised by a real TCP client.
 *
 * Usage: test_cluster -- WORKER_ARGV...   (e.g. -- ./worker, or -- valgrind ... ./worker)
 */
#include "harness.h"

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>

#define WORKERS 3
#define WAIT_S 30.0 /* generous: workers may run under valgrind */

static const char *const *worker_argv;
static size_t worker_argc;
static rcluster_supervisor *sup; /* the shared cluster of the tests below, in order */
static uint16_t port;

static rcluster_config *base_config(size_t workers) {
    rcluster_config *cfg = NULL;
    if (rcluster_config_new(&cfg) || rcluster_config_set_argv(cfg, worker_argv, worker_argc) ||
        rcluster_config_set_workers(cfg, workers) ||
        rcluster_config_set_ready_on(cfg, RCLUSTER_READY_ON_EXPLICIT) ||
        rcluster_config_set_timeouts(cfg, 60000, 0, 5000) ||
        rcluster_config_set_backoff(cfg, 0, 1.0, 0, 0.0, 1000)) {
        fprintf(stderr, "config: %s\n", rcluster_last_error());
        rcluster_config_free(cfg);
        return NULL;
    }
    return cfg;
}

static int version_function_matches_the_header_macros(void) {
    CHECK(strcmp(rcluster_version(), RCLUSTER_VERSION) == 0, "library %s, header %s",
          rcluster_version(), RCLUSTER_VERSION);
    char want[32];
    snprintf(want, sizeof want, "%d.%d.%d", RCLUSTER_VERSION_MAJOR, RCLUSTER_VERSION_MINOR,
             RCLUSTER_VERSION_PATCH);
    CHECK(strncmp(RCLUSTER_VERSION, want, strlen(want)) == 0, "%s vs %s", RCLUSTER_VERSION, want);
    return 0;
}

static int cluster_starts_and_every_worker_becomes_ready(void) {
    rcluster_config *cfg = base_config(WORKERS);
    CHECK(cfg, "config");
    CHECK_RC(rcluster_config_add_listener(cfg, "web", "127.0.0.1:0", RCLUSTER_DISPATCH_ROUND_ROBIN));
    rcluster_result rc = rcluster_supervisor_start(cfg, &sup);
    rcluster_config_free(cfg);
    CHECK(rc == RCLUSTER_RESULT_OK, "start: %s", rcluster_result_text(rc));
    const char *addr = NULL;
    CHECK_RC(rcluster_supervisor_listener(sup, "web", &addr, &port));
    CHECK(port != 0 && strncmp(addr, "127.0.0.1:", 10) == 0, "listener %s port %u", addr, port);
    int ready = wait_ready(sup, WORKERS, WAIT_S);
    CHECK(ready == WORKERS, "%d of %d workers ready", ready, WORKERS);
    return 0;
}

static int requests_are_served_round_robin_by_every_worker(void) {
    int seen[WORKERS] = {0};
    char buf[1024];
    for (int i = 0; i < 3 * WORKERS; i++) {
        int id = http_get(port, buf, sizeof buf);
        CHECK(id >= 0 && id < WORKERS, "request %d got: %s", i, buf);
        seen[id]++;
    }
    for (int i = 0; i < WORKERS; i++) CHECK(seen[i] == 3, "worker %d served %d of 9", i, seen[i]);
    return 0;
}

static int worker_info(uint32_t id, rcluster_worker_info *out) {
    rcluster_snapshot *snap = NULL;
    CHECK_RC(rcluster_supervisor_snapshot(sup, &snap));
    size_t n = 0;
    rcluster_snapshot_len(snap, &n);
    int found = 1;
    for (size_t i = 0; i < n; i++) {
        rcluster_worker_info w;
        if (rcluster_snapshot_get(snap, i, &w) == RCLUSTER_RESULT_OK && w.id == id &&
            w.state != RCLUSTER_WORKER_STATE_EXITED) {
            *out = w;
            found = 0;
        }
    }
    rcluster_snapshot_free(snap);
    return found;
}

static int snapshot_lists_every_worker_ready(void) {
    rcluster_snapshot *snap = NULL;
    CHECK_RC(rcluster_supervisor_snapshot(sup, &snap));
    size_t n = 0;
    CHECK_RC(rcluster_snapshot_len(snap, &n));
    int ready = 0;
    for (size_t i = 0; i < n; i++) {
        rcluster_worker_info w;
        CHECK_RC(rcluster_snapshot_get(snap, i, &w));
        if (w.state == RCLUSTER_WORKER_STATE_READY && w.pid > 0 && w.generation == 1) ready++;
    }
    rcluster_worker_info w;
    CHECK(rcluster_snapshot_get(snap, n, &w) == RCLUSTER_RESULT_INVALID_ARGUMENT, "past the end");
    rcluster_snapshot_free(snap);
    CHECK(n == WORKERS && ready == WORKERS, "%zu entries, %d ready", n, ready);
    return 0;
}

static int status_json_names_every_worker_with_its_usage(void) {
    char *json = NULL;
    CHECK_RC(rcluster_supervisor_status_json(sup, &json));
    char want[64];
    snprintf(want, sizeof want, "\"workers_desired\":%d", WORKERS);
    int ok = strstr(json, want) && strstr(json, "\"state\":\"ready\"") &&
             strstr(json, "\"rss_bytes\":") && strstr(json, "\"listeners\":[{");
    if (!ok) fprintf(stderr, "  status: %s\n", json);
    rcluster_string_free(json);
    rcluster_string_free(NULL);
    CHECK(ok, "the status object has every worker ready");
    CHECK(rcluster_supervisor_status_json(sup, NULL) == RCLUSTER_RESULT_NULL_ARGUMENT, "NULL out");
    return 0;
}

static int control_settings_are_checked_when_set(void) {
    rcluster_config *cfg = base_config(1);
    CHECK(cfg, "config");
    CHECK_RC(rcluster_config_set_name(cfg, "c-cluster"));
    CHECK_RC(rcluster_config_set_control(cfg, RCLUSTER_CONTROL_ON));
    rcluster_result bad = rcluster_config_set_control(cfg, 7);
    int named = strstr(rcluster_last_error(), "control") != NULL;
    rcluster_result null_name = rcluster_config_set_name(cfg, NULL);
    rcluster_config_free(cfg);
    CHECK(bad == RCLUSTER_RESULT_INVALID_ARGUMENT && named, "control 7: %u", bad);
    CHECK(null_name == RCLUSTER_RESULT_NULL_ARGUMENT, "NULL name: %u", null_name);
    return 0;
}

static int crashed_worker_is_restarted_and_serves_again(void) {
    rcluster_worker_info before;
    CHECK(worker_info(1, &before) == 0, "worker 1 in the snapshot");
    CHECK(kill((pid_t)before.pid, SIGKILL) == 0, "kill %u", before.pid);
    rcluster_event *ev = wait_event(sup, RCLUSTER_EVENT_KIND_EXIT, 1, WAIT_S);
    CHECK(ev, "no exit event for worker 1");
    int ok = ev->pid == before.pid && ev->exit_signal == SIGKILL && ev->exit_code == -1 &&
             ev->exit_reason == RCLUSTER_EXIT_REASON_CRASHED && ev->data == NULL && ev->len == 0 &&
             ev->text == NULL;
    fprintf(stderr, "  exit: pid %u signal %d code %d reason %s\n", ev->pid, ev->exit_signal,
            ev->exit_code, rcluster_exit_reason_text(ev->exit_reason));
    rcluster_event_free(ev);
    CHECK(ok, "exit event describes the kill");
    ev = wait_event(sup, RCLUSTER_EVENT_KIND_READY, 1, WAIT_S);
    CHECK(ev, "worker 1 not ready again");
    CHECK(ev->pid != before.pid, "same pid %u", ev->pid);
    rcluster_event_free(ev);
    int seen1 = 0;
    char buf[1024];
    for (int i = 0; i < 2 * WORKERS; i++) seen1 += http_get(port, buf, sizeof buf) == 1;
    CHECK(seen1 == 2, "the restarted worker served %d of 2", seen1);
    return 0;
}

static int message_to_one_worker_is_answered_by_it(void) {
    CHECK_RC(rcluster_supervisor_send(sup, 2, (const uint8_t *)"ping", 4));
    rcluster_event *ev = wait_event(sup, RCLUSTER_EVENT_KIND_MESSAGE, -1, WAIT_S);
    CHECK(ev, "no answer");
    int ok = ev->worker_id == 2 && ev->len == 6 && memcmp(ev->data, "2:ping", 6) == 0;
    rcluster_event_free(ev);
    CHECK(ok, "answer from worker 2 with 2:ping");
    CHECK(rcluster_supervisor_send(sup, 99, (const uint8_t *)"x", 1) == RCLUSTER_RESULT_NO_SUCH_WORKER,
          "worker 99");
    CHECK(strstr(rcluster_last_error(), "99") != NULL, "message names the id");
    return 0;
}

static int broadcast_reaches_every_worker(void) {
    size_t count = 0;
    CHECK_RC(rcluster_supervisor_broadcast(sup, (const uint8_t *)"all", 3, &count));
    CHECK(count == WORKERS, "queued for %zu", count);
    int from[WORKERS] = {0};
    for (int i = 0; i < WORKERS; i++) {
        rcluster_event *ev = wait_event(sup, RCLUSTER_EVENT_KIND_MESSAGE, -1, WAIT_S);
        CHECK(ev, "answer %d of %d", i, WORKERS);
        if (ev->worker_id < WORKERS) from[ev->worker_id]++;
        rcluster_event_free(ev);
    }
    for (int i = 0; i < WORKERS; i++) CHECK(from[i] == 1, "worker %d answered %d times", i, from[i]);
    return 0;
}

static int event_fd_is_readable_when_an_event_waits(void) {
    int fd = -1;
    CHECK_RC(rcluster_supervisor_event_fd(sup, &fd));
    rcluster_event *ev = NULL;
    while (rcluster_supervisor_try_next_event(sup, &ev) == RCLUSTER_RESULT_OK) rcluster_event_free(ev);
    CHECK(rcluster_supervisor_try_next_event(sup, &ev) == RCLUSTER_RESULT_TIMEOUT, "queue empty");
    CHECK_RC(rcluster_supervisor_send(sup, 0, (const uint8_t *)"fd", 2));
    struct pollfd p = {.fd = fd, .events = POLLIN};
    CHECK(poll(&p, 1, 20000) == 1, "event fd readable");
    double until = now_s() + WAIT_S;
    rcluster_result rc;
    while ((rc = rcluster_supervisor_try_next_event(sup, &ev)) == RCLUSTER_RESULT_TIMEOUT && now_s() < until)
        poll(&p, 1, 100);
    CHECK(rc == RCLUSTER_RESULT_OK, "try_next_event: %s", rcluster_result_text(rc));
    int ok = ev->kind == RCLUSTER_EVENT_KIND_MESSAGE && ev->len == 4 && memcmp(ev->data, "0:fd", 4) == 0;
    rcluster_event_free(ev);
    CHECK(ok, "the answer of worker 0");
    return 0;
}

static int restart_worker_replaces_one_process(void) {
    rcluster_worker_info before, after;
    CHECK(worker_info(0, &before) == 0, "worker 0");
    CHECK_RC(rcluster_supervisor_restart_worker(sup, 0));
    rcluster_event *ev = wait_event(sup, RCLUSTER_EVENT_KIND_EXIT, 0, WAIT_S);
    CHECK(ev, "exit of worker 0");
    int ok = ev->exit_reason == RCLUSTER_EXIT_REASON_REQUESTED && ev->exit_code == 0;
    rcluster_event_free(ev);
    CHECK(ok, "requested exit with code 0");
    ev = wait_event(sup, RCLUSTER_EVENT_KIND_READY, 0, WAIT_S);
    CHECK(ev, "worker 0 ready again");
    rcluster_event_free(ev);
    CHECK(worker_info(0, &after) == 0 && after.pid != before.pid, "new pid");
    return 0;
}

static int killed_worker_exits_by_that_signal_with_reason_requested(void) {
    CHECK(rcluster_supervisor_kill(sup, 99, SIGTERM) == RCLUSTER_RESULT_NO_SUCH_WORKER, "unknown id");
    CHECK(rcluster_supervisor_kill(sup, 1, 0) == RCLUSTER_RESULT_INVALID_ARGUMENT, "signal 0");
    CHECK_RC(rcluster_supervisor_kill(sup, 1, SIGKILL));
    rcluster_event *ev = wait_event(sup, RCLUSTER_EVENT_KIND_EXIT, 1, WAIT_S);
    CHECK(ev, "exit of worker 1");
    int ok = ev->exit_reason == RCLUSTER_EXIT_REASON_REQUESTED && ev->exit_signal == SIGKILL;
    rcluster_event_free(ev);
    CHECK(ok, "requested exit by SIGKILL");
    ev = wait_event(sup, RCLUSTER_EVENT_KIND_READY, 1, WAIT_S);
    CHECK(ev, "worker 1 ready again");
    rcluster_event_free(ev);
    return 0;
}

static int reload_replaces_every_worker_and_keeps_serving(void) {
    uint32_t gen = 0;
    CHECK_RC(rcluster_supervisor_reload(sup, &gen));
    CHECK(gen == 2, "generation %u", gen);
    rcluster_event *ev = wait_event(sup, RCLUSTER_EVENT_KIND_RELOAD_DONE, -1, 3 * WAIT_S);
    CHECK(ev, "reload done");
    CHECK(ev->generation == 2, "done generation %u", ev->generation);
    rcluster_event_free(ev);
    for (uint32_t id = 0; id < WORKERS; id++) {
        rcluster_worker_info w;
        CHECK(worker_info(id, &w) == 0 && w.generation == 2, "worker %u generation", id);
    }
    char buf[1024];
    for (int i = 0; i < WORKERS; i++) CHECK(http_get(port, buf, sizeof buf) >= 0, "after reload: %s", buf);
    return 0;
}

static int scale_changes_the_number_of_workers(void) {
    CHECK_RC(rcluster_supervisor_scale(sup, 2));
    rcluster_event *ev = wait_event(sup, RCLUSTER_EVENT_KIND_SCALED, -1, WAIT_S);
    CHECK(ev && ev->workers == 2, "scaled to 2");
    rcluster_event_free(ev);
    ev = wait_event(sup, RCLUSTER_EVENT_KIND_EXIT, 2, WAIT_S);
    CHECK(ev, "worker 2 stopped");
    rcluster_event_free(ev);
    char buf[1024];
    for (int i = 0; i < 4; i++) {
        int id = http_get(port, buf, sizeof buf);
        CHECK(id == 0 || id == 1, "served by %d", id);
    }
    return 0;
}

static int stop_reaps_every_worker_and_ends_the_event_stream(void) {
    CHECK_RC(rcluster_supervisor_stop(sup, 10000));
    int exits = 0, clean = 0;
    rcluster_event *ev = NULL;
    rcluster_result rc;
    for (int i = 0; i < 1000; i++) {
        rc = rcluster_supervisor_next_event(sup, 1000, &ev);
        if (rc != RCLUSTER_RESULT_OK) break;
        if (ev->kind == RCLUSTER_EVENT_KIND_EXIT) {
            exits++;
            /* Workers exit 0 when asked to leave: under valgrind, 0 also means no errors. */
            clean += ev->exit_code == 0;
            if (ev->exit_code != 0)
                fprintf(stderr, "  worker %u exited with code %d signal %d\n", ev->worker_id,
                        ev->exit_code, ev->exit_signal);
        }
        rcluster_event_free(ev);
    }
    CHECK(rc == RCLUSTER_RESULT_STOPPED, "end of stream: %s", rcluster_result_text(rc));
    CHECK(exits == 2 && clean == 2, "%d exits, %d clean", exits, clean);
    CHECK(rcluster_supervisor_send(sup, 0, (const uint8_t *)"x", 1) == RCLUSTER_RESULT_STOPPED, "send");
    CHECK(rcluster_supervisor_reload(sup, NULL) == RCLUSTER_RESULT_STOPPED, "reload");
    rcluster_supervisor_free(sup);
    sup = NULL;
    return 0;
}

static int address_in_use_fails_start_naming_the_address(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    CHECK(bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(fd, 1) == 0 &&
              getsockname(fd, (struct sockaddr *)&sa, &len) == 0, "bind a port");
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%u", ntohs(sa.sin_port));
    rcluster_config *cfg = base_config(1);
    CHECK(cfg, "config");
    rcluster_config_add_listener(cfg, "web", addr, RCLUSTER_DISPATCH_ROUND_ROBIN);
    rcluster_supervisor *s = (rcluster_supervisor *)&fd; /* must stay untouched on failure */
    rcluster_result rc = rcluster_supervisor_start(cfg, &s);
    rcluster_config_free(cfg);
    close(fd);
    CHECK(rc == RCLUSTER_RESULT_BIND, "start: %s", rcluster_result_text(rc));
    CHECK(s == (rcluster_supervisor *)&fd, "out-parameter written on failure");
    CHECK(strstr(rcluster_last_error(), addr) != NULL, "message names %s", addr);
    return 0;
}

/* One HTTP GET of `path` on 127.0.0.1:port; the response goes to `out`. Returns the status
 * code, or -1. */
static int http_status(uint16_t p, const char *path, char *out, size_t cap) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct timeval tv = {20, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(p)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    char req[256];
    int len = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", path);
    size_t got = 0;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0 && write(fd, req, (size_t)len) == len) {
        for (int i = 0; i < 1000 && got < cap - 1; i++) {
            ssize_t n = read(fd, out + got, cap - 1 - got);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) break;
            got += (size_t)n;
        }
    }
    out[got] = '\0';
    close(fd);
    return strncmp(out, "HTTP/1.1 ", 9) == 0 ? atoi(out + 9) : -1;
}

static int metrics_and_readiness_serve_metrics_and_readyz_over_http(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    CHECK(bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
              getsockname(fd, (struct sockaddr *)&sa, &len) == 0, "find a free port");
    close(fd);
    uint16_t mport = ntohs(sa.sin_port);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%u", mport);
    rcluster_config *cfg = base_config(1);
    CHECK(cfg, "config");
    CHECK_RC(rcluster_config_set_metrics(cfg, addr));
    CHECK_RC(rcluster_config_set_readiness(cfg, 2, 100));
    rcluster_supervisor *s = NULL;
    rcluster_result rc = rcluster_supervisor_start(cfg, &s);
    rcluster_config_free(cfg);
    CHECK(rc == RCLUSTER_RESULT_OK, "start: %s", rcluster_result_text(rc));
    static char buf[1 << 16];
    int ok = wait_ready(s, 1, WAIT_S) == 1;
    int metrics = ok ? http_status(mport, "/metrics", buf, sizeof buf) : -1;
    int has_ready = strstr(buf, "\nrcluster_workers{state=\"ready\"} 1\n") != NULL;
    int healthz = http_status(mport, "/healthz", buf, sizeof buf);
    /* ready_min 2, one worker ready: not ready yet. */
    int before = http_status(mport, "/readyz", buf, sizeof buf);
    int scaled = rcluster_supervisor_scale(s, 2) == RCLUSTER_RESULT_OK && wait_ready(s, 1, WAIT_S) == 1;
    int after = http_status(mport, "/readyz", buf, sizeof buf);
    rcluster_supervisor_stop(s, 5000);
    rcluster_supervisor_free(s);
    CHECK(ok, "worker not ready");
    CHECK(metrics == 200 && has_ready, "/metrics: %d", metrics);
    CHECK(healthz == 200, "/healthz: %d", healthz);
    CHECK(before == 503, "/readyz with 1 of ready_min 2: %d", before);
    CHECK(scaled && after == 200, "/readyz with 2 ready: %d", after);
    return 0;
}

static int bad_metrics_and_readiness_values_are_refused_naming_them(void) {
    rcluster_config *cfg = base_config(1);
    CHECK(cfg, "config");
    rcluster_result bad_addr = rcluster_config_set_metrics(cfg, "nowhere");
    int addr_named = strstr(rcluster_last_error(), "metrics") != NULL;
    rcluster_result bad_min = rcluster_config_set_readiness(cfg, 0, 0);
    int min_named = strstr(rcluster_last_error(), "ready_min") != NULL;
    rcluster_result bad_delay = rcluster_config_set_readiness(cfg, 1, UINT64_MAX);
    int delay_named = strstr(rcluster_last_error(), "drain_delay_ms") != NULL;
    rcluster_result off = rcluster_config_set_metrics(cfg, NULL);
    rcluster_config_free(cfg);
    CHECK(bad_addr == RCLUSTER_RESULT_CONFIG && addr_named, "metrics \"nowhere\": %u", bad_addr);
    CHECK(bad_min == RCLUSTER_RESULT_INVALID_ARGUMENT && min_named, "ready_min 0: %u", bad_min);
    CHECK(bad_delay == RCLUSTER_RESULT_INVALID_ARGUMENT && delay_named, "drain_delay_ms: %u", bad_delay);
    CHECK(off == RCLUSTER_RESULT_OK, "metrics NULL: %u", off);
    return 0;
}

struct seen {
    pthread_mutex_t lock;
    int ready;
    int foreign_thread;
    pthread_t main;
};

static void on_event(void *userdata, const rcluster_event *ev) {
    struct seen *s = userdata;
    pthread_mutex_lock(&s->lock);
    if (ev->kind == RCLUSTER_EVENT_KIND_READY) s->ready++;
    if (!pthread_equal(pthread_self(), s->main)) s->foreign_thread = 1;
    pthread_mutex_unlock(&s->lock);
}

static int callback_receives_events_on_a_library_thread(void) {
    rcluster_config *cfg = base_config(2);
    CHECK(cfg, "config");
    rcluster_supervisor *s = NULL;
    rcluster_result rc = rcluster_supervisor_start(cfg, &s);
    rcluster_config_free(cfg);
    CHECK(rc == RCLUSTER_RESULT_OK, "start");
    struct seen seen = {.lock = PTHREAD_MUTEX_INITIALIZER, .main = pthread_self()};
    CHECK_RC(rcluster_supervisor_set_callback(s, on_event, &seen));
    CHECK(rcluster_supervisor_set_callback(s, on_event, &seen) == RCLUSTER_RESULT_INVALID_STATE, "twice");
    rcluster_event *ev = NULL;
    CHECK(rcluster_supervisor_next_event(s, 0, &ev) == RCLUSTER_RESULT_INVALID_STATE, "next_event");
    int ready = 0;
    for (int i = 0; i < 3000 && ready < 2; i++) {
        usleep(10000);
        pthread_mutex_lock(&seen.lock);
        ready = seen.ready;
        pthread_mutex_unlock(&seen.lock);
    }
    rcluster_supervisor_free(s); /* stops, and waits for the callback thread */
    CHECK(ready == 2 && seen.foreign_thread, "ready %d, on another thread %d", ready, seen.foreign_thread);
    return 0;
}

static int signal_helper_maps_sigttin_to_scale_up(void) {
    /* Blocked in this thread only; pthread_kill makes the signal pending on this thread, so no
     * other thread (which does not block it) can take it. */
    rcluster_signals *sigs = NULL;
    CHECK_RC(rcluster_signals_new(&sigs));
    rcluster_config *cfg = base_config(1);
    CHECK(cfg, "config");
    rcluster_supervisor *s = NULL;
    rcluster_result rc = rcluster_supervisor_start(cfg, &s);
    rcluster_config_free(cfg);
    CHECK(rc == RCLUSTER_RESULT_OK, "start");
    int sig = 0;
    CHECK(rcluster_signals_handle(sigs, s, &sig) == RCLUSTER_RESULT_TIMEOUT, "nothing pending");
    CHECK(pthread_kill(pthread_self(), SIGTTIN) == 0, "raise");
    CHECK_RC(rcluster_signals_handle(sigs, s, &sig));
    CHECK(sig == SIGTTIN, "signal %d", sig);
    rcluster_event *ev = wait_event(s, RCLUSTER_EVENT_KIND_SCALED, -1, WAIT_S);
    CHECK(ev && ev->workers == 2, "scaled to 2");
    rcluster_event_free(ev);
    CHECK(pthread_kill(pthread_self(), SIGTERM) == 0, "raise");
    CHECK_RC(rcluster_signals_handle(sigs, s, &sig));
    rcluster_result end = RCLUSTER_RESULT_OK;
    for (int i = 0; i < 1000 && end != RCLUSTER_RESULT_STOPPED; i++) {
        end = rcluster_supervisor_next_event(s, 1000, &ev);
        if (end == RCLUSTER_RESULT_OK) rcluster_event_free(ev);
    }
    CHECK(end == RCLUSTER_RESULT_STOPPED, "SIGTERM stopped the cluster");
    rcluster_supervisor_free(s);
    rcluster_signals_free(sigs);
    return 0;
}

int main(int argc, char **argv) {
    int i = 1;
    while (i < argc && strcmp(argv[i], "--") != 0) i++;
    if (i + 1 >= argc) {
        fprintf(stderr, "usage: test_cluster -- WORKER_ARGV...\n");
        return 2;
    }
    worker_argv = (const char *const *)&argv[i + 1];
    worker_argc = (size_t)(argc - i - 1);
    RUN(version_function_matches_the_header_macros);
    RUN(cluster_starts_and_every_worker_becomes_ready);
    if (sup) {
        RUN(requests_are_served_round_robin_by_every_worker);
        RUN(snapshot_lists_every_worker_ready);
        RUN(status_json_names_every_worker_with_its_usage);
        RUN(crashed_worker_is_restarted_and_serves_again);
        RUN(message_to_one_worker_is_answered_by_it);
        RUN(broadcast_reaches_every_worker);
        RUN(event_fd_is_readable_when_an_event_waits);
        RUN(restart_worker_replaces_one_process);
        RUN(killed_worker_exits_by_that_signal_with_reason_requested);
        RUN(reload_replaces_every_worker_and_keeps_serving);
        RUN(scale_changes_the_number_of_workers);
        RUN(stop_reaps_every_worker_and_ends_the_event_stream);
        rcluster_supervisor_free(sup);
    }
    RUN(address_in_use_fails_start_naming_the_address);
    RUN(control_settings_are_checked_when_set);
    RUN(metrics_and_readiness_serve_metrics_and_readyz_over_http);
    RUN(bad_metrics_and_readiness_values_are_refused_naming_them);
    RUN(callback_receives_events_on_a_library_thread);
    RUN(signal_helper_maps_sigttin_to_scale_up);
    return finish("test_cluster");
}

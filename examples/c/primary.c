/*
 * A complete rcluster primary in C: N workers behind one HTTP listener, events printed as
 * they come, signals handled the way the `rcluster` command handles them (SIGINT/SIGTERM
 * stop, twice kills; SIGHUP reloads; SIGTTIN/SIGTTOU add or remove a worker).
 *
 * Usage: primary [-w WORKERS] [-l ADDR] -- PROGRAM [ARGS...]
 *        primary -w 2 -l 127.0.0.1:8080 -- ./worker
 * It prints "listening on ADDR" once bound (port 0 picks a free port) and exits 0 after a stop.
 */
#define _GNU_SOURCE
#include <rcluster.h>

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int fail(const char *what) {
    fprintf(stderr, "primary: %s: %s\n", what, rcluster_last_error());
    return 1;
}

static void print_event(const rcluster_event *ev) {
    switch (ev->kind) {
    case RCLUSTER_EVENT_KIND_SPAWNED:
        printf("worker %u: spawned pid %u (generation %u)\n", ev->worker_id, ev->pid, ev->generation);
        break;
    case RCLUSTER_EVENT_KIND_READY:
        printf("worker %u: ready\n", ev->worker_id);
        break;
    case RCLUSTER_EVENT_KIND_MESSAGE:
        printf("worker %u: message %.*s\n", ev->worker_id, (int)ev->len, (const char *)ev->data);
        break;
    case RCLUSTER_EVENT_KIND_EXIT:
        printf("worker %u: exited (pid %u, code %d, signal %d, %s)\n", ev->worker_id, ev->pid,
               ev->exit_code, ev->exit_signal, rcluster_exit_reason_text(ev->exit_reason));
        break;
    case RCLUSTER_EVENT_KIND_RESTARTING:
        printf("worker %u: restarting in %llu ms\n", ev->worker_id, (unsigned long long)ev->delay_ms);
        break;
    case RCLUSTER_EVENT_KIND_RELOAD_DONE:
        printf("reload to generation %u done\n", ev->generation);
        break;
    case RCLUSTER_EVENT_KIND_RELOAD_FAILED:
        printf("reload to generation %u failed: %s\n", ev->generation, ev->text);
        break;
    case RCLUSTER_EVENT_KIND_SCALED:
        printf("scaled to %zu workers\n", ev->workers);
        break;
    case RCLUSTER_EVENT_KIND_SPAWN_FAILED:
    case RCLUSTER_EVENT_KIND_PROTOCOL_ERROR:
    case RCLUSTER_EVENT_KIND_ACCEPT_PAUSED:
        printf("worker %u: %s\n", ev->worker_id, ev->text);
        break;
    case RCLUSTER_EVENT_KIND_OUTPUT_DROPPED:
        printf("worker %u: output dropped: %llu lines\n", ev->worker_id, (unsigned long long)ev->lines);
        break;
    case RCLUSTER_EVENT_KIND_WARNING:
        printf("warning: %s\n", ev->text);
        break;
    default:
        break;
    }
    fflush(stdout);
}

int main(int argc, char **argv) {
    size_t workers = 2;
    const char *addr = "127.0.0.1:8080";
    int i = 1;
    for (; i < argc && strcmp(argv[i], "--") != 0; i++) {
        if (strcmp(argv[i], "-w") == 0 && i + 1 < argc) workers = (size_t)strtoul(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "-l") == 0 && i + 1 < argc) addr = argv[++i];
        else break;
    }
    if (i >= argc - 1 || strcmp(argv[i], "--") != 0) {
        fprintf(stderr, "usage: primary [-w WORKERS] [-l ADDR] -- PROGRAM [ARGS...]\n");
        return 2;
    }
    /* First, before any thread exists (the supervisor starts one): see rcluster_signals_new. */
    rcluster_signals *sigs = NULL;
    if (rcluster_signals_new(&sigs)) return fail("signals");

    rcluster_config *cfg = NULL;
    if (rcluster_config_new(&cfg)) return fail("config");
    const char *const *prog = (const char *const *)&argv[i + 1];
    if (rcluster_config_set_argv(cfg, prog, (size_t)(argc - i - 1)) ||
        rcluster_config_set_workers(cfg, workers) ||
        rcluster_config_set_ready_on(cfg, RCLUSTER_READY_ON_EXPLICIT) ||
        rcluster_config_set_timeouts(cfg, 10000, 5000, 3000) ||
        rcluster_config_add_listener(cfg, "web", addr, RCLUSTER_DISPATCH_ROUND_ROBIN)) {
        rcluster_config_free(cfg);
        return fail("config");
    }
    rcluster_supervisor *sup = NULL;
    rcluster_result rc = rcluster_supervisor_start(cfg, &sup);
    rcluster_config_free(cfg); /* the supervisor keeps its own copy */
    if (rc) return fail("start");

    const char *bound = NULL;
    rcluster_supervisor_listener(sup, "web", &bound, NULL);
    printf("listening on %s\n", bound);
    fflush(stdout);

    struct pollfd fds[2] = {{.events = POLLIN}, {.events = POLLIN}};
    rcluster_signals_fd(sigs, &fds[0].fd);
    rcluster_supervisor_event_fd(sup, &fds[1].fd);
    for (int running = 1; running;) {
        if (poll(fds, 2, -1) < 0 && errno != EINTR) break;
        int sig = 0;
        while ((rc = rcluster_signals_handle(sigs, sup, &sig)) != RCLUSTER_RESULT_TIMEOUT) {
            if (rc) printf("%s\n", rcluster_last_error());
            else printf("signal %d handled\n", sig);
        }
        rcluster_event *ev = NULL;
        while ((rc = rcluster_supervisor_try_next_event(sup, &ev)) == RCLUSTER_RESULT_OK) {
            print_event(ev);
            /* Every slot gave up: nothing will serve again, so end like a stop would. */
            int all_down = ev->kind == RCLUSTER_EVENT_KIND_ALL_DOWN;
            rcluster_event_free(ev);
            if (all_down) rcluster_supervisor_stop(sup, 0);
        }
        /* STOPPED: the supervisor has stopped and every event was read. */
        if (rc == RCLUSTER_RESULT_STOPPED) running = 0;
    }
    rcluster_supervisor_free(sup);
    rcluster_signals_free(sigs);
    printf("stopped\n");
    return 0;
}

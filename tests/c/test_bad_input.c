/*
 * Bad input to every export: NULL for each pointer parameter, strings that are not UTF-8,
 * bad addresses, out-of-range numbers. Each must give its result code and a message that
 * names the argument, leave out-parameters untouched, and never crash.
 *
 * The worker-side checks need a real link to a primary, so this program also runs as its own
 * worker (`test_bad_input --as-worker`, started by the supervisor of worker_side_rejects_...)
 * and reports what it found in a message.
 */
#include "harness.h"

#include <signal.h>

#define EXPECT(expr, code, needle)                                                           \
    do {                                                                                     \
        rcluster_result got_ = (expr);                                                       \
        CHECK(got_ == (code), "%s returned %u (%s), expected %s", #expr, got_,              \
              rcluster_result_text(got_), #code);                                            \
        CHECK(strstr(rcluster_last_error(), (needle)) != NULL, "%s: message %s lacks %s",    \
              #expr, rcluster_last_error(), needle);                                          \
    } while (0)
#define NUL_ARG(expr, name) EXPECT(expr, RCLUSTER_RESULT_NULL_ARGUMENT, "`" name "`")

static const char *self_path;

static int result_codes_have_texts_and_unknown_codes_too(void) {
    CHECK(strcmp(rcluster_result_text(RCLUSTER_RESULT_OK), "ok") == 0, "ok");
    for (uint32_t c = 1; c <= RCLUSTER_RESULT_DEFERRED; c++)
        CHECK(strcmp(rcluster_result_text(c), "unknown result code") != 0, "code %u", c);
    CHECK(strcmp(rcluster_result_text(4242), "unknown result code") == 0, "4242");
    CHECK(strcmp(rcluster_exit_reason_text(RCLUSTER_EXIT_REASON_CRASHED), "crashed") == 0, "reason");
    CHECK(strcmp(rcluster_exit_reason_text(RCLUSTER_EXIT_REASON_MAX_REQUESTS), "max_requests") == 0,
          "reason max_requests");
    CHECK(strcmp(rcluster_exit_reason_text(999), "unknown") == 0, "reason 999");
    return 0;
}

static int free_functions_accept_null(void) {
    rcluster_config_free(NULL);
    rcluster_supervisor_free(NULL);
    rcluster_event_free(NULL);
    rcluster_snapshot_free(NULL);
    rcluster_signals_free(NULL);
    rcluster_worker_free(NULL);
    rcluster_worker_event_free(NULL);
    rcluster_acceptor_free(NULL);
    return 0;
}

static int acceptor_functions_reject_null_pointers(void) {
    rcluster_acceptor *a = NULL;
    int fd = -1;
    NUL_ARG(rcluster_acceptor_new(NULL, "web", 3, &a), "w");
    NUL_ARG(rcluster_acceptor_next(NULL, &fd), "a");
    NUL_ARG(rcluster_acceptor_fd(NULL, &fd), "a");
    CHECK(a == NULL && fd == -1, "out-parameters untouched");
    return 0;
}

static int config_functions_reject_null_pointers(void) {
    NUL_ARG(rcluster_config_new(NULL), "out");
    NUL_ARG(rcluster_config_set_workers(NULL, 1), "cfg");
    const char *argv[] = {"/bin/sleep", NULL};
    NUL_ARG(rcluster_config_set_argv(NULL, argv, 1), "cfg");
    NUL_ARG(rcluster_config_add_env(NULL, "A", "B"), "cfg");
    NUL_ARG(rcluster_config_set_cwd(NULL, "/"), "cfg");
    NUL_ARG(rcluster_config_set_ready_on(NULL, RCLUSTER_READY_ON_HELLO), "cfg");
    NUL_ARG(rcluster_config_set_timeouts(NULL, 1, 0, 1), "cfg");
    NUL_ARG(rcluster_config_set_restart(NULL, RCLUSTER_RESTART_NEVER), "cfg");
    NUL_ARG(rcluster_config_set_backoff(NULL, 0, 1.0, 0, 0.0, 0), "cfg");
    NUL_ARG(rcluster_config_set_restart_limit(NULL, 1, 1), "cfg");
    NUL_ARG(rcluster_config_add_no_restart_code(NULL, 3), "cfg");
    NUL_ARG(rcluster_config_set_message_limits(NULL, 16, 64), "cfg");
    NUL_ARG(rcluster_config_set_output(NULL, RCLUSTER_OUTPUT_PREFIX), "cfg");
    NUL_ARG(rcluster_config_add_listener(NULL, "web", ":0", RCLUSTER_DISPATCH_ROUND_ROBIN), "cfg");
    NUL_ARG(rcluster_config_set_dispatch_limits(NULL, 0, 1, 1, 1), "cfg");
    NUL_ARG(rcluster_config_set_max_surge(NULL, 1), "cfg");
    NUL_ARG(rcluster_config_set_recycling(NULL, 0, 0, 0), "cfg");

    rcluster_config *cfg = NULL;
    CHECK_RC(rcluster_config_new(&cfg));
    NUL_ARG(rcluster_config_set_argv(cfg, NULL, 1), "argv");
    NUL_ARG(rcluster_config_set_argv(cfg, argv + 1, 1), "argv[0]");
    NUL_ARG(rcluster_config_add_env(cfg, NULL, "B"), "name");
    NUL_ARG(rcluster_config_add_env(cfg, "A", NULL), "value");
    NUL_ARG(rcluster_config_set_cwd(cfg, NULL), "dir");
    NUL_ARG(rcluster_config_add_listener(cfg, "web", NULL, RCLUSTER_DISPATCH_ROUND_ROBIN), "addr");
    NUL_ARG(rcluster_supervisor_start(NULL, NULL), "cfg");
    NUL_ARG(rcluster_supervisor_start(cfg, NULL), "out");
    rcluster_config_free(cfg);
    return 0;
}

static int config_functions_reject_out_of_range_numbers(void) {
    rcluster_config *cfg = NULL;
    CHECK_RC(rcluster_config_new(&cfg));
    const char *argv[] = {"/bin/sleep", "60"};
    EXPECT(rcluster_config_set_workers(cfg, 0), RCLUSTER_RESULT_INVALID_ARGUMENT, "workers");
    EXPECT(rcluster_config_set_workers(cfg, 5000), RCLUSTER_RESULT_INVALID_ARGUMENT, "5000");
    EXPECT(rcluster_config_set_argv(cfg, argv, 0), RCLUSTER_RESULT_INVALID_ARGUMENT, "argc");
    EXPECT(rcluster_config_add_env(cfg, "A=B", "x"), RCLUSTER_RESULT_INVALID_ARGUMENT, "'='");
    EXPECT(rcluster_config_add_env(cfg, "", "x"), RCLUSTER_RESULT_INVALID_ARGUMENT, "name");
    EXPECT(rcluster_config_set_ready_on(cfg, 7), RCLUSTER_RESULT_INVALID_ARGUMENT, "ready_on");
    EXPECT(rcluster_config_set_timeouts(cfg, 0, 0, 1), RCLUSTER_RESULT_INVALID_ARGUMENT, "ready_ms");
    EXPECT(rcluster_config_set_timeouts(cfg, 1, UINT64_MAX, 1), RCLUSTER_RESULT_INVALID_ARGUMENT,
           "heartbeat_ms");
    EXPECT(rcluster_config_set_timeouts(cfg, 1, 0, 0), RCLUSTER_RESULT_INVALID_ARGUMENT, "kill_ms");
    EXPECT(rcluster_config_set_restart(cfg, 3), RCLUSTER_RESULT_INVALID_ARGUMENT, "mode");
    EXPECT(rcluster_config_set_backoff(cfg, 0, 0.5, 0, 0.0, 0), RCLUSTER_RESULT_INVALID_ARGUMENT,
           "multiplier");
    EXPECT(rcluster_config_set_backoff(cfg, 0, 1.0, 0, 2.0, 0), RCLUSTER_RESULT_INVALID_ARGUMENT, "jitter");
    EXPECT(rcluster_config_set_backoff(cfg, 10, 1.0, 5, 0.0, 0), RCLUSTER_RESULT_INVALID_ARGUMENT, "max_ms");
    EXPECT(rcluster_config_set_restart_limit(cfg, 1, 0), RCLUSTER_RESULT_INVALID_ARGUMENT, "window_ms");
    EXPECT(rcluster_config_add_no_restart_code(cfg, 256), RCLUSTER_RESULT_INVALID_ARGUMENT, "code");
    EXPECT(rcluster_config_set_message_limits(cfg, 0, 64), RCLUSTER_RESULT_INVALID_ARGUMENT, "max_message");
    EXPECT(rcluster_config_set_message_limits(cfg, 64, 10), RCLUSTER_RESULT_INVALID_ARGUMENT,
           "send_queue_limit");
    EXPECT(rcluster_config_set_event_queue_limit(cfg, 100), RCLUSTER_RESULT_INVALID_ARGUMENT,
           "event_queue_limit");
    EXPECT(rcluster_config_set_output(cfg, 2), RCLUSTER_RESULT_INVALID_ARGUMENT, "output");
    EXPECT(rcluster_config_add_listener(cfg, "web", ":0", 9), RCLUSTER_RESULT_INVALID_ARGUMENT, "dispatch");
    EXPECT(rcluster_config_set_dispatch_limits(cfg, 0, 0, 1, 1), RCLUSTER_RESULT_INVALID_ARGUMENT,
           "handoff_window");
    EXPECT(rcluster_config_set_dispatch_limits(cfg, 0, 1, 0, 1), RCLUSTER_RESULT_INVALID_ARGUMENT,
           "queue_limit");
    EXPECT(rcluster_config_set_dispatch_limits(cfg, 0, 1, 1, 0), RCLUSTER_RESULT_INVALID_ARGUMENT,
           "queue_timeout_ms");
    EXPECT(rcluster_config_set_max_surge(cfg, 0), RCLUSTER_RESULT_INVALID_ARGUMENT, "max_surge");
    EXPECT(rcluster_config_set_recycling(cfg, 0, 0, 5), RCLUSTER_RESULT_INVALID_ARGUMENT,
           "max_requests_jitter");
    CHECK_RC(rcluster_config_set_recycling(cfg, 512u << 20, 1000, 50));
    rcluster_config_free(cfg);
    return 0;
}

static int listener_names_and_addresses_are_checked(void) {
    rcluster_config *cfg = NULL;
    CHECK_RC(rcluster_config_new(&cfg));
    EXPECT(rcluster_config_add_listener(cfg, "w\xff\xfe", ":0", RCLUSTER_DISPATCH_ROUND_ROBIN),
           RCLUSTER_RESULT_INVALID_UTF8, "`name` is not valid UTF-8");
    EXPECT(rcluster_config_add_listener(cfg, "web", "127.0.0.1:\xc3", RCLUSTER_DISPATCH_ROUND_ROBIN),
           RCLUSTER_RESULT_INVALID_UTF8, "`addr`");
    EXPECT(rcluster_config_add_listener(cfg, "web", "localhost:http", RCLUSTER_DISPATCH_ROUND_ROBIN),
           RCLUSTER_RESULT_CONFIG, "localhost:http");
    EXPECT(rcluster_config_add_listener(cfg, "web", "127.0.0.1:99999", RCLUSTER_DISPATCH_ROUND_ROBIN),
           RCLUSTER_RESULT_CONFIG, "99999");
    EXPECT(rcluster_config_add_listener(cfg, "web", "unix:", RCLUSTER_DISPATCH_SHARED),
           RCLUSTER_RESULT_CONFIG, "unix:");
    EXPECT(rcluster_config_add_listener(cfg, "a:b", ":0", RCLUSTER_DISPATCH_ROUND_ROBIN),
           RCLUSTER_RESULT_CONFIG, "listeners.name");
    CHECK_RC(rcluster_config_add_listener(cfg, "web", "127.0.0.1:0", RCLUSTER_DISPATCH_STICKY));
    EXPECT(rcluster_config_add_listener(cfg, "web", "127.0.0.1:1", RCLUSTER_DISPATCH_STICKY),
           RCLUSTER_RESULT_CONFIG, "used by two listeners");
    rcluster_config_free(cfg);
    return 0;
}

static int start_rejects_a_bad_config_naming_the_field(void) {
    rcluster_config *cfg = NULL;
    CHECK_RC(rcluster_config_new(&cfg));
    rcluster_supervisor *s = NULL;
    EXPECT(rcluster_supervisor_start(cfg, &s), RCLUSTER_RESULT_CONFIG, "argv");
    const char *missing[] = {"no-such-program-rcluster-c-test"};
    CHECK_RC(rcluster_config_set_argv(cfg, missing, 1));
    EXPECT(rcluster_supervisor_start(cfg, &s), RCLUSTER_RESULT_CONFIG, "no-such-program-rcluster-c-test");
    /* argv and cwd are bytes, as execve takes them: not UTF-8 is allowed, a missing dir is not. */
    const char *argv[] = {"/bin/sleep", "\xff\xfe"};
    CHECK_RC(rcluster_config_set_argv(cfg, argv, 2));
    CHECK_RC(rcluster_config_set_cwd(cfg, "/no/such/dir/\xff"));
    EXPECT(rcluster_supervisor_start(cfg, &s), RCLUSTER_RESULT_CONFIG, "cwd");
    CHECK(s == NULL, "out-parameter written on failure");
    rcluster_config_free(cfg);
    return 0;
}

static void never_called(void *userdata, const rcluster_event *ev) {
    (void)userdata;
    (void)ev;
    abort();
}

static int supervisor_functions_reject_null_pointers(void) {
    rcluster_config *cfg = NULL;
    CHECK_RC(rcluster_config_new(&cfg));
    const char *argv[] = {"/bin/sleep", "60"};
    CHECK_RC(rcluster_config_set_argv(cfg, argv, 2));
    CHECK_RC(rcluster_config_set_ready_on(cfg, RCLUSTER_READY_ON_SPAWN));
    CHECK_RC(rcluster_config_add_listener(cfg, "web", "127.0.0.1:0", RCLUSTER_DISPATCH_ROUND_ROBIN));
    /* No name: the core's default for the second listener. */
    CHECK_RC(rcluster_config_add_listener(cfg, NULL, "127.0.0.2:0", RCLUSTER_DISPATCH_ROUND_ROBIN));
    rcluster_supervisor *s = NULL;
    CHECK_RC(rcluster_supervisor_start(cfg, &s));
    rcluster_config_free(cfg);
    const char *named = NULL;
    CHECK_RC(rcluster_supervisor_listener(s, "listen1", &named, NULL));

    const uint8_t b = 'x';
    NUL_ARG(rcluster_supervisor_stop(NULL, 0), "sup");
    NUL_ARG(rcluster_supervisor_send(NULL, 0, &b, 1), "sup");
    NUL_ARG(rcluster_supervisor_send(s, 0, NULL, 1), "data");
    NUL_ARG(rcluster_supervisor_broadcast(NULL, &b, 1, NULL), "sup");
    NUL_ARG(rcluster_supervisor_broadcast(s, NULL, 1, NULL), "data");
    NUL_ARG(rcluster_supervisor_send_as(NULL, 0, RCLUSTER_CONTENT_JSON, &b, 1), "sup");
    NUL_ARG(rcluster_supervisor_send_as(s, 0, RCLUSTER_CONTENT_JSON, NULL, 1), "data");
    NUL_ARG(rcluster_supervisor_broadcast_as(NULL, RCLUSTER_CONTENT_TEXT, &b, 1, NULL), "sup");
    NUL_ARG(rcluster_supervisor_next_event(NULL, 0, NULL), "sup");
    NUL_ARG(rcluster_supervisor_next_event(s, 0, NULL), "out");
    NUL_ARG(rcluster_supervisor_try_next_event(NULL, NULL), "sup");
    NUL_ARG(rcluster_supervisor_try_next_event(s, NULL), "out");
    NUL_ARG(rcluster_supervisor_event_fd(NULL, NULL), "sup");
    NUL_ARG(rcluster_supervisor_event_fd(s, NULL), "out_fd");
    NUL_ARG(rcluster_supervisor_set_callback(NULL, never_called, NULL), "sup");
    NUL_ARG(rcluster_supervisor_set_callback(s, NULL, NULL), "callback");
    NUL_ARG(rcluster_supervisor_snapshot(NULL, NULL), "sup");
    NUL_ARG(rcluster_supervisor_snapshot(s, NULL), "out");
    NUL_ARG(rcluster_supervisor_reload(NULL, NULL), "sup");
    NUL_ARG(rcluster_supervisor_scale(NULL, 1), "sup");
    NUL_ARG(rcluster_supervisor_restart_worker(NULL, 0), "sup");
    const char *addr = NULL;
    NUL_ARG(rcluster_supervisor_listener(NULL, "web", &addr, NULL), "sup");
    NUL_ARG(rcluster_supervisor_listener(s, NULL, &addr, NULL), "name");
    NUL_ARG(rcluster_supervisor_listener(s, "web", NULL, NULL), "out_addr");
    EXPECT(rcluster_supervisor_listener(s, "\xff", &addr, NULL), RCLUSTER_RESULT_INVALID_UTF8, "`name`");
    EXPECT(rcluster_supervisor_listener(s, "api", &addr, NULL), RCLUSTER_RESULT_INVALID_ARGUMENT, "api");
    CHECK(addr == NULL, "out-parameter written on failure");
    NUL_ARG(rcluster_snapshot_len(NULL, NULL), "snap");
    NUL_ARG(rcluster_snapshot_get(NULL, 0, NULL), "snap");
    rcluster_snapshot *snap = NULL;
    CHECK_RC(rcluster_supervisor_snapshot(s, &snap));
    NUL_ARG(rcluster_snapshot_len(snap, NULL), "out");
    NUL_ARG(rcluster_snapshot_get(snap, 0, NULL), "out");
    rcluster_snapshot_free(snap);

    /* Numbers out of range, and sizes beyond the limits. */
    EXPECT(rcluster_supervisor_scale(s, 0), RCLUSTER_RESULT_CONFIG, "workers");
    EXPECT(rcluster_supervisor_scale(s, 100000), RCLUSTER_RESULT_CONFIG, "100000");
    EXPECT(rcluster_supervisor_restart_worker(s, 77), RCLUSTER_RESULT_NO_SUCH_WORKER, "77");
    EXPECT(rcluster_supervisor_stop(s, UINT64_MAX), RCLUSTER_RESULT_INVALID_ARGUMENT, "timeout_ms");
    static uint8_t big[(16 << 20) + 1];
    EXPECT(rcluster_supervisor_send(s, 0, big, sizeof big), RCLUSTER_RESULT_MESSAGE_TOO_LARGE, "16777217");
    EXPECT(rcluster_supervisor_broadcast(s, big, sizeof big, NULL), RCLUSTER_RESULT_MESSAGE_TOO_LARGE,
           "limit");
    CHECK_RC(rcluster_supervisor_broadcast(s, NULL, 0, NULL)); /* an empty message is a message */
    EXPECT(rcluster_supervisor_send_as(s, 0, 6, &b, 1), RCLUSTER_RESULT_INVALID_ARGUMENT, "content_type");
    EXPECT(rcluster_supervisor_broadcast_as(s, 1u << 31, &b, 1, NULL), RCLUSTER_RESULT_INVALID_ARGUMENT,
           "content_type");
    EXPECT(rcluster_supervisor_send_as(s, 0, RCLUSTER_CONTENT_TEXT, big, sizeof big),
           RCLUSTER_RESULT_MESSAGE_TOO_LARGE, "16777217");

    NUL_ARG(rcluster_signals_new(NULL), "out");
    NUL_ARG(rcluster_signals_fd(NULL, NULL), "sigs");
    NUL_ARG(rcluster_signals_handle(NULL, s, NULL), "sigs");
    rcluster_signals *sigs = NULL;
    CHECK_RC(rcluster_signals_new(&sigs));
    NUL_ARG(rcluster_signals_fd(sigs, NULL), "out_fd");
    NUL_ARG(rcluster_signals_handle(sigs, NULL, NULL), "sup");
    rcluster_signals_free(sigs);

    NUL_ARG(rcluster_worker_from_env(NULL), "out");
    rcluster_worker *w = NULL;
    EXPECT(rcluster_worker_from_env(&w), RCLUSTER_RESULT_NOT_A_WORKER, "RCLUSTER_IPC_FD");
    CHECK(w == NULL, "out-parameter written on failure");
    NUL_ARG(rcluster_worker_identity(NULL, NULL, NULL), "w");
    NUL_ARG(rcluster_worker_ready(NULL), "w");
    NUL_ARG(rcluster_worker_heartbeat(NULL), "w");
    NUL_ARG(rcluster_worker_send(NULL, &b, 1), "w");
    NUL_ARG(rcluster_worker_send_as(NULL, RCLUSTER_CONTENT_RAW, &b, 1), "w");
    NUL_ARG(rcluster_worker_connection_closed(NULL, 1), "w");
    NUL_ARG(rcluster_worker_set_exit_on_primary_loss(NULL, false), "w");
    NUL_ARG(rcluster_worker_fd(NULL, NULL), "w");
    NUL_ARG(rcluster_worker_next_event(NULL, 0, NULL), "w");
    NUL_ARG(rcluster_worker_try_next_event(NULL, NULL), "w");

    CHECK_RC(rcluster_supervisor_stop(s, 0));
    rcluster_supervisor_free(s);
    return 0;
}

/* Run as a worker: the checks that need a live link. Returns NULL or what failed. */
static const char *worker_checks(rcluster_worker *w) {
    static char why[512];
    const uint8_t b = 'x';
#define W_EXPECT(expr, code, needle)                                                           \
    do {                                                                                       \
        rcluster_result got_ = (expr);                                                         \
        if (got_ != (code) || !strstr(rcluster_last_error(), needle)) {                        \
            snprintf(why, sizeof why, "%s -> %u: %s", #expr, got_, rcluster_last_error());     \
            return why;                                                                        \
        }                                                                                      \
    } while (0)
    W_EXPECT(rcluster_worker_send(w, NULL, 1), RCLUSTER_RESULT_NULL_ARGUMENT, "`data`");
    W_EXPECT(rcluster_worker_fd(w, NULL), RCLUSTER_RESULT_NULL_ARGUMENT, "`out_fd`");
    W_EXPECT(rcluster_worker_next_event(w, 0, NULL), RCLUSTER_RESULT_NULL_ARGUMENT, "`out`");
    W_EXPECT(rcluster_worker_try_next_event(w, NULL), RCLUSTER_RESULT_NULL_ARGUMENT, "`out`");
    static uint8_t big[(1 << 10) + 1];
    W_EXPECT(rcluster_worker_send(w, big, sizeof big), RCLUSTER_RESULT_MESSAGE_TOO_LARGE, "1025");
    (void)b;
    rcluster_worker_event *ev = NULL;
    if (rcluster_worker_try_next_event(w, &ev) != RCLUSTER_RESULT_TIMEOUT || ev != NULL)
        return "try_next_event with nothing waiting";
    if (rcluster_worker_identity(w, NULL, NULL) != RCLUSTER_RESULT_OK) return "identity with NULLs";
    if (rcluster_worker_connection_closed(w, 12345) != RCLUSTER_RESULT_OK) return "closed unknown id";

    rcluster_acceptor *a = NULL;
    W_EXPECT(rcluster_acceptor_new(w, NULL, 3, &a), RCLUSTER_RESULT_NULL_ARGUMENT, "`listener`");
    W_EXPECT(rcluster_acceptor_new(w, "web", 3, NULL), RCLUSTER_RESULT_NULL_ARGUMENT, "`out`");
    W_EXPECT(rcluster_acceptor_new(w, "web", -1, &a), RCLUSTER_RESULT_INVALID_ARGUMENT,
             "`inherited_fd`");
    if (a != NULL) return "acceptor_new wrote its out-parameter on failure";
    /* A listener the primary does not know: the acceptor takes the socket as it is. */
    int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (s < 0 || bind(s, (struct sockaddr *)&sa, sizeof sa) || listen(s, 8)) return "a socket";
    if (rcluster_acceptor_new(w, "nope", s, &a) != RCLUSTER_RESULT_OK) return "acceptor_new";
    int fd = -1;
    W_EXPECT(rcluster_acceptor_next(a, NULL), RCLUSTER_RESULT_NULL_ARGUMENT, "`out_fd`");
    W_EXPECT(rcluster_acceptor_fd(a, NULL), RCLUSTER_RESULT_NULL_ARGUMENT, "`out_fd`");
    if (rcluster_acceptor_next(a, &fd) != RCLUSTER_RESULT_TIMEOUT || fd != -1)
        return "acceptor_next with nothing waiting";
    if (rcluster_acceptor_fd(a, &fd) != RCLUSTER_RESULT_OK || fd != s) return "acceptor_fd";
    rcluster_acceptor_free(a); /* closes s */
    return NULL;
}

static int as_worker(void) {
    rcluster_worker *w = NULL;
    if (rcluster_worker_from_env(&w)) return 2;
    const char *why = worker_checks(w);
    const char *msg = why ? why : "ok";
    rcluster_worker_send(w, (const uint8_t *)msg, strlen(msg));
    rcluster_worker_event *ev = NULL;
    for (int i = 0; i < 60; i++) {
        if (rcluster_worker_next_event(w, 1000, &ev) == RCLUSTER_RESULT_OK) {
            int leave = ev->kind == RCLUSTER_WORKER_EVENT_KIND_DISCONNECT;
            rcluster_worker_event_free(ev);
            if (leave) break;
        }
    }
    rcluster_worker_free(w);
    return 0;
}

static int worker_functions_reject_null_and_oversized_input(void) {
    rcluster_config *cfg = NULL;
    CHECK_RC(rcluster_config_new(&cfg));
    const char *argv[] = {self_path, "--as-worker"};
    CHECK_RC(rcluster_config_set_argv(cfg, argv, 2));
    CHECK_RC(rcluster_config_set_message_limits(cfg, 1024, 1 << 20));
    CHECK_RC(rcluster_config_set_restart(cfg, RCLUSTER_RESTART_NEVER));
    rcluster_supervisor *s = NULL;
    CHECK_RC(rcluster_supervisor_start(cfg, &s));
    rcluster_config_free(cfg);
    rcluster_event *ev = wait_event(s, RCLUSTER_EVENT_KIND_MESSAGE, 0, 60.0);
    char report[600] = "no report from the worker";
    if (ev) snprintf(report, sizeof report, "%.*s", (int)ev->len, (const char *)ev->data);
    rcluster_event_free(ev);
    rcluster_supervisor_free(s);
    CHECK(strcmp(report, "ok") == 0, "worker side: %s", report);
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--as-worker") == 0) return as_worker();
    self_path = argv[0];
    RUN(result_codes_have_texts_and_unknown_codes_too);
    RUN(free_functions_accept_null);
    RUN(config_functions_reject_null_pointers);
    RUN(config_functions_reject_out_of_range_numbers);
    RUN(listener_names_and_addresses_are_checked);
    RUN(start_rejects_a_bad_config_naming_the_field);
    RUN(supervisor_functions_reject_null_pointers);
    RUN(acceptor_functions_reject_null_pointers);
    /* Under valgrind a primary cannot watch its children: valgrind 3.19 lacks pidfd_open
     * (syscall 434), so ffi/test.sh runs this one test outside valgrind only. */
    if (argc > 1 && strcmp(argv[1], "--no-children") == 0)
        printf("skip - worker_functions_reject_null_and_oversized_input (--no-children)\n");
    else
        RUN(worker_functions_reject_null_and_oversized_input);
    return finish("test_bad_input");
}

/*
 * A tiny HTTP worker for rcluster, in C: it serves the connections the primary accepts and
 * hands over (round-robin, least-connections or sticky dispatch), answers every user message
 * with "<worker id>:<message>", sends a heartbeat every second, and exits 0 when the primary
 * asks it to leave.
 *
 * One connection at a time, one request per connection (Connection: close): an example of the
 * API, not a web server. Answering every request with Connection: close is also what makes its
 * drain clean: a keep-alive client learns from the answer itself that the connection ends, so
 * a reload never closes a connection under a request the client has already sent. Run it
 * under a primary (examples/c/primary.c); alone it says why not.
 */
#define _GNU_SOURCE
#include <rcluster.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* A client that sends nothing must not hold the only thread of this worker for long. */
#define CLIENT_TIMEOUT_S 5

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* send(MSG_NOSIGNAL), not write(): a client that has gone away must cost one answer, not the
 * worker (SIGPIPE's default action ends the process, and wrk, for one, closes its connections
 * while answers are on their way). */
static int write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Reads one request head and answers it. The connection is closed either way. */
static void serve(int fd, uint32_t id) {
    struct timeval tv = {CLIENT_TIMEOUT_S, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    char req[8192];
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
        char body[128], head[256];
        int blen = snprintf(body, sizeof body, "Hello from worker %u (pid %d)\n", id, (int)getpid());
        int hlen = snprintf(head, sizeof head,
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                            "Content-Length: %d\r\nConnection: close\r\n\r\n",
                            blen);
        if (write_all(fd, head, (size_t)hlen) == 0) write_all(fd, body, (size_t)blen);
    }
    /* The primary keeps a copy of the socket until it has read our acknowledgement, so only
     * shutdown() sends the FIN now; close() alone would leave the client waiting. */
    shutdown(fd, SHUT_WR);
    close(fd);
}

int main(void) {
    rcluster_worker *w = NULL;
    if (rcluster_worker_from_env(&w) != RCLUSTER_RESULT_OK) {
        fprintf(stderr, "worker: %s\n", rcluster_last_error());
        return 2;
    }
    uint32_t id = 0;
    rcluster_worker_identity(w, &id, NULL);
    if (rcluster_worker_ready(w) != RCLUSTER_RESULT_OK) {
        fprintf(stderr, "worker %u: %s\n", id, rcluster_last_error());
        rcluster_worker_free(w);
        return 1;
    }
    int status = 0;
    double last_beat = now_s();
    for (int leaving = 0; !leaving;) {
        if (now_s() - last_beat >= 1.0) {
            rcluster_worker_heartbeat(w);
            last_beat = now_s();
        }
        rcluster_worker_event *ev = NULL;
        rcluster_result rc = rcluster_worker_next_event(w, 1000, &ev);
        if (rc == RCLUSTER_RESULT_TIMEOUT) continue;
        if (rc != RCLUSTER_RESULT_OK) {
            fprintf(stderr, "worker %u: %s\n", id, rcluster_last_error());
            status = 1;
            break;
        }
        switch (ev->kind) {
        case RCLUSTER_WORKER_EVENT_KIND_CONNECTION:
            serve(ev->fd, id);
            rcluster_worker_connection_closed(w, ev->connection_id);
            break;
        case RCLUSTER_WORKER_EVENT_KIND_MESSAGE: {
            char reply[4096];
            int n = snprintf(reply, sizeof reply, "%u:%.*s", id, (int)(ev->len < 4000 ? ev->len : 4000),
                             (const char *)ev->data);
            rcluster_worker_send(w, (const uint8_t *)reply, (size_t)n);
            break;
        }
        case RCLUSTER_WORKER_EVENT_KIND_DISCONNECT:
        case RCLUSTER_WORKER_EVENT_KIND_PRIMARY_GONE:
            leaving = 1;
            break;
        }
        rcluster_worker_event_free(ev);
    }
    rcluster_worker_free(w);
    return status;
}

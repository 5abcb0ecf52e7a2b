// Types of require('rcluster'): rcluster's own API and the `cluster`-compatible facade.
// The namespace holds types only (no class declarations): a namespace with values in it
// could not merge with the `rcluster` constant that `export =` exports.
import { EventEmitter } from 'events';
import type { Server } from 'net';

declare namespace rcluster {
  type Dispatch = 'rr' | 'round-robin' | 'least-conn' | 'least-connections' | 'sticky' | 'shared';
  type Serialization = 'json' | 'advanced';

  interface ListenerOptions {
    /**
     * 'IP:PORT', '[IPv6]:PORT', 'localhost:PORT' (a host name that resolves to one address,
     * resolved once at start), ':PORT' (every IPv4 interface), 'unix:/path', or a port on
     * 127.0.0.1.
     */
    address: string | number;
    /** Default: 'listen0', 'listen1', ... by its place among the listeners. */
    name?: string;
    dispatch?: Dispatch;
    /**
     * Start even when another socket listens on the address (both then share it through
     * SO_REUSEPORT); by default an address in use fails start() naming it.
     */
    share?: boolean;
  }

  interface RestartOptions {
    mode?: 'always' | 'on-failure' | 'never';
    /** Milliseconds. */
    backoffInitial?: number;
    backoffMultiplier?: number;
    backoffMax?: number;
    /** 0..1 */
    jitter?: number;
    minUptime?: number;
    maxRestarts?: number;
    window?: number;
    noRestartCodes?: number[];
  }

  /** Options of start(); every duration is in milliseconds. */
  interface StartOptions {
    /** 1..4096; default: one per CPU this process may use (see `defaultWorkers()`). */
    workers?: number;
    /** Script the workers run (default: this script, process.argv[1]). */
    exec?: string;
    /** Default: process.argv.slice(2). */
    args?: string[];
    /** Default: process.execArgv. */
    execArgv?: string[];
    /** A non-Node program to run instead of `node exec` (with `args`). */
    program?: string;
    env?: Record<string, string | number | boolean>;
    cwd?: string;
    readyOn?: 'spawn' | 'hello' | 'explicit';
    readyTimeout?: number;
    heartbeatTimeout?: number;
    killTimeout?: number;
    restart?: RestartOptions['mode'] | RestartOptions;
    maxMessage?: number;
    /** Default 64 MiB, or four maxMessage when that is larger. */
    sendQueueLimit?: number;
    /**
     * Most bytes of worker messages waiting for this process to take them (default 4 MiB);
     * beyond, workers that send are not read until it catches up (their `send` blocks).
     */
    eventQueueLimit?: number;
    /**
     * Milliseconds a worker may leave a connection handed to it unacknowledged before it is
     * taken for hung: killed (reason 'heartbeat') and its connections given to other workers.
     * Default 5000; null turns it off.
     */
    ackTimeout?: number | null;
    output?: 'inherit' | 'prefix';
    listen?: string | number | Array<string | number>;
    listeners?: ListenerOptions[];
    /** Default dispatch of `listen` / `listeners` without their own. */
    dispatch?: Dispatch;
    maxInflight?: number;
    handoffWindow?: number;
    /**
     * Round-robin TCP listeners (those of `listen`/`listeners` fed to `worker.serve()`, and,
     * with `strictTurns`, those a `cluster` program's workers open with `server.listen()`)
     * take turns in the kernel where it allows (root): each worker accepts from a socket of its
     * own and the primary does nothing per connection. Default true; false: the primary
     * accepts every connection and hands it over.
     */
    kernelRoundRobin?: boolean;
    /**
     * Round-robin in strict turns. Default false: a connection whose turn falls on a busy
     * worker goes to the next one if that one is less busy (in the kernel's turns: fewer
     * connections waiting in its socket), and the shares stay even over time. true: every
     * connection goes to the worker whose turn it is.
     */
    strictTurns?: boolean;
    queueLimit?: number;
    queueTimeout?: number;
    maxSurge?: number;
    /**
     * A worker whose resident memory exceeds this is replaced like a reload replaces it (the
     * new one ready first; exit reason 'memory'): bytes, or a size such as '512M' (K, M, G).
     */
    maxMemory?: number | string;
    /**
     * A worker handed this many connections (plus a random 0..maxRequestsJitter of its own)
     * is replaced like a reload replaces it (exit reason 'max_requests'). Connections of a
     * 'shared' listener, which workers accept themselves, are not counted; those the kernel's
     * turns give are (docs/operations.md, "Recycling").
     */
    maxRequests?: number;
    maxRequestsJitter?: number;
    /**
     * Serve `/metrics` (Prometheus text), `/healthz` and `/readyz` over HTTP on this address,
     * from the supervisor's loop (docs/operations.md): '127.0.0.1:9100', ':9100',
     * 'unix:/path', or a port number of 127.0.0.1. Default: no HTTP server.
     */
    metrics?: string | number;
    /**
     * Milliseconds during which `/readyz` fails before a stop signal's graceful stop begins,
     * so that a load balancer takes the cluster out of rotation first (default 0).
     */
    drainDelay?: number;
    /** Fewest ready workers for `/readyz` to answer 200 (default 1). */
    readyMin?: number;
    /** The cluster's name for `rcluster status NAME` and the other verbs (default: the script's base name). */
    name?: string;
    /** Listen on the control socket (docs/control.md): true, false (default) or 'required'. */
    control?: boolean | 'required';
    serialization?: Serialization;
    /**
     * Default true: for each of SIGINT, SIGTERM, SIGHUP, SIGTTIN and SIGTTOU that the program
     * has no `process.on` listener of its own for, rcluster adds one while the cluster runs
     * (removed on stop): SIGINT/SIGTERM stop gracefully (a second one kills the workers now),
     * SIGHUP reloads, SIGTTIN/SIGTTOU add or remove a worker. The program then ends normally
     * (exit status 0) once the cluster has stopped. False: signals are left to the program.
     */
    handleSignals?: boolean;
  }

  /** What the cluster did with a signal it handles (the 'signal' event). */
  interface SignalEvent {
    signal: 'SIGINT' | 'SIGTERM' | 'SIGHUP' | 'SIGTTIN' | 'SIGTTOU';
    action: 'stop' | 'kill' | 'reload' | 'scale' | 'ignored' | 'refused';
    /** stop: the grace before SIGKILL, in milliseconds. */
    killTimeout?: number;
    /** reload: the new generation. */
    generation?: number;
    /** scale: the number of workers now wanted. */
    workers?: number;
    /** ignored, refused: why. */
    reason?: string;
  }

  interface WorkerRef { id: number; pid: number }
  interface ExitEvent extends WorkerRef {
    generation: number;
    code: number | null;
    signal: NodeJS.Signals | null;
    reason: 'crashed' | 'exited' | 'requested' | 'ready_timeout' | 'heartbeat' | 'memory' | 'protocol_error' | 'shutdown' | 'no_restart' | 'max_requests';
  }
  interface WorkerSnapshot {
    id: number;
    pid: number;
    generation: number;
    state: 'starting' | 'online' | 'ready' | 'draining' | 'exited';
    uptime: number;
    restarts: number;
    lastExit: { code: number | null; signal: NodeJS.Signals | null; reason: ExitEvent['reason'] } | null;
  }

  /**
   * The content type a message travels with (docs/protocol.md): without it, `serialization`
   * decides ('json', or 'v8' for 'advanced'). 'raw' takes a Buffer, a typed array or a string;
   * 'text' a string. A primary or worker in another language reads the type with the message;
   * a Node receiver gets a Buffer (raw), a string (text) or the decoded value (json, v8).
   */
  interface SendOptions { contentType?: 'raw' | 'text' | 'json' | 'v8' }
  /** The status object of `rcluster status --json` (docs/control.md); more keys may come. */
  interface ClusterStatus {
    name: string;
    pid: number;
    version: string;
    uptime_s: number;
    generation: number;
    workers_desired: number;
    listeners: Array<{ name: string; address: string; dispatch: string; queue_length: number }>;
    reloading: boolean;
    stopping: boolean;
    control: string | null;
    workers: Array<{
      slot: number;
      pid: number;
      generation: number;
      state: WorkerSnapshot['state'];
      uptime_s: number;
      restarts: number;
      restarts_by_reason: Record<string, number>;
      last_exit: { pid: number; code: number | null; signal: number | null; reason: string } | null;
      cpu_s: number;
      rss_bytes: number;
      connections_active: number;
      connections_total: number;
      heartbeat_age_s: number | null;
      queue_bytes: number;
    }>;
  }

  /** A running cluster (rcluster's own API): `rcluster.start(options)` or `new rcluster.Cluster(options)`. */
  interface Cluster extends EventEmitter {
    send(id: number, message: unknown, options?: SendOptions): true;
    broadcast(message: unknown, options?: SendOptions): number;
    workers(): WorkerSnapshot[];
    snapshot(): WorkerSnapshot[];
    /** The status object, read off the JS thread. */
    stats(): Promise<ClusterStatus>;
    /** The addresses the primary bound (a port 0 resolved); `listeners()` is EventEmitter's. */
    readonly listenerAddresses: Array<{ name: string; address: string }>;
    reload(): Promise<{ generation: number }>;
    scale(workers: number): void;
    restart(id: number): void;
    stop(options?: { timeout?: number }): Promise<void>;

    on(event: 'spawn', listener: (w: WorkerRef & { generation: number }) => void): this;
    on(event: 'online' | 'ready', listener: (w: WorkerRef) => void): this;
    on(event: 'message', listener: (message: any, from: WorkerRef) => void): this;
    on(event: 'listening', listener: (w: WorkerRef & { address: Address }) => void): this;
    on(event: 'exit', listener: (e: ExitEvent) => void): this;
    on(event: 'restarting', listener: (e: { id: number; delay: number; attempt: number }) => void): this;
    on(event: 'gave-up', listener: (e: { id: number; restarts: number; window: number }) => void): this;
    on(event: 'reload', listener: (e: { phase: 'started' | 'done' | 'failed'; generation: number; reason?: string }) => void): this;
    on(event: 'spawn-failed' | 'protocol-error' | 'accept-paused', listener: (e: { id?: number; pid?: number; listener?: string; error: string }) => void): this;
    on(event: 'scaled', listener: (e: { workers: number }) => void): this;
    on(event: 'output-dropped', listener: (e: { id: number; lines: number; bytes: number }) => void): this;
    on(event: 'warning', listener: (e: { error: string }) => void): this;
    /** A worker reached maxMemory or maxRequests: its replacement is starting; it drains once that one is ready. */
    on(event: 'recycling', listener: (e: WorkerRef & { reason: 'memory' | 'max_requests' }) => void): this;
    on(event: 'signal', listener: (e: SignalEvent) => void): this;
    on(event: 'all-down' | 'stop', listener: () => void): this;
    on(event: string, listener: (...args: any[]) => void): this;
  }

  interface Address { address: string; port: number; addressType: 4 | 6 | -1 }

  /** This process, when it is a worker (rcluster.worker, cluster.worker). */
  interface CurrentWorker extends EventEmitter {
    /** Slot id (0-based under start(); 1-based, as in `cluster`, under fork()). */
    readonly id: number;
    readonly generation: number;
    readonly process: NodeJS.Process;
    state: string;
    exitedAfterDisconnect: boolean | undefined;
    send(message: unknown, callback?: (error: Error | null) => void): boolean;
    send(message: unknown, handle: undefined, options?: SendOptions, callback?: (error: Error | null) => void): boolean;
    ready(): void;
    serve<S extends Server>(server: S, options?: { listener?: string }): S;
    disconnect(): this;
    kill(): this;
    isConnected(): boolean;
    isDead(): boolean;
    on(event: 'message', listener: (message: any) => void): this;
    on(event: 'disconnect', listener: () => void): this;
    on(event: string, listener: (...args: any[]) => void): this;
  }

  interface ClusterConstructor {
    new (options?: StartOptions): Cluster;
    readonly prototype: Cluster;
  }

  /** A worker as the primary sees it (Node's cluster.Worker). */
  interface Worker extends EventEmitter {
    readonly id: number;
    readonly process: EventEmitter & {
      pid: number | undefined; exitCode: number | null; signalCode: NodeJS.Signals | null;
      connected: boolean; killed: boolean; kill(signal?: NodeJS.Signals | number): boolean;
    };
    state: string;
    exitedAfterDisconnect: boolean | undefined;
    send(message: unknown, callback?: (error: Error | null) => void): boolean;
    send(message: unknown, handle: undefined, options?: SendOptions, callback?: (error: Error | null) => void): boolean;
    disconnect(): this;
    kill(signal?: NodeJS.Signals): void;
    destroy(signal?: NodeJS.Signals): void;
    isConnected(): boolean;
    isDead(): boolean;
    on(event: 'online' | 'disconnect', listener: () => void): this;
    on(event: 'listening', listener: (address: Address) => void): this;
    on(event: 'message', listener: (message: any, handle: undefined) => void): this;
    on(event: 'exit', listener: (code: number | null, signal: NodeJS.Signals | null) => void): this;
    on(event: string, listener: (...args: any[]) => void): this;
  }

  interface ClusterSettings {
    exec?: string;
    args?: string[];
    execArgv?: string[];
    cwd?: string;
    silent?: boolean;
    serialization?: Serialization;
    /** rcluster extensions: milliseconds. */
    heartbeatTimeout?: number;
    killTimeout?: number;
    /**
     * rcluster extensions. With `SCHED_RR` and neither set, the workers' `server.listen()` is
     * served from one socket every worker accepts from, the shares kept level and an idle
     * worker whose turn it is first. `strictTurns: true`: round-robin in strict turns (in the
     * kernel as root); `kernelRoundRobin: false`: the primary accepts and hands over every
     * connection. See `StartOptions.kernelRoundRobin` and `StartOptions.strictTurns`.
     */
    kernelRoundRobin?: boolean;
    strictTurns?: boolean;
    /** rcluster extensions: see `StartOptions.name`, `StartOptions.control` and `StartOptions.metrics`. */
    name?: string;
    control?: boolean | 'required';
    metrics?: string | number;
  }

  /** Options of `new rcluster.Pool(...)`. Durations in milliseconds. */
  interface PoolOptions {
    /** The task file: exports a function, or named functions (picked by `run`'s `name`), sync or async. */
    filename: string | URL;
    /** Worker processes (default: the number of CPUs). `maxThreads` is accepted as an alias. */
    workers?: number;
    maxThreads?: number;
    /**
     * Tasks one worker runs at once (default 1); more lets async tasks overlap. A worker also
     * holds up to `maxTasksAhead` more, sent ahead so that it starts the next one without
     * waiting for the primary: they have not started, so a crash, timeout or abort of a running
     * task does not touch them (they run on another worker).
     */
    concurrentTasksPerWorker?: number;
    /**
     * Most tasks sent to a worker ahead of those it runs (default 32; fewer when tasks take
     * long; 0: none). Aborting a task that waits in a worker rejects it at once without
     * replacing the worker, which is told and drops it; only a worker that started it just
     * before it was told runs it (its result is dropped): use 0 where an aborted task must
     * never run even then.
     */
    maxTasksAhead?: number;
    /** Most tasks waiting for a worker (default: unbounded in practice, 2^31). */
    maxQueue?: number;
    /** When the queue is full: reject with ERR_QUEUE_FULL (default), or wait for room. */
    whenFull?: 'reject' | 'wait';
    /** A task running longer is rejected with ERR_TASK_TIMEOUT and its worker replaced. */
    taskTimeout?: number;
    /** A worker that has run this many tasks is replaced (by one started beforehand). */
    maxTasksPerWorker?: number;
    /** A worker whose resident memory is above this many MiB after a task is replaced. */
    maxWorkerMemoryMb?: number;
    env?: Record<string, string | number | boolean>;
    execArgv?: string[];
    cwd?: string;
    /** Grace of a worker that is stopped before SIGKILL (default 10000). */
    killTimeout?: number;
    /** Largest task payload or result in bytes (default 16 MiB). */
    maxMessage?: number;
  }

  interface RunOptions {
    /** A named export of the task file (default: the exported function). */
    name?: string;
    /** Aborting it rejects the task with an AbortError; a running task's worker is replaced. */
    signal?: AbortSignal;
    /** This task's timeout in milliseconds, instead of `taskTimeout`. */
    timeout?: number;
    /**
     * The task may run twice: when its worker dies under it because of another task (with
     * `concurrentTasksPerWorker` above 1), it runs again on another worker instead of failing.
     */
    idempotent?: boolean;
  }

  interface PoolStats {
    queued: number;
    running: number;
    completed: number;
    failed: number;
    failedError: number;
    failedCrashed: number;
    failedTimeout: number;
    failedCancelled: number;
    failedShutdown: number;
    failedNoWorkers: number;
    retried: number;
    /** Tasks that waited in a worker that ended, run on another (not attempts, not failures). */
    requeued: number;
    recycled: number;
    workersReady: number;
    /** Milliseconds. */
    waitTotal: number;
    waitMax: number;
    runTotal: number;
    runMax: number;
  }

  /**
   * A pool of worker processes. Rejections carry a `code`: ERR_WORKER_CRASHED (with
   * `exitCode` or `signal`), ERR_TASK_TIMEOUT, ERR_QUEUE_FULL, ERR_POOL_DESTROYED,
   * ERR_WORKER_INIT_FAILED, ERR_TASK_DATA_NOT_SERIALIZABLE, ERR_TASK_RESULT_NOT_SERIALIZABLE;
   * an aborted signal gives an `AbortError`; an error thrown by the task arrives as an Error
   * with its message, name, stack and code.
   */
  interface Pool {
    run<T = any>(data?: unknown, options?: RunOptions): Promise<T>;
    stats(): PoolStats;
    readonly queueSize: number;
    destroy(): Promise<void>;
  }

  interface PoolConstructor {
    new (options: PoolOptions): Pool;
  }

  interface PoolError extends Error {
    code: string;
    exitCode?: number;
    signal?: NodeJS.Signals | number;
  }

  interface Rcluster extends EventEmitter {
    start(options?: StartOptions): Cluster;
    /** The number of workers start() runs when given none: the CPUs of this process's
     * affinity mask, bounded by its cgroup's CPU quota (rounded up); at least 1. */
    defaultWorkers(): number;
    Cluster: ClusterConstructor;
    Pool: PoolConstructor;
    readonly isPrimary: boolean;
    readonly isMaster: boolean;
    readonly isWorker: boolean;
    readonly worker: CurrentWorker | undefined;
    readonly workers: Record<number, Worker> | undefined;
    readonly settings: ClusterSettings;
    schedulingPolicy: number;
    readonly SCHED_NONE: 1;
    readonly SCHED_RR: 2;
    fork(env?: Record<string, string | number | boolean>): Worker;
    setupPrimary(settings?: ClusterSettings): void;
    setupMaster(settings?: ClusterSettings): void;
    disconnect(callback?: () => void): void;
    /** rcluster extension: the status object, as `Cluster.stats()` (after the first fork). */
    stats(): Promise<ClusterStatus>;
    on(event: 'fork' | 'online' | 'disconnect', listener: (worker: Worker) => void): this;
    on(event: 'listening', listener: (worker: Worker, address: Address) => void): this;
    on(event: 'message', listener: (worker: Worker, message: any, handle: undefined) => void): this;
    on(event: 'exit', listener: (worker: Worker, code: number | null, signal: NodeJS.Signals | null) => void): this;
    on(event: 'setup', listener: (settings: ClusterSettings) => void): this;
    on(event: string, listener: (...args: any[]) => void): this;
  }
}

declare const rcluster: rcluster.Rcluster;
export = rcluster;

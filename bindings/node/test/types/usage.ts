// Type-checked only (tsc --strict --noEmit, by test.sh), never run: every documented call
// of require('rcluster') used once, so that index.d.ts stays true to the API.
import rcluster = require('rcluster');
import http = require('http');

if (rcluster.isPrimary) {
  const options: rcluster.StartOptions = {
    workers: 4,
    exec: 'server.js',
    args: ['--port', '8000'],
    execArgv: ['--max-old-space-size=256'],
    env: { MODE: 'prod', N: 1, DEBUG: false },
    cwd: '.',
    readyOn: 'explicit',
    readyTimeout: 30_000,
    heartbeatTimeout: 10_000,
    killTimeout: 5_000,
    restart: {
      mode: 'on-failure', backoffInitial: 100, backoffMultiplier: 2, backoffMax: 10_000, jitter: 0.1,
      minUptime: 1_000, maxRestarts: 5, window: 60_000, noRestartCodes: [78],
    },
    maxMessage: 1 << 20,
    sendQueueLimit: 1024,
    eventQueueLimit: 1 << 22,
    ackTimeout: 5_000,
    output: 'prefix',
    listen: ['127.0.0.1:8000', 8001],
    listeners: [{ address: 'unix:/tmp/app.sock', name: 'admin', dispatch: 'least-conn', share: false }],
    dispatch: 'rr',
    maxInflight: 64,
    handoffWindow: 16,
    kernelRoundRobin: false,
    strictTurns: true,
    queueLimit: 1024,
    queueTimeout: 5_000,
    maxSurge: 1,
    maxMemory: '512M',
    maxRequests: 10_000,
    maxRequestsJitter: 500,
    metrics: '127.0.0.1:9100',
    drainDelay: 5_000,
    readyMin: 1,
    serialization: 'advanced',
    handleSignals: true,
  };
  const cluster: rcluster.Cluster = rcluster.start(options);
  const other = new rcluster.Cluster({ workers: 1, program: '/bin/true', restart: 'never' });
  void other;
  const defaultCount: number = rcluster.defaultWorkers();
  void defaultCount;

  cluster.on('spawn', (w) => console.log(w.id, w.pid, w.generation));
  cluster.on('online', (w) => console.log(w.id));
  cluster.on('ready', (w) => cluster.send(w.id, { hello: 'worker' }));
  cluster.on('message', (message, from) => console.log(message, from.id, from.pid));
  cluster.on('listening', (w) => console.log(w.address.address, w.address.port, w.address.addressType));
  cluster.on('exit', (e: rcluster.ExitEvent) => console.log(e.code, e.signal, e.reason, e.generation));
  cluster.on('restarting', (e) => console.log(e.delay, e.attempt));
  cluster.on('gave-up', (e) => console.log(e.restarts, e.window));
  cluster.on('reload', (e) => console.log(e.phase, e.generation, e.reason));
  cluster.on('spawn-failed', (e) => console.log(e.error));
  cluster.on('scaled', (e) => console.log(e.workers));
  cluster.on('output-dropped', (e) => console.log(e.lines, e.bytes));
  cluster.on('warning', (e) => console.log(e.error));
  cluster.on('recycling', (e) => console.log(e.id, e.pid, e.reason));
  cluster.on('signal', (e: rcluster.SignalEvent) => console.log(e.signal, e.action, e.killTimeout));
  cluster.on('stop', () => console.log('stopped'));

  const sent: number = cluster.broadcast('all');
  cluster.send(0, 'text', { contentType: 'text' });
  const workers: rcluster.WorkerSnapshot[] = cluster.workers();
  const snap = cluster.snapshot();
  const first = snap[0];
  if (first && first.lastExit) console.log(first.state, first.uptime, first.restarts, first.lastExit.reason);
  const addresses: Array<{ name: string; address: string }> = cluster.listenerAddresses;
  // EventEmitter's own listeners() is not shadowed by the addresses.
  const exitListeners: Function[] = cluster.listeners('exit');
  console.log(sent, workers.length, addresses, exitListeners.length);
  cluster.scale(2);
  cluster.restart(0);
  void cluster.stats().then((st: rcluster.ClusterStatus) => {
    const w = st.workers[0];
    if (w) console.log(st.name, st.generation, w.rss_bytes, w.restarts_by_reason['crashed'], w.last_exit?.reason);
  });
  void (async () => {
    const { generation } = await cluster.reload();
    console.log(generation);
    await cluster.stop({ timeout: 10_000 });
    await cluster.stop();
  })();

  // The `cluster`-compatible facade.
  rcluster.setupPrimary({ exec: 'worker.js', args: [], execArgv: [], silent: false, serialization: 'json' });
  rcluster.setupPrimary({ name: 'web', control: true, metrics: 9100 });
  void rcluster.stats().then((st: rcluster.ClusterStatus) => st.workers.length);
  rcluster.setupMaster({ killTimeout: 1_000, heartbeatTimeout: 1_000, kernelRoundRobin: true });
  rcluster.schedulingPolicy = rcluster.SCHED_RR;
  console.log(rcluster.isMaster, rcluster.isWorker, rcluster.settings.exec, rcluster.SCHED_NONE);
  const w: rcluster.Worker = rcluster.fork({ ROLE: 'web' });
  w.on('online', () => w.send({ hi: 1 }, (err) => console.log(err)));
  w.on('listening', (a) => console.log(a.port));
  w.on('message', (m) => console.log(m));
  w.on('exit', (code, signal) => console.log(code, signal, w.exitedAfterDisconnect));
  console.log(w.id, w.process.pid, w.state, w.isConnected(), w.isDead());
  w.disconnect();
  w.kill('SIGTERM');
  w.destroy();
  for (const id in rcluster.workers) console.log(rcluster.workers?.[Number(id)]?.id);
  rcluster.on('fork', (worker) => console.log(worker.id));
  rcluster.on('exit', (worker, code, signal) => console.log(worker.id, code, signal));
  rcluster.on('listening', (worker, address) => console.log(worker.id, address.port));
  rcluster.on('message', (worker, message) => console.log(worker.id, message));
  rcluster.on('setup', (settings) => console.log(settings.exec));
  rcluster.disconnect(() => console.log('disconnected'));
  console.log(rcluster.listeners('exit').length);
} else {
  const me = rcluster.worker;
  if (me) {
    const server = me.serve(http.createServer((req, res) => res.end('hi\n')), { listener: 'listen0' });
    server.on('close', () => undefined);
    me.on('message', (m) => me.send({ echo: m }));
    me.on('disconnect', () => undefined);
    me.send('up', (err) => console.log(err));
    me.send(Buffer.from('raw bytes'), undefined, { contentType: 'raw' });
    me.ready();
    console.log(me.id, me.generation, me.process.pid, me.state, me.isConnected(), me.isDead());
    me.disconnect();
    me.kill();
  }
}

async function usePool(): Promise<void> {
  const pool = new rcluster.Pool({
    filename: __dirname + '/tasks.js',
    workers: 2,
    concurrentTasksPerWorker: 1,
    maxQueue: 1000,
    whenFull: 'wait',
    taskTimeout: 1000,
    maxTasksPerWorker: 100,
    maxWorkerMemoryMb: 512,
  });
  const ac = new AbortController();
  const n: number = await pool.run<number>(21, { name: 'double', signal: ac.signal, timeout: 500, idempotent: true });
  const s: rcluster.PoolStats = pool.stats();
  console.log(n, s.completed, s.failedCrashed, s.waitMax, pool.queueSize);
  try {
    await pool.run({ a: 1 });
  } catch (e) {
    const err = e as rcluster.PoolError;
    console.log(err.code, err.exitCode, err.signal);
  }
  await pool.destroy();
}
void usePool;

'use strict';
// The worker side: this process's link to its primary, `process.send` / `process.on('message')`
// as in a `cluster` worker, and servers fed with the connections the primary dispatches.
const { EventEmitter } = require('events');
const net = require('net');
const tls = require('tls');
const fs = require('fs');
const os = require('os');
const util = require('util');
const v8 = require('v8');
const native = require('./native');
const codec = require('./codec');
const { Outbox } = require('./outbox');
const { OpenSockets } = require('./open_sockets');
const { spinAfterSend } = require('./spin');
const { rclusterError } = require('./errors');

// Connections that arrive before any server takes them wait here, up to this many.
const MAX_EARLY = 1024;
const INIT_TIMEOUT_MS = 10000;
// While draining, a kept-alive connection with no request for this long is closed. Closing one
// sooner races its client, which may be sending its next request at that very moment and would
// see the connection fail instead of an answer with `Connection: close`.
const IDLE_GRACE_MS = 500;
const IDLE_CHECK_MS = 50;
// Event-loop turns a stopping worker waits for its listening socket to empty (see
// closeWhenEmptied).
const MAX_EMPTYING_TURNS = 1000;
const kDrain = Symbol('rcluster.drain');
// The listeners of which a server gave a connection back (at its maxConnections), until it has
// room again.
const kGaveBack = Symbol('rcluster.gaveBack');
// Accepting pauses this long after running out of descriptors, as the primary's does.
const ACCEPT_PAUSE_MS = 100;
const PAUSE_ON = new Set(['EMFILE', 'ENFILE', 'ENOBUFS', 'ENOMEM']);

class WorkerSelf extends EventEmitter {
  constructor(link, compat) {
    super();
    this._link = link;
    this._compat = compat;
    this._servers = new Map(); // listener name -> server (listeners asked for with listen())
    this._served = []; // servers given to serve(): they take the primary's own listeners
    this._turns = []; // servers accepting on this worker's own sockets of listeners the kernel turns
    this._shared = []; // AcceptHandles of shared listeners of the configuration (see serve())
    this._early = [];
    // Servers closed by the program, by listener name ('' for served ones without a name):
    // connections the primary handed over before it read that they closed go to them.
    this._closed = new Map();
    this._handed = new Set(); // names of the listeners whose connections the primary handed over
    this._handleClasses = new Map(); // listener name -> handle class of its connections
    this._connected = true;
    this.id = compat ? link.id + 1 : link.id;
    this.generation = link.generation;
    this.process = process;
    this.state = 'online';
    this.exitedAfterDisconnect = undefined;
    this._serialization = process.env.RCLUSTER_NODE_SERIALIZATION === 'advanced' ? 'advanced' : 'json';
    this._onMessage = (message) => this._message(message);
    this._takeItems = (items) => {
      for (const item of items) this._item(item);
      return codec.moreWaiting(items);
    };
    this._outbox = new Outbox((joined) => link.sendJson(joined), link.maxMessage, (err) => {
      // A batch sent after send() returned failed: the primary is gone (the worker leaves),
      // or this worker's messages exceed what the socket takes. As process.send does.
      if (process.listenerCount('error') > 0) process.emit('error', err);
      else if (this._connected) throw err;
    });
  }

  /** Sends a message to the primary. */
  send(message, handle, options, callback) {
    callback = [handle, options, callback].find((a) => typeof a === 'function');
    if (!this._connected) {
      const err = rclusterError('ERR_IPC_CHANNEL_CLOSED', 'Channel closed');
      if (callback) { process.nextTick(callback, err); return false; }
      throw err;
    }
    try {
      const contentType = codec.contentTypeOf(options);
      if (contentType === undefined && this._serialization === 'json') {
        this._outbox.push(codec.jsonText(message), callback);
        return true;
      }
      this._outbox.flush();
      const [type, data] = codec.encode(message, this._serialization, contentType);
      this._link.send(type, data);
      spinAfterSend();
    } catch (e) {
      if (callback) { process.nextTick(callback, e); return false; }
      throw e;
    }
    if (callback) process.nextTick(callback, null);
    return true;
  }

  _control(obj) {
    if (!this._connected) return;
    this._outbox.flush();
    this._link.send(codec.CONTENT.binding, JSON.stringify(obj));
  }

  /** Tells the primary this worker is ready for work (readyOn: 'explicit'). */
  ready() {
    this._outbox.flush();
    this._link.ready();
  }

  /** Feeds connections of the primary's listeners into `server` (net/http/https/http2). */
  serve(server, { listener } = {}) {
    if (!server || typeof server.emit !== 'function') {
      throw rclusterError('ERR_RCLUSTER_INVALID_OPTION', `invalid option server = ${server}: must be a net.Server`);
    }
    if (listener !== undefined) this._servers.set(listener, server);
    else this._served.push(server);
    trackKeepAlive(server);
    stopServingOnClose(this, server);
    // Listeners the kernel turns (RCLUSTER_TURNS): this worker asks for its own socket of
    // each and accepts on it natively; the primary hands over only what waited for a worker
    // that died or stopped.
    const turned = (process.env.RCLUSTER_TURNS || '').split(':').filter((n) => n !== '');
    for (const name of turned) if (listener === undefined || listener === name) this._acceptTurns(server, name);
    // `shared` listeners of the configuration: the primary accepts none of their connections;
    // every worker accepts from the socket itself (it inherited it as LISTEN_FDS, 3 on).
    const inherited = process.env.LISTEN_PID === String(process.pid)
      ? (process.env.LISTEN_FDNAMES || '').split(':') : [];
    inherited.forEach((name, i) => {
      if (name !== '' && (listener === undefined || listener === name)) this._acceptShared(server, name, 3 + i);
    });
    const early = this._early;
    this._early = [];
    for (const ev of early) this._connection(ev);
    return server;
  }

  /** Accepts on this worker's own socket of listener `name` and feeds `server` from it. */
  _acceptTurns(server, name) {
    let listening;
    try {
      listening = this._link.listen(name, 'rr', true);
      setImmediate(() => this._pump()); // what came in meanwhile waits in memory
    } catch {
      return; // the primary hands over this listener's connections, as without turns
    }
    if (typeof listening.fd !== 'number') return;
    const inner = net.createServer({
      allowHalfOpen: server.allowHalfOpen,
      pauseOnConnect: server.pauseOnConnect,
      noDelay: server.noDelay,
      keepAlive: server.keepAlive,
      keepAliveInitialDelay: server.keepAliveInitialDelay * 1000,
      highWaterMark: server.highWaterMark,
    });
    // Counted by `server`, as the connections the primary hands over are (see _connection).
    inner.on('connection', (socket) => {
      inner._connections--;
      if (atLimit(server)) {
        refuse(server, socket);
        return;
      }
      server._connections++;
      socket.server = server;
      socket._server = server;
      server.emit('connection', socket);
    });
    inner.on('error', (err) => server.emit('error', err));
    inner.listen({ fd: listening.fd });
    countConnections(this, inner, listening);
    unlistenOnClose(this, inner, listening.name);
    inner._rclusterFeeds = server;
    inner._rclusterName = listening.name;
    this._turns.push(inner);
  }

  /**
   * `server` (served) closes: this worker stops taking connections for it. It leaves the
   * shared sockets (the primary and the other workers keep them), and leaves the turns of
   * its own sockets before it closes them once emptied: what waits in them was accepted by
   * the kernel for clients, and is served.
   */
  _stopServing(server) {
    const names = new Set();
    for (const [name, s] of this._servers) {
      if (s === server) {
        this._servers.delete(name);
        this._closed.set(name, server);
        names.add(name);
      }
    }
    if (this._served[0] === server) {
      for (const name of this._handed) if (!this._servers.has(name)) names.add(name);
    }
    if (this._served.includes(server)) this._closed.set('', server);
    this._served = this._served.filter((s) => s !== server);
    // The primary hands this worker no more of their connections (those it hands over before
    // it reads this find the closed server, and say it again: see _connection).
    if (!this._served[0]) for (const name of names) this._unlisten(name);
    for (const h of this._shared) if (h._server === server) h.close();
    this._shared = this._shared.filter((h) => h._server !== server);
    for (const inner of this._turns) {
      if (inner._rclusterFeeds !== server) continue;
      this._unlisten(inner._rclusterName);
      closeWhenEmptied(inner);
    }
    this._turns = this._turns.filter((inner) => inner._rclusterFeeds !== server);
  }

  /**
   * Accepts on the shared socket of listener `name` and feeds `server` from it, one connection
   * per turn, keeping level with the other workers (see AcceptHandle). The core decides which
   * socket: the primary's copy, with the listener's share map, or the one this worker
   * inherited at `fd` (from an older primary).
   */
  _acceptShared(server, name, fd) {
    let acceptor;
    try {
      acceptor = this._link.acceptShared(name, fd);
    } catch (err) {
      process.nextTick(() => server.emit('error', err));
      return;
    } finally {
      setImmediate(() => this._pump()); // what came in meanwhile waits in memory
    }
    const handle = new AcceptHandle(this, server, name, acceptor, acceptor);
    handle.listen();
    this._shared.push(handle);
  }

  isConnected() {
    return this._connected;
  }

  isDead() {
    return false;
  }

  /** Stops taking work: closes servers, leaves the primary; the process then exits when idle. */
  disconnect() {
    if (!this._connected) return this;
    this.exitedAfterDisconnect = true;
    this._control({ act: 'exitedAfterDisconnect' });
    this._leave();
    return this;
  }

  kill() {
    return this.disconnect();
  }

  _leave() {
    if (!this._connected) return;
    try {
      this._outbox.flush(false);
      this._link.disconnect(); // the primary sends no new connections from now on
    } catch { /* the primary is gone already */ }
    this._connected = false;
    this.state = 'disconnected';
    process.connected = false;
    const servers = new Set([...this._servers.values(), ...this._served, ...this._turns]);
    for (const s of servers) drainKeepAlive(s);
    for (const s of servers) if (s.listening) closeWhenEmptied(s);
    for (const h of this._shared) closeWhenEmptied(h);
    for (const ev of this._early) closeFd(ev.fd);
    this._early = [];
    // Nothing of rcluster keeps the process alive now; stop reading once what is queued
    // (connections already handed over) has been taken.
    this._pump();
    this._link.unwatch();
    clearInterval(this._heartbeat);
    process.nextTick(() => {
      this.emit('disconnect');
      process.emit('disconnect');
    });
  }

  _start() {
    this._link.watch((items) => this._pump(items));
    // The primary says how often (a quarter of its heartbeat timeout) when it checks them;
    // the core reads what it said.
    const every = this._link.heartbeatIntervalMs;
    if (every) {
      // From the JS event loop on purpose: a blocked loop stops the heartbeats, and the
      // primary kills the worker. Unref'd: it never keeps a finished worker alive.
      this._heartbeat = setInterval(() => {
        try { this._link.heartbeat(); } catch { /* primary gone; handled by the link */ }
      }, every);
      this._heartbeat.unref();
    }
  }

  /** Handles `items` (what the watcher took, if any), then whatever waits still. */
  _pump(items) {
    codec.pump(items, this._takeItems, (max) => this._link.drain(max));
  }

  _item(item) {
    if (typeof item === 'string') {
      // A run of JSON messages, joined by newlines.
      codec.eachJson(item, this._onMessage);
      return undefined;
    }
    if (Buffer.isBuffer(item)) return this._message(v8.deserialize(item));
    switch (item.type) {
      case 'connection': return this._connection(item);
      case 'binding': return this._onControl(codec.bindingMessage(item.data) || {});
      case 'raw': // a Buffer
      case 'text': // a string
        return this._message(item.data);
      case 'disconnect': return this._leave();
      case 'more': return undefined;
      case 'gone':
        // The primary is gone: as a `cluster` worker does, say so and exit.
        this._leave();
        if (!this.exitedAfterDisconnect) process.nextTick(() => process.exit(0));
        return undefined;
      default: return undefined;
    }
  }

  _message(message) {
    process.emit('message', message, undefined);
    this.emit('message', message, undefined);
  }

  _onControl(c) {
    if (c.act === 'disconnect') {
      this.exitedAfterDisconnect = true;
      this._leave();
    }
  }

  _unlisten(name) {
    try { this._link.unlisten(name); } catch { /* the primary is gone */ }
  }

  _connection(ev) {
    this._handed.add(ev.listener);
    const live = this._servers.get(ev.listener) || this._served[0];
    if (live && atLimit(live)) {
      this._giveBack(live, ev);
      return;
    }
    let server = live;
    if (!server) {
      // Handed over before the primary read that its server closed (or before it was told):
      // a closed server answers what it is given, as it answers the connections it had.
      server = this._closed.get(ev.listener) || this._closed.get('');
      if (server) this._unlisten(ev.listener);
    }
    const link = this._link;
    const id = ev.id;
    const closed = () => {
      try { link.connectionClosed(id); } catch { /* the primary is gone */ }
    };
    if (!server) {
      if (this._early.length < MAX_EARLY && this._connected) {
        this._early.push(ev);
      } else {
        closeFd(ev.fd);
        closed();
      }
      return;
    }
    // A connection refused (maxConnections) is closed too: the primary counts it until told.
    const socket = this._adopt(server, ev.listener, ev.fd);
    if (!socket) {
      closed();
      return;
    }
    socket.once('close', () => {
      closed();
      if (server[kGaveBack] && !atLimit(server)) this._hasRoom(server);
    });
    server.emit('connection', socket);
  }

  /**
   * `server` is at its maxConnections: connection `ev` goes back to the primary, which hands
   * it to another worker, and this worker none of the listener's until one of its connections
   * closes (_hasRoom), as Node's round-robin primary passes a connection a worker refused to the
   * next. No 'drop': the connection is not dropped.
   */
  _giveBack(server, ev) {
    try {
      this._link.giveBack(ev.id, ev.fd);
    } catch {
      return; // the primary is gone (the descriptor is closed)
    }
    if (!server[kGaveBack]) server[kGaveBack] = new Set();
    server[kGaveBack].add(ev.listener);
  }

  /** `server` has room again: the primary may hand it the listeners' connections again. */
  _hasRoom(server) {
    const names = server[kGaveBack];
    server[kGaveBack] = undefined;
    for (const name of names) {
      try { this._link.room(name); } catch { /* the primary is gone */ }
    }
  }

  /** A connection this worker accepted on `server`'s listening socket itself. */
  _accepted(server, listener, fd) {
    const socket = this._adopt(server, listener, fd);
    if (socket) server.emit('connection', socket);
  }

  /**
   * A socket of `server` on connection `fd` of `listener`, made and counted by the server as
   * net's own onconnection does, so that server.close(), getConnections(), maxConnections and
   * the server's noDelay, keepAlive and highWaterMark keep working; null (and `fd` closed,
   * 'drop' emitted) when maxConnections refuses it. `noDelaySet`: the connection came with
   * Nagle's algorithm off already (inherited from its listening socket).
   */
  _adopt(server, listener, fd, noDelaySet = false) {
    if (atLimit(server)) {
      this._drop(server, listener, fd);
      return null;
    }
    const socket = this._socket(server, listener, fd, noDelaySet);
    if (server.noDelay && !noDelaySet) socket.setNoDelay(true);
    if (server.keepAlive) socket.setKeepAlive(true, server.keepAliveInitialDelay * 1000);
    server._connections++;
    socket.server = server;
    socket._server = server;
    return socket;
  }

  /**
   * Refuses connection `fd` of `server` (maxConnections) as net does: closes it and emits
   * 'drop' with its addresses.
   */
  _drop(server, listener, fd) {
    if (server.listenerCount('drop') === 0) {
      closeFd(fd);
      return;
    }
    refuse(server, this._socket(server, listener, fd, false));
  }

  /**
   * A net.Socket of `server` on a handed-over descriptor. `new net.Socket({ fd })` first asks
   * what the descriptor is (four system calls: isatty, fstat, getsockopt, getsockname) and then
   * wraps it in a TCP or Pipe handle. Every connection of a listener is of the same kind, so the
   * first one's handle class is kept and later ones are wrapped directly, with the options net's
   * own accept gives. Whatever goes wrong there falls back to the general way.
   */
  _socket(server, listener, fd, noDelaySet) {
    // The options net's own accept gives; `handle` set when the descriptor is wrapped directly
    // (net.Socket then leaves `fd` alone). `noDelay` only tells the socket what is set.
    const options = {
      handle: undefined,
      fd,
      readable: true,
      writable: true,
      allowHalfOpen: server.allowHalfOpen,
      pauseOnCreate: server.pauseOnConnect,
      readableHighWaterMark: server.highWaterMark,
      writableHighWaterMark: server.highWaterMark,
      noDelay: noDelaySet,
    };
    const Handle = this._handleClasses.get(listener);
    if (Handle) {
      try {
        const handle = new Handle(HANDLE_SOCKET);
        if (handle.open(fd) === 0) {
          options.handle = handle;
          return new net.Socket(options);
        }
        handle.close();
      } catch { /* the general way below */ }
      options.handle = undefined;
    }
    const socket = new net.Socket(options);
    const cls = socket._handle && socket._handle.constructor;
    if (typeof cls === 'function' && typeof cls.prototype.open === 'function') {
      this._handleClasses.set(listener, cls);
    }
    return socket;
  }
}

/** Destroys `socket`, refused by `server` (maxConnections), and emits 'drop' as net does. */
function refuse(server, socket) {
  const data = dropData(socket._handle);
  socket.destroy();
  if (data) server.emit('drop', data);
  else server.emit('drop');
}

/** What net's 'drop' event tells of a refused connection: its addresses, when it has any. */
function dropData(handle) {
  if (!handle || (!handle.getsockname && !handle.getpeername)) return undefined;
  const data = { __proto__: null };
  if (handle.getsockname) readAddress(data, 'local', handle, 'getsockname');
  if (handle.getpeername) readAddress(data, 'remote', handle, 'getpeername');
  return data;
}

/** Sets `data`'s `<side>Address`, `<side>Port` and `<side>Family` from `handle[method]`. */
function readAddress(data, side, handle, method) {
  const out = { __proto__: null };
  handle[method](out);
  data[`${side}Address`] = out.address;
  data[`${side}Port`] = out.port;
  data[`${side}Family`] = out.family;
}

/**
 * Makes sure a drain can find the connections of an HTTP/1 server (http or https) and end each
 * one cleanly (see drainKeepAlive). Other servers are left alone: only HTTP says how a
 * connection announces its end.
 *
 * A listening server of Node 18.2 or later keeps its own list of open connections (for its
 * request timeouts and closeAllConnections()): once it is there, at the first connection,
 * nothing more is done per connection. Following each connection as well cost 4 % more CPU
 * per request in a busy worker (bench/RESULTS.md). A server that does not listen itself
 * (worker.serve()) or an older Node has no such list: its connections are followed, in slots
 * (one slot and one listener per connection, nothing per request). Either way, what a drain
 * needs to know of a connection (its response in progress, its bytes) it reads from the
 * socket when the drain begins.
 */
function trackKeepAlive(server) {
  if (server[kDrain] || !('keepAliveTimeout' in server)) return;
  const state = { sockets: new OpenSockets(), list: null, looked: false, draining: false, timer: null };
  server[kDrain] = state;
  const event = server instanceof tls.Server ? 'secureConnection' : 'connection';
  server.on(event, function follow(socket) {
    if (!state.looked) {
      state.looked = true;
      state.list = nodeConnections(server);
      if (state.list) {
        server.removeListener(event, follow);
        return;
      }
    }
    socket[kDrain] = state;
    state.sockets.add(socket);
    socket.on('close', forgetSocket);
  });
}

function forgetSocket() {
  this[kDrain].sockets.delete(this);
}

/**
 * The list of open connections Node's own HTTP server keeps once it listens (its
 * `http.server.connections` symbol: parsers, each with its socket, on every connection until
 * it closes or is upgraded); null when there is none.
 */
function nodeConnections(server) {
  const key = Object.getOwnPropertySymbols(server)
    .find((k) => k.description === 'http.server.connections');
  const list = key && server[key];
  return list && typeof list.all === 'function' ? list : null;
}

/**
 * The open HTTP connections of a server followed by trackKeepAlive. A connection upgraded to
 * another protocol (a WebSocket) is no longer HTTP's, nor in Node's list: its end is the
 * application's, as with Node's own cluster.
 */
function openConnections(state) {
  const sockets = [];
  if (state.list) {
    for (const parser of state.list.all()) {
      if (parser.socket && !parser.socket.destroyed) sockets.push(parser.socket);
    }
  } else {
    for (const socket of state.sockets) if (socket.parser && !socket.destroyed) sockets.push(socket);
  }
  return sockets;
}

/**
 * Drains a server followed by trackKeepAlive: the response being written says `Connection:
 * close` if its head is not out yet, every later one does (Node then closes the connection
 * after it), and a connection that stays without a request for IDLE_GRACE_MS is closed. Node's
 * own server.close() closes idle connections at once, which fails the request a client is
 * sending at that moment: it is turned off for this server.
 */
function drainKeepAlive(server) {
  const state = server[kDrain];
  if (!state || state.draining) return;
  state.draining = true;
  server.closeIdleConnections = () => {};
  // First of the 'request' listeners: the application's may answer at once, and the head of
  // the response must say `Connection: close` before it is written.
  server.prependListener('request', (req, res) => { res.shouldKeepAlive = false; });
  const marks = new Map();
  const now = Date.now();
  for (const socket of openConnections(state)) {
    // The response a connection is writing now (Node's own record of it).
    const res = socket._httpMessage;
    if (res && !res.headersSent) res.shouldKeepAlive = false;
    marks.set(socket, { since: now, bytes: socket.bytesRead });
  }
  const check = () => {
    const at = Date.now();
    for (const [socket, mark] of marks) {
      if (socket.destroyed) {
        marks.delete(socket);
      } else if (socket._httpMessage || socket.bytesRead !== mark.bytes) {
        // A response in progress, or bytes of a request: busy, not idle.
        mark.bytes = socket.bytesRead;
        mark.since = at;
      } else if (at - mark.since >= IDLE_GRACE_MS) {
        marks.delete(socket);
        socket.end(() => socket.destroy());
      }
    }
    if (marks.size === 0) clearInterval(state.timer);
  };
  state.timer = setInterval(check, IDLE_CHECK_MS);
  state.timer.unref();
}

// The `type` argument of TCP and Pipe handles for a connected socket (their constants
// SOCKET, both 0).
const HANDLE_SOCKET = 0;

/**
 * Closes a server once its own listening socket (the kernel's turns, `shared`) has no
 * connection waiting in it. The kernel accepted those for their clients, and closing the
 * socket would reset them; at a stop the primary has already made the socket refuse new ones,
 * so the event loop's accepts empty it within a few turns. Bounded: a socket that keeps
 * filling (no refusal, an old kernel) is closed after MAX_EMPTYING_TURNS turns anyway.
 */
function closeWhenEmptied(server) {
  // A listening server (its handle), or an AcceptHandle of a shared listener itself.
  const fd = server._handle ? server._handle.fd : server.fd;
  const listening = () => (server._handle ? server.listening : server._open);
  if (typeof fd !== 'number' || fd < 0) {
    server.close();
    return;
  }
  let turns = 0;
  const step = () => {
    if (!listening()) return;
    if (turns++ < MAX_EMPTYING_TURNS && native.listenerHasQueued(fd)) setImmediate(step);
    else server.close();
  };
  step();
}

function closeFd(fd) {
  try { fs.closeSync(fd); } catch { /* already closed */ }
}

/** Node's `server.listen()` address as the core names it. */
function addressText(address, port, addressType) {
  if (addressType === -1) return `unix:${address}`;
  if (!address) return `0.0.0.0:${port}`;
  if (addressType === 6 || address.includes(':')) return `[${address}]:${port}`;
  return `${address}:${port}`;
}

function parseAddress(text) {
  const m = /^\[?(.*?)\]?:(\d+)$/.exec(text);
  if (!m) return null;
  return { address: m[1], family: m[1].includes(':') ? 'IPv6' : 'IPv4', port: Number(m[2]) };
}

/** A stand-in for a listening handle whose connections come from the primary. */
class PrimaryHandle {
  constructor(worker, server, listening) {
    this._worker = worker;
    this._server = server;
    this._name = listening.name;
    const addr = parseAddress(listening.address);
    if (addr) {
      // Only TCP listeners answer getsockname; a Unix one reports its path, as Pipe does.
      this.getsockname = (out) => { Object.assign(out, addr); return 0; };
    }
  }

  listen() { return 0; }

  // The server stays in the worker's table: connections the primary handed over before it
  // heard of the close still reach it (an http.Server serves them), instead of being dropped.
  close(callback) {
    if (typeof callback === 'function') process.nextTick(callback);
  }

  ref() {}

  unref() {}
}

/**
 * The listening handle of a server on a socket all workers share (`shared`): one connection
 * accepted per turn of the event loop, so that the next waits in the socket for whichever
 * worker is free first, and with the listener's share map, the shares kept level (see
 * NativeAcceptor). Node's own server would take every waiting connection at each turn.
 */
class AcceptHandle {
  /**
   * `acceptor` (a NativeAcceptor) owns the socket. `listening`: the listener's `address` (or
   * ""), and whether the primary knows this worker `listened` (it is told when it stops).
   */
  constructor(worker, server, name, acceptor, listening, turns = true) {
    this._worker = worker;
    this._server = server;
    this._name = name;
    this.fd = acceptor.fd;
    this._acceptor = acceptor;
    // With `turns`, the share map counts the connections it has in hand: while it has none, a
    // worker that took more leaves it the next one (requests one after the other go to the
    // workers in turn). Without, whoever looks first takes (SCHED_NONE: the system decides).
    this._inHand = turns && acceptor.countInHand();
    // At its server's maxConnections it stops taking (see _take) until a connection closes.
    this._full = false;
    this._onRoom = () => this._room();
    this._release = () => {
      acceptor.closed();
      // The server counts the close right after the handle's.
      if (this._full) process.nextTick(this._onRoom);
    };
    this._deferred = acceptor.deferred;
    // How long it stops watching after leaving a connection to the others (the core decides).
    this._deferMs = acceptor.deferMs;
    this._open = true;
    this._timer = null;
    this._onAccept = (fd) => this._accepted(fd);
    // A server that wants Nagle's algorithm off (http's do) gets it from the listening socket,
    // which its connections inherit: no system call per connection. (The socket is every
    // worker's: a server on the same listener that did not ask gets it too.)
    this._noDelay = Boolean(server.noDelay) && noDelayOn(acceptor);
    this._listened = listening.listened;
    const addr = parseAddress(listening.address);
    if (addr) this.getsockname = (out) => { Object.assign(out, addr); return 0; };
  }

  listen() {
    this._acceptor.watch(this._onAccept);
    return 0;
  }

  _accepted(fd) {
    if (Array.isArray(fd)) {
      // A long queue: several connections this turn (see NativeAcceptor). Those after the
      // one that took the server to its maxConnections are refused, as net refuses them.
      for (const one of fd) this._take(one);
    } else if (fd >= 0) {
      this._take(fd);
    } else if (fd === this._deferred) {
      this._pause(this._deferMs);
    } else if (PAUSE_ON.has(util.getSystemErrorName(fd))) {
      // Out of descriptors or memory: the connections wait in the socket (or for another
      // worker) instead of the loop spinning on a socket it cannot take from.
      this._pause(ACCEPT_PAUSE_MS);
    } else if (fd !== -os.constants.errno.EAGAIN) {
      const code = util.getSystemErrorName(fd);
      const err = new Error(`accept ${code}: accepting on listener ${this._name} failed`);
      Object.assign(err, { code, errno: fd, syscall: 'accept' });
      this._pause(ACCEPT_PAUSE_MS);
      this._server.emit('error', err);
    }
  }

  _take(fd) {
    const socket = this._worker._adopt(this._server, this._name, fd, this._noDelay);
    if (!this._inHand) {
      if (socket) this._server.emit('connection', socket);
    } else if (!socket) {
      this._acceptor.closed(); // refused (maxConnections) and closed already
    } else {
      onceClosed(socket._handle, this._release);
      this._server.emit('connection', socket);
      // With turns, a server at its maxConnections stops taking until one of its connections
      // closes: the next ones wait in the socket for the other workers, or for room here. A
      // worker of Node's round-robin refuses them, and its primary gives them to another
      // worker; refusing them here would drop connections other workers could serve.
      if (atLimit(this._server)) this._fill();
    }
  }

  _pause(ms) {
    if (!this._open || this._timer || this._full) return;
    this._acceptor.stop();
    this._timer = setTimeout(() => {
      this._timer = null;
      if (this._open && !this._full) this._acceptor.watch(this._onAccept);
    }, ms);
  }

  /** At the server's maxConnections: stops watching until there is room (see _room). */
  _fill() {
    if (!this._open || this._full) return;
    this._full = true;
    clearTimeout(this._timer);
    this._timer = null;
    this._acceptor.stop();
  }

  /** A connection closed: watches again if the server has room now. */
  _room() {
    if (!this._open || !this._full || atLimit(this._server)) return;
    this._full = false;
    this._acceptor.watch(this._onAccept);
  }

  close(callback) {
    if (this._open) {
      this._open = false;
      clearTimeout(this._timer);
      const worker = this._worker;
      if (worker._servers.get(this._name) === this._server) worker._servers.delete(this._name);
      if (this._listened) worker._unlisten(this._name);
      this._acceptor.close();
    }
    if (typeof callback === 'function') process.nextTick(callback);
  }

  ref() { this._acceptor.setRef(true); }

  unref() { this._acceptor.setRef(false); }
}

/** Whether `server` has as many connections as its maxConnections allows (net's reading). */
function atLimit(server) {
  return Boolean(server.maxConnections) && server._connections >= server.maxConnections;
}

/**
 * Whether `acceptor` turned Nagle's algorithm off on its listening socket (else each
 * connection is set on its own, as net does).
 */
function noDelayOn(acceptor) {
  try {
    return acceptor.noDelay();
  } catch {
    return false;
  }
}

/**
 * Calls `done` once when connection `handle` closes: every way out of a socket (end, destroy,
 * an error, a refusal before any socket exists) closes its handle. At once for a handle that
 * cannot be followed.
 */
function onceClosed(handle, done) {
  if (!handle || typeof handle.close !== 'function') {
    done();
    return;
  }
  const close = handle.close;
  let open = true;
  handle.close = function closeCounted(...args) {
    if (open) {
      open = false;
      done();
    }
    return close.apply(this, args);
  };
}

/**
 * Makes server.listen() in this worker ask the primary for the listener, as Node's cluster
 * does for its workers: net.Server calls _listen2 once the address is resolved, and uses a
 * handle that is already set.
 */
function patchListen(worker, dispatch, turns) {
  const original = net.Server.prototype._listen2;
  net.Server.prototype._listen2 = function listenThroughPrimary(address, port, addressType, backlog, fd, flags) {
    if (this._handle || (typeof fd === 'number' && fd >= 0) || !worker._connected) {
      return original.call(this, address, port, addressType, backlog, fd, flags);
    }
    trackKeepAlive(this);
    const text = addressText(address, port, addressType);
    let listening;
    try {
      listening = worker._link.listen(text, dispatch, true);
      // Frames that came in while listen() waited for its answer (connections of this very
      // listener, among others) are kept in memory: no readable descriptor announces them.
      setImmediate(() => worker._pump());
    } catch (e) {
      const err = listenError(e, address, port, addressType);
      process.nextTick(() => this.emit('error', err));
      return undefined;
    }
    if (typeof listening.fd === 'number' && dispatch === 'shared') {
      // `shared`: this worker accepts on the socket every worker has, one connection a turn.
      const counter = listening.counter ? worker._link.takeTurnCounter() : null;
      const acceptor = new native.NativeAcceptor(listening.fd, counter);
      this._handle = new AcceptHandle(worker, this, listening.name, acceptor,
        { address: listening.address, listened: true }, turns);
      worker._servers.set(listening.name, this);
      original.call(this, address, port, addressType, backlog, fd, flags);
    } else if (typeof listening.fd === 'number') {
      // Round-robin turned by the kernel: the primary handed this worker's own listening
      // socket and this worker accepts on it. The primary may still hand over a connection
      // (one that waited in the socket of a worker that died), and it must hear at once when
      // the server stops accepting (the handle's close, not the server's 'close', which waits
      // for the open connections): until then, the kernel keeps giving this worker its turns.
      original.call(this, null, null, addressType, backlog, listening.fd, flags);
      countConnections(worker, this, listening);
      worker._servers.set(listening.name, this);
      unlistenOnClose(worker, this, listening.name);
    } else {
      this._handle = new PrimaryHandle(worker, this, listening);
      worker._servers.set(listening.name, this);
      original.call(this, address, port, addressType, backlog, fd, flags);
    }
    const where = parseAddress(listening.address);
    const info = where
      ? { address: where.address, port: where.port, addressType: where.family === 'IPv6' ? 6 : 4 }
      : { address: listening.address.replace(/^unix:/, ''), port: -1, addressType: -1 };
    worker._control({ act: 'listening', address: info });
    return undefined;
  };
}

/**
 * For a listener the kernel turns: takes one off this worker's count when a connection
 * accepted from its socket closes. The kernel adds one per connection it gives the socket, so
 * the count is the connections this worker has in hand or waiting for it, and the kernel
 * gives the next one to a worker with fewer. (At accept would count the accept queue only,
 * which Node empties at once whatever its JS has in hand.) The close is that of the accepted
 * handle, which every way out passes: the socket's destroy, and a refusal (maxConnections)
 * before any socket exists. The connections the primary hands over (which were never counted)
 * do not pass here.
 */
function countConnections(worker, server, listening) {
  const handle = server._handle;
  const counter = listening.counter ? worker._link.takeTurnCounter() : null;
  if (!counter || !handle || typeof handle.onconnection !== 'function') return;
  const onconnection = handle.onconnection;
  handle.onconnection = function countedConnection(err, clientHandle) {
    if (!err && clientHandle) onceClosed(clientHandle, () => counter.done());
    return onconnection.call(this, err, clientHandle);
  };
}

/**
 * Tells the primary when `server` stops accepting on a socket it handed over: at the close of
 * the handle (server.close()), not at the server's 'close', which waits for its connections.
 */
/**
 * Makes `server.close()` of a served server (one that does not listen itself) stop this
 * worker's share of the listeners that feed it, as closing a listening server does.
 */
function stopServingOnClose(worker, server) {
  if (server._rclusterServed) return;
  server._rclusterServed = true;
  const close = server.close;
  server.close = function closeServed(...args) {
    worker._stopServing(server);
    return close.apply(this, args);
  };
}

function unlistenOnClose(worker, server, name) {
  const handle = server._handle;
  if (!handle || typeof handle.close !== 'function') return;
  const close = handle.close;
  handle.close = function closeAndUnlisten(...args) {
    if (worker._servers.get(name) === server) worker._servers.delete(name);
    worker._unlisten(name);
    return close.apply(this, args);
  };
}

/**
 * The error of a server.listen() that the primary refused, as Node's cluster gives it: the
 * primary binds, so the system call is `bind`, with the code, errno, address and port. Its
 * text is the primary's, which names the address (Node's ends with it).
 */
function listenError(e, address, port, addressType) {
  const inUse = /in use/i.test(e.message);
  const denied = /permission/i.test(e.message);
  const code = inUse ? 'EADDRINUSE' : denied ? 'EACCES' : e.code;
  const where = addressType === -1 ? address : `${address || '0.0.0.0'}:${port}`;
  const text = e.message.includes(where) ? e.message : `${e.message} ${where}`;
  const err = new Error(`bind ${code}: ${text}`);
  err.code = code;
  err.errno = inUse || denied ? -os.constants.errno[code] : undefined;
  err.syscall = 'bind';
  err.address = address;
  if (addressType !== -1) err.port = port;
  return err;
}

/**
 * Connects to the primary when this process is an rcluster worker; null otherwise.
 * Under the `cluster`-compatible primary, waits (briefly) for the per-worker environment
 * that `fork(env)` gave, so that it is in process.env before the program reads it.
 */
function attach() {
  const link = native.attachWorker();
  if (!link) return null;
  const compat = process.env.RCLUSTER_NODE_COMPAT === '1';
  const early = [];
  if (compat) {
    const deadline = Date.now() + INIT_TIMEOUT_MS;
    for (;;) {
      const left = deadline - Date.now();
      if (left <= 0) break;
      const item = link.nextEvent(left);
      if (item === null || item === undefined) break;
      if (item.type === 'binding') {
        const c = codec.bindingMessage(item.data) || {};
        if (c.act === 'init') {
          Object.assign(process.env, c.env);
          break;
        }
      }
      early.push(item);
    }
  }
  const worker = new WorkerSelf(link, compat);
  // The primary's choice (see cluster.js); from an older primary, by scheduling policy.
  const asked = process.env.RCLUSTER_NODE_DISPATCH;
  const dispatch = asked === 'rr' || asked === 'shared' ? asked
    : process.env.RCLUSTER_NODE_SCHED === 'none' ? 'shared' : 'rr';
  patchListen(worker, dispatch, process.env.RCLUSTER_NODE_SCHED !== 'none');
  process.send = (message, handle, options, callback) => worker.send(message, handle, options, callback);
  process.connected = true;
  process.disconnect = () => { worker.disconnect(); };
  worker._start();
  if (early.length) setImmediate(() => early.forEach((item) => worker._item(item)));
  return worker;
}

module.exports = { attach };

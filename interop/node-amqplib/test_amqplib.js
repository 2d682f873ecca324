#!/usr/bin/env node
// amqplib interop checks for an AMQP 0-9-1 broker (Warren, or RabbitMQ as the reference).
//
// Usage: INTEROP_AMQPLIB_DIR=.../node_modules/amqplib NODE_PATH=.../node_modules \
//            node test_amqplib.js amqp://guest:guest@127.0.0.1:5672/%2f
// (run.sh sets both).
//
// Runs the examples that amqplib ships in its package, unmodified, each as its own node process
// with redirect.js preloaded so that their amqp.connect('amqp://localhost') reaches the broker
// under test: the RabbitMQ tutorials 1-6 in the promise and the callback API, headers.js,
// waitForConfirms.js, send_generators.js, receive_generator.js and direct_reply_to_*.js. The
// long-running ones (receivers, workers, servers) are driven: started, fed by the senders, read,
// then stopped with SIGINT, after which they must exit by themselves. Then checks of its own:
// confirm channels, mandatory returns, reply codes. Every check prints "ok NAME" or
// "FAIL NAME: REASON"; the last line is "N passed, N failed".
//
// The examples use fixed names (hello, task_queue, logs, ...): each check deletes the ones it
// uses before and after it runs. The checks of our own use names with a random suffix.

'use strict';

const { spawn } = require('node:child_process');
const crypto = require('node:crypto');
const path = require('node:path');
const amqp = require('amqplib');
const amqpCallback = require('amqplib/callback_api');

const CHECK_TIMEOUT = 30000; // ms one check may take before it counts as failed
const AMQPLIB_DIR = process.env.INTEROP_AMQPLIB_DIR;
const EXAMPLES = path.join(AMQPLIB_DIR || '', 'examples');
const TUTORIALS = path.join(EXAMPLES, 'tutorials');
const REDIRECT = path.join(__dirname, 'redirect.js');
const RUN = crypto.randomBytes(4).toString('hex');
const CHECKS = [];
const RUNNING = new Set(); // example processes not yet exited
let URL = '';

// Names the examples declare; deleted before and after the checks that run them.
const EXAMPLE_QUEUES = ['hello', 'task_queue', 'rpc_queue'];
const EXAMPLE_EXCHANGES = ['logs', 'direct_logs', 'topic_logs', 'matching exchange'];

function name(what) {
  return `interop-amqplib-${what}-${RUN}`;
}

function check(checkName, fn) {
  CHECKS.push({ name: checkName, fn });
}

function expect(cond, what) {
  if (!cond) throw new AssertionError(what);
}

function expectEq(got, want, what) {
  const g = JSON.stringify(got);
  const w = JSON.stringify(want);
  if (g !== w) throw new AssertionError(`${what}: expected ${w}, got ${g}`);
}

class AssertionError extends Error {}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(cond, timeout, what) {
  const deadline = Date.now() + timeout;
  while (!cond()) {
    if (Date.now() > deadline) throw new AssertionError(`${what} (waited ${timeout} ms)`);
    await sleep(20);
  }
}

// A process's output for a failure message: its start (where an error says what it is) and end.
function indent(text) {
  let all = text.trimEnd().split('\n');
  if (all.length > 16) all = [...all.slice(0, 12), '...', ...all.slice(-3)];
  return all.map((l) => `    | ${l}`).join('\n');
}

// --- example processes ---------------------------------------------------------------------

class Example {
  constructor(ctx, file, args = [], { stdin = false } = {}) {
    this.label = [path.relative(EXAMPLES, file), ...args].join(' ');
    this.out = '';
    this.code = undefined;
    this.signal = undefined;
    this.proc = spawn(process.execPath, ['--require', REDIRECT, file, ...args], {
      cwd: path.dirname(file),
      env: { ...process.env, INTEROP_AMQP_URL: URL },
      stdio: [stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'],
    });
    this.proc.stdout.on('data', (d) => {
      this.out += d;
    });
    this.proc.stderr.on('data', (d) => {
      this.out += d;
    });
    this.exited = new Promise((resolve) => {
      this.proc.on('exit', (code, signal) => {
        this.code = code;
        this.signal = signal;
        resolve(code);
      });
    });
    ctx.examples.push(this);
    RUNNING.add(this);
    this.exited.then(() => RUNNING.delete(this));
  }

  running() {
    return this.code === undefined && this.signal === undefined;
  }

  describe() {
    const state = this.running() ? 'still running' : `exited ${this.code ?? this.signal}`;
    return `${this.label} (${state}), output:\n${indent(this.out || '(none)')}`;
  }

  lines() {
    return this.out.split('\n').map((l) => l.trimEnd());
  }

  count(line) {
    return this.lines().filter((l) => l === line).length;
  }

  async waitFor(what, timeout = 5000) {
    const match = () => (typeof what === 'string' ? this.lines().includes(what) : what.test(this.out));
    const deadline = Date.now() + timeout;
    while (!match()) {
      if (!this.running()) throw new AssertionError(`no ${JSON.stringify(String(what))} from ${this.describe()}`);
      if (Date.now() > deadline) {
        throw new AssertionError(`no ${JSON.stringify(String(what))} within ${timeout} ms from ${this.describe()}`);
      }
      await sleep(20);
    }
  }

  async waitExit(timeout = 10000) {
    const timer = sleep(timeout).then(() => 'timeout');
    const result = await Promise.race([this.exited, timer]);
    if (result === 'timeout') throw new AssertionError(`did not exit within ${timeout} ms: ${this.describe()}`);
    return this.code;
  }

  // The run-to-completion examples: must exit 0 by themselves.
  async finishes(timeout = 10000) {
    await this.waitExit(timeout);
    expect(this.code === 0, `expected exit status 0: ${this.describe()}`);
    return this;
  }

  // The long-running examples install a SIGINT handler that closes the channel and connection,
  // after which node exits 0 with nothing left to do.
  async interrupt(timeout = 5000) {
    if (this.running()) this.proc.kill('SIGINT');
    try {
      await this.waitExit(timeout);
    } catch (_e) {
      throw new AssertionError(`did not exit within ${timeout} ms of SIGINT: ${this.describe()}`);
    }
    expect(this.code === 0, `expected exit status 0 after SIGINT: ${this.describe()}`);
  }

  kill() {
    if (this.running()) this.proc.kill('SIGKILL');
  }
}

function example(ctx, file, ...args) {
  return new Example(ctx, file, args);
}

async function runExample(ctx, file, ...args) {
  return new Example(ctx, file, args).finishes();
}

// --- broker helpers (our own connections) ---------------------------------------------------

class Ctx {
  constructor() {
    this.examples = [];
    this.connections = [];
    this.cleanups = [];
  }

  async connect(url = URL) {
    const conn = await amqp.connect(url);
    conn.on('error', () => {}); // a connection-level error is reported by the check itself
    this.connections.push(conn);
    return conn;
  }

  async channel() {
    const conn = await this.connect();
    const ch = await conn.createChannel();
    ch.on('error', () => {});
    return ch;
  }

  onExit(fn) {
    this.cleanups.push(fn);
  }

  async close() {
    for (const e of this.examples) e.kill();
    for (const fn of this.cleanups.reverse()) {
      try {
        await fn();
      } catch (_e) {}
    }
    for (const conn of this.connections) {
      try {
        await conn.close();
      } catch (_e) {}
    }
  }
}

// Deletes the queues and exchanges the examples declare, each on a channel of its own (a failed
// delete closes its channel).
async function resetExampleNames() {
  const conn = await amqp.connect(URL);
  conn.on('error', () => {});
  try {
    for (const q of EXAMPLE_QUEUES) {
      const ch = await conn.createChannel();
      ch.on('error', () => {});
      try {
        await ch.deleteQueue(q);
        await ch.close();
      } catch (_e) {}
    }
    for (const x of EXAMPLE_EXCHANGES) {
      const ch = await conn.createChannel();
      ch.on('error', () => {});
      try {
        await ch.deleteExchange(x);
        await ch.close();
      } catch (_e) {}
    }
  } finally {
    await conn.close();
  }
}

function exampleCheck(checkName, fn) {
  check(checkName, async (ctx) => {
    await resetExampleNames();
    ctx.onExit(resetExampleNames);
    await fn(ctx);
  });
}

// Expects `promise` to reject with an AMQP error `code` whose message contains `text`.
async function expectAmqpError(promise, code, text, what) {
  let err = null;
  try {
    await promise;
  } catch (e) {
    err = e;
  }
  expect(err !== null, `${what}: succeeded, expected ${code}`);
  expect(err.code === code, `${what}: expected reply code ${code}, got ${err.code}: ${err.message}`);
  expect(err.message.includes(text), `${what}: expected ${JSON.stringify(text)} in ${JSON.stringify(err.message)}`);
  return err;
}

// --- the tutorials, in both APIs --------------------------------------------------------------

for (const api of ['promise', 'callback']) {
  const dir = api === 'promise' ? TUTORIALS : path.join(TUTORIALS, 'callback_api');
  const tut = (file) => path.join(dir, file);
  const suffix = api === 'promise' ? '' : '_callback_api';

  exampleCheck(`tutorial_1_hello_world${suffix}`, async (ctx) => {
    const receiver = example(ctx, tut('receive.js'));
    await receiver.waitFor(/Waiting for/);
    const sender = await runExample(ctx, tut('send.js'));
    expect(sender.lines().includes(" [x] Sent 'Hello World!'"), `send.js output: ${sender.describe()}`);
    await receiver.waitFor(" [x] Received 'Hello World!'");
    await sleep(200);
    expectEq(receiver.count(" [x] Received 'Hello World!'"), 1, 'messages received');
    await receiver.interrupt();
  });

  exampleCheck(`tutorial_2_work_queues${suffix}`, async (ctx) => {
    const workers = [example(ctx, tut('worker.js')), example(ctx, tut('worker.js'))];
    for (const w of workers) await w.waitFor(/Waiting for messages/);
    const tasks = ['first task.', 'second task', 'third task', 'fourth task'];
    for (const t of tasks) {
      const sender = await runExample(ctx, tut('new_task.js'), t);
      expect(sender.lines().includes(` [x] Sent '${t}'`), `new_task.js output: ${sender.describe()}`);
    }
    const done = () => workers.reduce((n, w) => n + w.count(' [x] Done'), 0);
    await until(() => done() >= tasks.length, 8000, `tasks done: ${done()} of ${tasks.length}`);
    await sleep(200);
    expectEq(done(), tasks.length, 'tasks done');
    for (const t of tasks) {
      const n = workers.reduce((sum, w) => sum + w.count(` [x] Received '${t}'`), 0);
      expectEq(n, 1, `deliveries of '${t}'`);
    }
    for (const w of workers) {
      expect(w.count(' [x] Done') >= 1, `each worker gets tasks (round robin): ${w.describe()}`);
    }
    for (const w of workers) await w.interrupt();
    const ch = await ctx.channel();
    expectEq((await ch.checkQueue('task_queue')).messageCount, 0, 'messages left in task_queue');
  });

  exampleCheck(`tutorial_3_publish_subscribe${suffix}`, async (ctx) => {
    const receivers = [example(ctx, tut('receive_logs.js')), example(ctx, tut('receive_logs.js'))];
    for (const r of receivers) await r.waitFor(/Waiting for logs/);
    const text = `info: run ${RUN}`;
    await runExample(ctx, tut('emit_log.js'), text);
    for (const r of receivers) await r.waitFor(` [x] '${text}'`);
    await sleep(200);
    for (const r of receivers) expectEq(r.count(` [x] '${text}'`), 1, 'copies per subscriber');
    for (const r of receivers) await r.interrupt();
  });

  // The callback-API receivers bind only after printing "Waiting for logs": publish the first
  // message until it arrives, which shows the bindings are in place.
  async function emitUntilReceived(ctx, emitter, receiver, key, text, line) {
    const deadline = Date.now() + 5000;
    for (;;) {
      await runExample(ctx, emitter, key, text);
      try {
        await receiver.waitFor(line, 300);
        return;
      } catch (e) {
        if (Date.now() > deadline) throw e;
      }
    }
  }

  exampleCheck(`tutorial_4_routing${suffix}`, async (ctx) => {
    const receiver = example(ctx, tut('receive_logs_direct.js'), 'warning', 'error');
    await receiver.waitFor(/Waiting for logs/);
    const emit = tut('emit_log_direct.js');
    await emitUntilReceived(ctx, emit, receiver, 'error', `ready ${RUN}`, ` [x] error:'ready ${RUN}'`);
    const sent = [
      ['info', `an info ${RUN}`],
      ['warning', `a warning ${RUN}`],
      ['debug', `a debug ${RUN}`],
      ['error', `an error ${RUN}`],
    ];
    for (const [key, text] of sent) await runExample(ctx, emit, key, text);
    await receiver.waitFor(` [x] error:'an error ${RUN}'`);
    await sleep(200);
    expectEq(receiver.count(` [x] warning:'a warning ${RUN}'`), 1, 'warning deliveries');
    expectEq(receiver.count(` [x] error:'an error ${RUN}'`), 1, 'error deliveries');
    expectEq(receiver.count(` [x] info:'an info ${RUN}'`), 0, 'info deliveries (not bound)');
    expectEq(receiver.count(` [x] debug:'a debug ${RUN}'`), 0, 'debug deliveries (not bound)');
    await receiver.interrupt();
  });

  exampleCheck(`tutorial_5_topics${suffix}`, async (ctx) => {
    const receiver = example(ctx, tut('receive_logs_topic.js'), 'kern.*', '*.critical');
    await receiver.waitFor(/Waiting for logs/);
    const emit = tut('emit_log_topic.js');
    await emitUntilReceived(ctx, emit, receiver, 'kern.ready', `ready ${RUN}`, ` [x] kern.ready:'ready ${RUN}'`);
    const sent = [
      ['kern.critical', 'matches both patterns', 1],
      ['auth.critical', 'matches *.critical', 1],
      ['kern.info', 'matches kern.*', 1],
      ['kern.disk.full', 'too many words for kern.*', 0],
      ['quick.orange.rabbit', 'matches nothing', 0],
      ['critical', 'too few words for *.critical', 0],
      ['kern.done', `done ${RUN}`, 1],
    ];
    for (const [key, text] of sent) await runExample(ctx, emit, key, text);
    await receiver.waitFor(` [x] kern.done:'done ${RUN}'`);
    await sleep(200);
    for (const [key, text, n] of sent) expectEq(receiver.count(` [x] ${key}:'${text}'`), n, `deliveries of ${key}`);
    await receiver.interrupt();
  });

  exampleCheck(`tutorial_6_rpc${suffix}`, async (ctx) => {
    const server = example(ctx, tut('rpc_server.js'));
    await server.waitFor(/Awaiting RPC requests/);
    for (const [n, fib] of [
      [10, 55],
      [30, 832040],
    ]) {
      const client = await runExample(ctx, tut('rpc_client.js'), String(n));
      expect(client.lines().includes(` [.] Got ${fib}`), `rpc_client.js ${n}: ${client.describe()}`);
      await server.waitFor(` [.] fib(${n})`);
    }
    await server.interrupt();
  });
}

// --- the other examples -----------------------------------------------------------------------

exampleCheck('example_headers', async (ctx) => {
  const ex = example(ctx, path.join(EXAMPLES, 'headers.js'));
  await ex.waitFor(/To exit press CTRL\+C/);
  await until(() => ex.count('hello') >= 2, 5000, `two 'hello' from ${ex.describe()}`);
  await sleep(300);
  expectEq(ex.count('hello'), 2, "'hello' messages (x-match any: one per matching header)");
  expectEq(ex.count('lost'), 0, "'lost' messages (no matching header)");
  await ex.interrupt();
});

exampleCheck('example_waitForConfirms', async (ctx) => {
  const ex = await runExample(ctx, path.join(EXAMPLES, 'waitForConfirms.js'));
  expect(ex.lines().includes('All messages done'), `waitForConfirms.js: ${ex.describe()}`);
});

exampleCheck('example_send_generators', async (ctx) => {
  const ex = await runExample(ctx, path.join(EXAMPLES, 'send_generators.js'));
  expect(ex.lines().includes(" [x] Sent 'Hello World!'"), `send_generators.js: ${ex.describe()}`);
  const ch = await ctx.channel();
  expectEq((await ch.checkQueue('hello')).messageCount, 1, "messages in 'hello'");
});

exampleCheck('example_receive_generator', async (ctx) => {
  const ex = new Example(ctx, path.join(EXAMPLES, 'receive_generator.js'), [], { stdin: true });
  await ex.waitFor(/consuming message "Hello World!" in generator/);
  ex.proc.stdin.write('\n'); // "newline to exit"
  await ex.finishes(5000);
});

// Needs RabbitMQ's direct reply-to pseudo-queue amq.rabbitmq.reply-to.
exampleCheck('example_direct_reply_to', async (ctx) => {
  const server = example(ctx, path.join(EXAMPLES, 'direct_reply_to_server.js'));
  await server.waitFor(/To exit press CTRL\+C/);
  const client = await runExample(ctx, path.join(EXAMPLES, 'direct_reply_to_client.js'));
  expect(client.lines().includes(' [.] pong'), `direct_reply_to_client.js: ${client.describe()}`);
  await server.waitFor(' [X] ping');
  await server.interrupt();
});

// --- checks of our own ------------------------------------------------------------------------

check('confirm_channel_wait_for_confirms', async (ctx) => {
  const conn = await ctx.connect();
  const ch = await conn.createConfirmChannel();
  const queue = name('confirms');
  await ch.assertQueue(queue, { exclusive: true });
  const results = [];
  for (let i = 0; i < 100; i++) {
    ch.sendToQueue(queue, Buffer.from(`confirmed ${i}`), { persistent: i % 2 === 0 }, (err) => results.push(err));
  }
  await ch.waitForConfirms();
  expectEq(results.length, 100, 'publish callbacks called');
  expect(
    results.every((e) => e === null || e === undefined),
    'every publish acked',
  );
  expectEq((await ch.checkQueue(queue)).messageCount, 100, 'messages in the queue');
  // a second batch on the same channel: delivery tags carry on
  const more = [];
  for (let i = 0; i < 10; i++) ch.publish('amq.direct', name('nobody'), Buffer.from('dropped'), {}, (err) => more.push(err));
  await ch.waitForConfirms();
  expectEq(more.length, 10, 'callbacks for unroutable publishes (acked, then dropped)');
  expect(
    more.every((e) => e === null || e === undefined),
    'unroutable publishes are acked',
  );
});

check('confirm_channel_publish_to_missing_exchange', async (ctx) => {
  const conn = await ctx.connect();
  const ch = await conn.createConfirmChannel();
  const closed = new Promise((resolve) => ch.on('close', resolve));
  const errors = [];
  ch.on('error', (e) => errors.push(e));
  const missing = name('no-such-exchange');
  let callbackErr;
  const called = new Promise((resolve) => {
    ch.publish(missing, 'anything', Buffer.from('lost'), {}, (err) => {
      callbackErr = err;
      resolve();
    });
  });
  await Promise.race([Promise.all([closed, called]), sleep(5000)]);
  expectEq(errors.length, 1, 'channel errors');
  expectEq(errors[0].code, 404, 'reply code');
  expect(
    errors[0].message.includes(`NOT_FOUND - no exchange '${missing}' in vhost '/'`),
    `reply text: ${errors[0].message}`,
  );
  expect(callbackErr instanceof Error, `publish callback gets an error, got ${callbackErr}`);
  const ch2 = await conn.createChannel();
  await ch2.assertQueue('', { exclusive: true });
});

check('mandatory_unroutable_returns', async (ctx) => {
  const conn = await ctx.connect();
  const ch = await conn.createConfirmChannel();
  const events = [];
  ch.on('return', (msg) => events.push(['return', msg]));
  const cases = [
    ['amq.direct', name('unbound-key')],
    ['', name('no-such-queue')],
  ];
  for (const [exchange, key] of cases) {
    events.length = 0;
    ch.publish(
      exchange,
      key,
      Buffer.from(`unroutable via '${exchange}'`),
      { mandatory: true, messageId: 'm-1', contentType: 'text/plain', headers: { 'x-n': 7 } },
      (err) => events.push(['confirm', err]),
    );
    await ch.waitForConfirms();
    await until(() => events.length >= 2, 2000, `return and confirm for '${exchange}'`);
    expectEq(
      events.map((e) => e[0]),
      ['return', 'confirm'],
      'basic.return comes before the confirm',
    );
    const msg = events[0][1];
    expectEq(msg.fields.replyCode, 312, 'reply code');
    expectEq(msg.fields.replyText, 'NO_ROUTE', 'reply text');
    expectEq(msg.fields.exchange, exchange, 'exchange');
    expectEq(msg.fields.routingKey, key, 'routing key');
    expectEq(msg.content.toString(), `unroutable via '${exchange}'`, 'returned body');
    expectEq(msg.properties.messageId, 'm-1', 'message id');
    expectEq(msg.properties.contentType, 'text/plain', 'content type');
    expectEq(msg.properties.headers, { 'x-n': 7 }, 'headers');
    expect(events[1][1] === null || events[1][1] === undefined, 'the returned message is still acked');
  }
  // not mandatory: dropped silently
  events.length = 0;
  ch.publish('amq.direct', name('unbound-key'), Buffer.from('dropped'), {}, (err) => events.push(['confirm', err]));
  await ch.waitForConfirms();
  await sleep(200);
  expectEq(
    events.map((e) => e[0]),
    ['confirm'],
    'events for a non-mandatory unroutable publish',
  );
});

check('get_nack_requeue_redelivers', async (ctx) => {
  const ch = await ctx.channel();
  const queue = name('nack');
  await ch.assertQueue(queue, { exclusive: true });
  ch.sendToQueue(queue, Buffer.from('again'));
  let msg = await ch.get(queue);
  for (let i = 0; !msg && i < 50; i++) {
    await sleep(20);
    msg = await ch.get(queue);
  }
  expect(msg, 'basic.get found nothing');
  expectEq(msg.fields.redelivered, false, 'first get redelivered');
  expectEq(msg.fields.messageCount, 0, 'message count after the get');
  ch.nack(msg, false, true);
  const again = await ch.get(queue);
  expect(again, 'basic.get after a requeueing nack found nothing');
  expectEq(again.content.toString(), 'again', 'body');
  expectEq(again.fields.redelivered, true, 'redelivered after nack');
  ch.ack(again);
  expectEq(await ch.get(queue), false, 'get on the empty queue');
});

check('check_queue_missing_404', async (ctx) => {
  const conn = await ctx.connect();
  const ch = await conn.createChannel();
  const closed = new Promise((resolve) => ch.on('close', resolve));
  ch.on('error', () => {});
  const missing = name('missing-queue');
  await expectAmqpError(ch.checkQueue(missing), 404, `NOT_FOUND - no queue '${missing}' in vhost '/'`, 'checkQueue');
  await closed;
  const ch2 = await conn.createChannel();
  const { queue } = await ch2.assertQueue('', { exclusive: true });
  expectEq((await ch2.checkQueue(queue)).messageCount, 0, 'checkQueue on a new channel');
});

check('check_exchange_missing_404', async (ctx) => {
  const conn = await ctx.connect();
  const ch = await conn.createChannel();
  ch.on('error', () => {});
  const missing = name('missing-exchange');
  await expectAmqpError(
    ch.checkExchange(missing),
    404,
    `NOT_FOUND - no exchange '${missing}' in vhost '/'`,
    'checkExchange',
  );
  const ch2 = await conn.createChannel();
  await ch2.checkExchange('amq.topic');
});

check('redeclare_inequivalent_406', async (ctx) => {
  const conn = await ctx.connect();
  const ch = await conn.createChannel();
  const queue = name('declared');
  await ch.assertQueue(queue, { durable: false, autoDelete: false });
  ctx.onExit(async () => {
    const c = await conn.createChannel();
    await c.deleteQueue(queue);
  });
  const ch2 = await conn.createChannel();
  ch2.on('error', () => {});
  await expectAmqpError(
    ch2.assertQueue(queue, { durable: true }),
    406,
    `PRECONDITION_FAILED - inequivalent arg 'durable' for queue '${queue}' in vhost '/': received 'true' but current is 'false'`,
    'assertQueue with another durable',
  );
});

check('exclusive_queue_other_connection_405', async (ctx) => {
  const owner = await (await ctx.connect()).createChannel();
  const queue = name('exclusive');
  await owner.assertQueue(queue, { exclusive: true });
  const other = await (await ctx.connect()).createChannel();
  other.on('error', () => {});
  await expectAmqpError(
    other.checkQueue(queue),
    405,
    `RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '${queue}' in vhost '/'`,
    'checkQueue from another connection',
  );
});

// amqplib reports a failed handshake as a plain Error (no .code): the message carries what the
// broker sent.
async function expectConnectRefused(promise, text, what) {
  let err = null;
  try {
    const conn = await promise;
    await conn.close();
  } catch (e) {
    err = e;
  }
  expect(err !== null, `${what}: the connection was accepted`);
  expect(err.message.includes(text), `${what}: expected ${JSON.stringify(text)} in ${JSON.stringify(err.message)}`);
}

check('unknown_vhost_refused', async (ctx) => {
  const u = new globalThis.URL(URL);
  u.pathname = `/${name('no-such-vhost')}`;
  // RabbitMQ answers connection.open with connection.close 530 NOT_ALLOWED, which amqplib
  // reports without the code
  await expectConnectRefused(
    amqp.connect(u.toString()),
    'Expected ConnectionOpenOk; got <ConnectionClose channel:0>',
    'connect to a missing vhost',
  );
  await ctx.channel();
});

check('wrong_password_403', async (ctx) => {
  const u = new globalThis.URL(URL);
  u.password = 'not-the-password';
  const text =
    'Handshake terminated by server: 403 (ACCESS-REFUSED) with message "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN.';
  await expectConnectRefused(amqp.connect(u.toString()), text, 'connect with a wrong password');
  // the callback API reports it the same way
  const err = await new Promise((resolve) => amqpCallback.connect(u.toString(), (e) => resolve(e)));
  expect(err && err.message.includes(text), `callback API: ${err && err.message}`);
  await ctx.channel();
});

// --- runner -------------------------------------------------------------------------------------

async function main() {
  if (process.argv.length !== 3 || !AMQPLIB_DIR) {
    console.error('usage: INTEROP_AMQPLIB_DIR=... test_amqplib.js AMQP_URL');
    return 2;
  }
  URL = process.argv[2];
  let passed = 0;
  let failed = 0;
  for (const { name: checkName, fn } of CHECKS) {
    const ctx = new Ctx();
    const started = Date.now();
    let timer;
    try {
      const timeout = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new AssertionError(`no result within ${CHECK_TIMEOUT / 1000} s`)), CHECK_TIMEOUT);
      });
      await Promise.race([fn(ctx), timeout]);
      console.log(`ok ${checkName}`);
      passed++;
    } catch (e) {
      const reason = e instanceof AssertionError ? e.message : e && e.stack ? e.stack : String(e);
      console.log(`FAIL ${checkName}: ${reason}`);
      failed++;
    } finally {
      clearTimeout(timer);
      await Promise.race([ctx.close(), sleep(10000)]);
    }
    const elapsed = (Date.now() - started) / 1000;
    if (elapsed > 5) console.log(`   (${checkName} took ${elapsed.toFixed(1)} s)`);
  }
  console.log(`${passed} passed, ${failed} failed`);
  return failed === 0 ? 0 : 1;
}

// An unexpected rejection or exception elsewhere (say, in a library callback) must not end the run
// before its summary: it is reported, and the check in progress fails by its own timeout or checks.
process.on('unhandledRejection', (e) => console.error('unhandled rejection:', e && e.stack ? e.stack : e));
process.on('uncaughtException', (e) => console.error('uncaught exception:', e && e.stack ? e.stack : e));

// Killed from outside (the suite timed out): take the example processes down too.
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    for (const e of RUNNING) e.kill();
    console.log(`FAIL runner: stopped by ${sig}`);
    process.exit(1);
  });
}

main().then(
  (code) => process.exit(code),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);

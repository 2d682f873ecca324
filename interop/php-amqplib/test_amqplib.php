<?php
// php-amqplib interop checks for an AMQP 0-9-1 broker (Warren, or RabbitMQ as the reference).
//
// Usage: php test_amqplib.php amqp://guest:guest@127.0.0.1:5672/%2f
//
// RabbitMQ's tutorials 1-6 written with php-amqplib (AMQPStreamConnection, which logs in with
// AMQPLAIN), plus publisher confirms (wait_for_pending_acks, and a publish to a missing exchange).
// Every check prints "ok NAME" or "FAIL NAME: REASON"; the last line is "N passed, N failed".
// Names carry a random suffix and the checks delete what they declare, so runs against a
// long-lived broker do not see each other's leftovers.

declare(strict_types=1);

require_once '/usr/share/php/PhpAmqpLib/autoload.php';

use PhpAmqpLib\Channel\AMQPChannel;
use PhpAmqpLib\Connection\AMQPStreamConnection;
use PhpAmqpLib\Exception\AMQPProtocolChannelException;
use PhpAmqpLib\Exception\AMQPTimeoutException;
use PhpAmqpLib\Message\AMQPMessage;

const CHECK_TIMEOUT = 30; // seconds one check may take before it counts as failed
const PERSISTENT = 2; // delivery-mode of a persistent message

final class CheckFailed extends Exception
{
}

final class CheckTimeout extends Exception
{
}

$URL = '';
$RUN = bin2hex(random_bytes(4));
$CHECKS = [];

/** A name unique to this run, so runs never see each other's queues or exchanges. */
function name(string $what): string
{
    global $RUN;
    return "interop-amqplib-$what-$RUN";
}

function check(string $name, callable $fn): void
{
    global $CHECKS;
    $CHECKS[$name] = $fn;
}

function expect(bool $cond, string $what): void
{
    if (!$cond) {
        throw new CheckFailed($what);
    }
}

function show($v): string
{
    return json_encode($v, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE);
}

function expect_eq($got, $want, string $what): void
{
    if ($got !== $want) {
        throw new CheckFailed("$what: expected " . show($want) . ', got ' . show($got));
    }
}

/** Per-check state: opens connections and closes whatever is left open afterwards. */
final class Ctx
{
    /** @var AMQPStreamConnection[] */
    public array $connections = [];
    /** @var callable[] */
    private array $cleanups = [];

    public function connect(): AMQPStreamConnection
    {
        global $URL;
        $u = parse_url($URL);
        $path = $u['path'] ?? '';
        $vhost = ($path === '' || $path === '/') ? '/' : rawurldecode(substr($path, 1));
        $conn = new AMQPStreamConnection(
            $u['host'] ?? 'localhost',
            $u['port'] ?? 5672,
            rawurldecode($u['user'] ?? 'guest'),
            rawurldecode($u['pass'] ?? 'guest'),
            $vhost,
            false,
            'AMQPLAIN',
            null,
            'en_US',
            10.0, // connection timeout
            10.0  // read/write timeout
        );
        $this->connections[] = $conn;
        return $conn;
    }

    public function channel(): AMQPChannel
    {
        return $this->connect()->channel();
    }

    public function onExit(callable $fn): void
    {
        $this->cleanups[] = $fn;
    }

    public function close(): void
    {
        foreach (array_reverse($this->cleanups) as $fn) {
            try {
                $fn();
            } catch (Throwable $e) {
                // best effort
            }
        }
        foreach ($this->connections as $conn) {
            try {
                if ($conn->isConnected()) {
                    $conn->close();
                }
            } catch (Throwable $e) {
                // best effort
            }
        }
    }
}

/**
 * Runs the I/O of `channels` until `until()` holds, then `settle` seconds more (to catch
 * deliveries that should not come). Fails if `until()` does not hold within `timeout`.
 *
 * @param AMQPChannel[] $channels
 */
function pump(array $channels, callable $until, float $timeout = 5.0, float $settle = 0.0): void
{
    $deadline = microtime(true) + $timeout;
    $step = function () use ($channels) {
        foreach ($channels as $ch) {
            try {
                $ch->wait(null, false, 0.02);
            } catch (AMQPTimeoutException $e) {
                // nothing arrived on this channel
            }
        }
    };
    while (!$until()) {
        if (microtime(true) > $deadline) {
            throw new CheckFailed("condition not reached within $timeout s");
        }
        $step();
    }
    $end = microtime(true) + $settle;
    while (microtime(true) < $end) {
        $step();
    }
}

/**
 * Consumes `queue` with auto-ack until `count` messages arrived (plus `settle` seconds for
 * extras that should not come); returns the bodies in arrival order.
 */
function collect(AMQPChannel $ch, string $queue, int $count, float $settle = 0.3): array
{
    $got = [];
    $tag = $ch->basic_consume($queue, '', false, true, false, false, function (AMQPMessage $m) use (&$got) {
        $got[] = $m->getBody();
    });
    pump([$ch], function () use (&$got, $count) {
        return count($got) >= $count;
    }, 5.0, $settle);
    $ch->basic_cancel($tag);
    return $got;
}

function message_count(AMQPChannel $ch, string $queue): int
{
    [, $count] = $ch->queue_declare($queue, true);
    return $count;
}

// --- RabbitMQ tutorials 1-6 -------------------------------------------------------------------

check('tutorial_1_hello_world', function (Ctx $ctx) {
    $ch = $ctx->channel();
    $queue = name('hello');
    $ch->queue_declare($queue, false, false, false, false);
    $ctx->onExit(function () use ($ch, $queue) {
        $ch->queue_delete($queue);
    });
    $ch->basic_publish(new AMQPMessage('Hello World!'), '', $queue);
    $received = [];
    $ch->basic_consume($queue, '', false, true, false, false, function (AMQPMessage $m) use (&$received) {
        $received[] = $m;
    });
    pump([$ch], function () use (&$received) {
        return count($received) >= 1;
    });
    $m = $received[0];
    expect_eq($m->getBody(), 'Hello World!', 'body');
    expect_eq($m->getExchange(), '', 'exchange');
    expect_eq($m->getRoutingKey(), $queue, 'routing key');
    expect(!$m->isRedelivered(), 'first delivery must not be redelivered');
});

check('tutorial_2_work_queues', function (Ctx $ctx) {
    $queue = name('task_queue');
    $producer = $ctx->channel();
    $producer->queue_declare($queue, false, true, false, false);
    $ctx->onExit(function () use ($producer, $queue) {
        $producer->queue_delete($queue);
    });
    $workers = [];
    for ($i = 0; $i < 2; $i++) {
        $ch = $ctx->channel();
        $ch->queue_declare($queue, false, true, false, false);
        $ch->basic_qos(0, 1, false);
        $w = new stdClass();
        $w->ch = $ch;
        $w->unacked = [];
        $w->done = [];
        $ch->basic_consume($queue, '', false, false, false, false, function (AMQPMessage $m) use ($w) {
            $w->unacked[] = $m;
        });
        $workers[] = $w;
    }
    for ($i = 0; $i < 4; $i++) {
        $producer->basic_publish(
            new AMQPMessage("task $i", ['delivery_mode' => AMQPMessage::DELIVERY_MODE_PERSISTENT]),
            '',
            $queue
        );
    }
    $chans = array_map(fn ($w) => $w->ch, $workers);
    // prefetch 1: each worker holds exactly one message until it acks
    pump($chans, function () use ($workers) {
        foreach ($workers as $w) {
            if (count($w->unacked) < 1) {
                return false;
            }
        }
        return true;
    }, 5.0, 0.3);
    $first = [];
    foreach ($workers as $w) {
        expect_eq(count($w->unacked), 1, 'unacked messages per worker with prefetch 1');
        expect_eq($w->unacked[0]->get('delivery_mode'), PERSISTENT, 'delivery mode');
        $first[] = $w->unacked[0]->getBody();
    }
    sort($first);
    expect_eq($first, ['task 0', 'task 1'], 'first two tasks, one per worker');
    // each ack lets exactly one more message through, to the worker that acked
    foreach ($workers as $w) {
        $m = array_pop($w->unacked);
        $m->ack();
        $w->done[] = $m->getBody();
        pump($chans, function () use ($w) {
            return count($w->unacked) >= 1;
        }, 5.0, 0.2);
    }
    foreach ($workers as $w) {
        expect_eq(count($w->unacked), 1, 'unacked messages per worker after one ack');
        $m = array_pop($w->unacked);
        $m->ack();
        $w->done[] = $m->getBody();
    }
    pump($chans, fn () => true, 5.0, 0.2);
    $every = [];
    foreach ($workers as $w) {
        expect_eq(count($w->done), 2, 'tasks per worker (round robin)');
        expect_eq($w->unacked, [], 'no further deliveries');
        $every = array_merge($every, $w->done);
    }
    sort($every);
    expect_eq($every, ['task 0', 'task 1', 'task 2', 'task 3'], 'all tasks, each once');
    expect_eq(message_count($producer, $queue), 0, 'messages left in the queue');
});

check('tutorial_3_publish_subscribe', function (Ctx $ctx) {
    $exchange = name('logs');
    $pub = $ctx->channel();
    $pub->exchange_declare($exchange, 'fanout', false, false, false);
    $ctx->onExit(function () use ($pub, $exchange) {
        $pub->exchange_delete($exchange);
    });
    $subscribers = [];
    for ($i = 0; $i < 2; $i++) {
        $ch = $ctx->channel();
        [$queue] = $ch->queue_declare('', false, false, true, false);
        expect(str_starts_with($queue, 'amq.gen-'), "server-named queue should start with amq.gen-, got $queue");
        $ch->queue_bind($queue, $exchange);
        $subscribers[] = [$ch, $queue];
    }
    expect($subscribers[0][1] !== $subscribers[1][1], 'server-named queues must differ');
    $pub->basic_publish(new AMQPMessage('info: Hello World!'), $exchange);
    foreach ($subscribers as [$ch, $queue]) {
        expect_eq(collect($ch, $queue, 1), ['info: Hello World!'], "messages in $queue");
    }
});

check('tutorial_4_routing', function (Ctx $ctx) {
    $exchange = name('direct_logs');
    $pub = $ctx->channel();
    $pub->exchange_declare($exchange, 'direct', false, false, false);
    $ctx->onExit(function () use ($pub, $exchange) {
        $pub->exchange_delete($exchange);
    });
    $ch = $ctx->channel();
    [$errors] = $ch->queue_declare('', false, false, true, false);
    $ch->queue_bind($errors, $exchange, 'error');
    [$everything] = $ch->queue_declare('', false, false, true, false);
    foreach (['info', 'warning', 'error'] as $severity) {
        $ch->queue_bind($everything, $exchange, $severity);
    }
    foreach (['info', 'warning', 'error', 'debug'] as $severity) {
        $pub->basic_publish(new AMQPMessage("$severity: Hello"), $exchange, $severity);
    }
    expect_eq(collect($ch, $errors, 1), ['error: Hello'], 'error queue');
    expect_eq(
        collect($ch, $everything, 3),
        ['info: Hello', 'warning: Hello', 'error: Hello'],
        'queue bound to info, warning and error'
    );
});

check('tutorial_5_topics', function (Ctx $ctx) {
    $exchange = name('topic_logs');
    $pub = $ctx->channel();
    $pub->exchange_declare($exchange, 'topic', false, false, false);
    $ctx->onExit(function () use ($pub, $exchange) {
        $pub->exchange_delete($exchange);
    });
    $ch = $ctx->channel();
    [$q1] = $ch->queue_declare('', false, false, true, false);
    $ch->queue_bind($q1, $exchange, '*.orange.*');
    [$q2] = $ch->queue_declare('', false, false, true, false);
    $ch->queue_bind($q2, $exchange, '*.*.rabbit');
    $ch->queue_bind($q2, $exchange, 'lazy.#');
    $keys = [
        'quick.orange.rabbit',
        'lazy.orange.elephant',
        'quick.orange.fox',
        'lazy.brown.fox',
        'lazy.pink.rabbit', // matches both of q2's bindings: delivered once
        'quick.brown.fox',
        'orange',
        'quick.orange.new.rabbit',
        'lazy.orange.new.rabbit',
        'lazy',
    ];
    foreach ($keys as $key) {
        $pub->basic_publish(new AMQPMessage($key), $exchange, $key);
    }
    expect_eq(
        collect($ch, $q1, 3),
        ['quick.orange.rabbit', 'lazy.orange.elephant', 'quick.orange.fox'],
        '*.orange.*'
    );
    expect_eq(
        collect($ch, $q2, 6),
        ['quick.orange.rabbit', 'lazy.orange.elephant', 'lazy.brown.fox', 'lazy.pink.rabbit',
            'lazy.orange.new.rabbit', 'lazy'],
        '*.*.rabbit + lazy.#'
    );
});

function fib(int $n): int
{
    [$a, $b] = [0, 1];
    for ($i = 0; $i < $n; $i++) {
        [$a, $b] = [$b, $a + $b];
    }
    return $a;
}

check('tutorial_6_rpc', function (Ctx $ctx) {
    $rpcQueue = name('rpc_queue');
    // the server, on a connection of its own, as in the tutorial's rpc_server.php
    $server = $ctx->channel();
    $server->queue_declare($rpcQueue, false, false, false, false);
    $ctx->onExit(function () use ($server, $rpcQueue) {
        $server->queue_delete($rpcQueue);
    });
    $server->basic_qos(0, 1, false);
    $server->basic_consume($rpcQueue, '', false, false, false, false, function (AMQPMessage $req) use ($server) {
        $reply = new AMQPMessage((string) fib((int) $req->getBody()), ['correlation_id' => $req->get('correlation_id')]);
        $server->basic_publish($reply, '', $req->get('reply_to'));
        $req->ack();
    });

    // the client
    $ch = $ctx->channel();
    [$callbackQueue] = $ch->queue_declare('', false, false, true, false);
    $responses = [];
    $ch->basic_consume($callbackQueue, '', false, true, false, false, function (AMQPMessage $m) use (&$responses) {
        $responses[$m->get('correlation_id')] = $m->getBody();
    });
    foreach ([0, 1, 10, 30] as $n) {
        $corrId = bin2hex(random_bytes(16));
        $ch->basic_publish(
            new AMQPMessage((string) $n, ['correlation_id' => $corrId, 'reply_to' => $callbackQueue]),
            '',
            $rpcQueue
        );
        pump([$server, $ch], function () use (&$responses, $corrId) {
            return isset($responses[$corrId]);
        });
        expect_eq($responses[$corrId], (string) fib($n), "fib($n)");
    }
    expect_eq(count($responses), 4, 'one response per request');
});

// --- publisher confirms -----------------------------------------------------------------------

check('publisher_confirms', function (Ctx $ctx) {
    $conn = $ctx->connect();
    $ch = $conn->channel();
    $ch->confirm_select();
    $acked = [];
    $nacked = [];
    $ch->set_ack_handler(function (AMQPMessage $m) use (&$acked) {
        $acked[] = $m->getBody();
    });
    $ch->set_nack_handler(function (AMQPMessage $m) use (&$nacked) {
        $nacked[] = $m->getBody();
    });
    $queue = name('confirms');
    $ch->queue_declare($queue, false, false, false, false);
    $cleanup = $conn->channel();
    $ctx->onExit(function () use ($cleanup, $queue) {
        $cleanup->queue_delete($queue);
    });
    for ($i = 0; $i < 3; $i++) {
        $ch->basic_publish(new AMQPMessage("confirmed $i"), '', $queue);
    }
    $ch->wait_for_pending_acks(5.0);
    expect_eq($acked, ['confirmed 0', 'confirmed 1', 'confirmed 2'], 'acked messages');
    expect_eq(message_count($ch, $queue), 3, 'messages after three confirmed publishes');
    // a batch of 100, and an unroutable publish (confirmed too)
    for ($i = 0; $i < 100; $i++) {
        $ch->basic_publish(
            new AMQPMessage("batch $i", ['delivery_mode' => AMQPMessage::DELIVERY_MODE_PERSISTENT]),
            '',
            $queue
        );
    }
    $ch->basic_publish(new AMQPMessage('dropped'), '', name('nowhere'));
    $ch->wait_for_pending_acks(5.0);
    expect_eq(count($acked), 104, 'acked messages after the batch');
    expect_eq($nacked, [], 'nacked messages');
    expect_eq(message_count($ch, $queue), 103, 'messages after the batch');
});

check('publisher_confirms_missing_exchange', function (Ctx $ctx) {
    $conn = $ctx->connect();
    $ch = $conn->channel();
    $ch->confirm_select();
    $missing = name('no-such-exchange');
    $ch->basic_publish(new AMQPMessage('lost'), $missing, 'anything');
    try {
        $ch->wait_for_pending_acks(5.0);
        throw new CheckFailed('wait_for_pending_acks returned after a publish to a missing exchange');
    } catch (AMQPProtocolChannelException $e) {
        expect_eq($e->getCode(), 404, 'reply code');
        expect_eq($e->getMessage(), "NOT_FOUND - no exchange '$missing' in vhost '/'", 'reply text');
    }
    expect(!$ch->is_open(), 'channel should be closed');
    expect($conn->isConnected(), 'connection should stay open');
    $conn->channel()->queue_declare('', false, false, true, false);
});

function main(array $argv): int
{
    global $URL, $CHECKS;
    if (count($argv) !== 2) {
        fwrite(STDERR, "usage: test_amqplib.php AMQP_URL\n");
        return 2;
    }
    $URL = $argv[1];
    pcntl_async_signals(true);
    pcntl_signal(SIGALRM, function () {
        throw new CheckTimeout('no result within ' . CHECK_TIMEOUT . ' s');
    });
    $passed = 0;
    $failed = 0;
    foreach ($CHECKS as $name => $fn) {
        $ctx = new Ctx();
        $started = microtime(true);
        try {
            pcntl_alarm(CHECK_TIMEOUT);
            $fn($ctx);
            pcntl_alarm(0);
            echo "ok $name\n";
            $passed++;
        } catch (Throwable $e) {
            pcntl_alarm(0);
            $reason = ($e instanceof CheckFailed || $e instanceof CheckTimeout)
                ? $e->getMessage()
                : get_class($e) . ': ' . $e->getMessage();
            echo "FAIL $name: $reason\n";
            if (!($e instanceof CheckFailed)) {
                fwrite(STDERR, (string) $e . "\n");
            }
            $failed++;
        } finally {
            try {
                pcntl_alarm(10);
                $ctx->close();
            } catch (Throwable $e) {
                // best effort
            }
            pcntl_alarm(0);
        }
        $elapsed = microtime(true) - $started;
        if ($elapsed > 5) {
            printf("   (%s took %.1f s)\n", $name, $elapsed);
        }
    }
    echo "$passed passed, $failed failed\n";
    return $failed === 0 ? 0 : 1;
}

exit(main($argv));

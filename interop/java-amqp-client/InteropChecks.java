// RabbitMQ Java client interop checks for an AMQP 0-9-1 broker (Warren, or RabbitMQ as the reference).
//
// Usage: java -cp amqp-client.jar:slf4j-api.jar:... InteropChecks amqp://guest:guest@127.0.0.1:5672/%2f
//
// RabbitMQ's tutorials 1-6 written with the Java client, publisher confirms (waitForConfirmsOrDie,
// a ConfirmListener, a publish to a missing exchange) and automatic connection recovery across a
// broker restart. The restart runs $WARREN_RESTART_CMD (set by interop/run-all.sh: it restarts
// Warren on the same port and data dir); when it is unset, that check is skipped and says so.
// Every check prints "ok NAME" or "FAIL NAME: REASON" ("skip NAME: REASON" for the skipped one);
// the last line is "N passed, N failed". Names carry a random suffix and the checks delete what
// they declare, so runs against a long-lived broker do not see each other's leftovers.

import com.rabbitmq.client.AMQP;
import com.rabbitmq.client.BuiltinExchangeType;
import com.rabbitmq.client.Channel;
import com.rabbitmq.client.ConfirmListener;
import com.rabbitmq.client.Connection;
import com.rabbitmq.client.ConnectionFactory;
import com.rabbitmq.client.DefaultConsumer;
import com.rabbitmq.client.Envelope;
import com.rabbitmq.client.MessageProperties;
import com.rabbitmq.client.Recoverable;
import com.rabbitmq.client.RecoverableConnection;
import com.rabbitmq.client.RecoveryListener;
import com.rabbitmq.client.ShutdownSignalException;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ConcurrentSkipListSet;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicReference;

public class InteropChecks {
    static final int CHECK_TIMEOUT = 30; // seconds one check may take before it counts as failed
    static final int RECOVERY_CHECK_TIMEOUT = 90; // the restart check waits for the broker too
    static final String RUN = UUID.randomUUID().toString().replace("-", "").substring(0, 8);
    static String url;

    static String name(String what) {
        return "interop-java-" + what + "-" + RUN;
    }

    /** A check that cannot run here: printed as "skip", counted neither way. */
    static class Skip extends RuntimeException {
        private static final long serialVersionUID = 1L;

        Skip(String why) {
            super(why);
        }
    }

    interface Check {
        void run(Ctx ctx) throws Exception;
    }

    /** Per-check state: opens connections and closes whatever is left open afterwards. */
    static class Ctx {
        final List<Connection> connections = Collections.synchronizedList(new ArrayList<>());
        final List<Check> cleanups = Collections.synchronizedList(new ArrayList<>());

        ConnectionFactory factory() throws Exception {
            ConnectionFactory f = new ConnectionFactory();
            f.setUri(url);
            f.setConnectionTimeout(10_000);
            f.setAutomaticRecoveryEnabled(false);
            return f;
        }

        Connection connect() throws Exception {
            return connect(factory());
        }

        Connection connect(ConnectionFactory f) throws Exception {
            Connection c = f.newConnection();
            connections.add(c);
            return c;
        }

        Channel channel() throws Exception {
            return connect().createChannel();
        }

        void onExit(Check fn) {
            cleanups.add(fn);
        }

        void close() {
            List<Check> fns = new ArrayList<>(cleanups);
            Collections.reverse(fns);
            for (Check fn : fns) {
                try {
                    fn.run(this);
                } catch (Exception e) {
                    // best effort
                }
            }
            for (Connection c : new ArrayList<>(connections)) {
                try {
                    if (c.isOpen()) {
                        c.close(5_000);
                    }
                } catch (Exception e) {
                    // best effort
                } finally {
                    c.abort(1_000);
                }
            }
        }
    }

    static void expect(boolean cond, String what) {
        if (!cond) {
            throw new AssertionError(what);
        }
    }

    static void expectEq(Object got, Object want, String what) {
        if (!java.util.Objects.equals(got, want)) {
            throw new AssertionError(what + ": expected " + want + ", got " + got);
        }
    }

    static byte[] bytes(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }

    static String str(byte[] b) {
        return new String(b, StandardCharsets.UTF_8);
    }

    static long messageCount(Channel ch, String queue) throws IOException {
        return ch.queueDeclarePassive(queue).getMessageCount();
    }

    /** One delivery as the consumer saw it. */
    static class Delivery {
        final Envelope envelope;
        final AMQP.BasicProperties props;
        final String body;

        Delivery(Envelope envelope, AMQP.BasicProperties props, byte[] body) {
            this.envelope = envelope;
            this.props = props;
            this.body = str(body);
        }
    }

    /** A consumer that queues what it receives. */
    static class Collector extends DefaultConsumer {
        final BlockingQueue<Delivery> got = new LinkedBlockingQueue<>();

        Collector(Channel ch) {
            super(ch);
        }

        @Override
        public void handleDelivery(String tag, Envelope env, AMQP.BasicProperties props, byte[] body) {
            got.add(new Delivery(env, props, body));
        }

        Delivery next(double seconds) throws InterruptedException {
            Delivery d = got.poll((long) (seconds * 1000), TimeUnit.MILLISECONDS);
            if (d == null) {
                throw new AssertionError("no delivery within " + seconds + " s");
            }
            return d;
        }

        /** `count` bodies in arrival order, then `settle` seconds to catch extras that should not come. */
        List<String> bodies(int count, double seconds, double settle) throws InterruptedException {
            List<String> out = new ArrayList<>();
            for (int i = 0; i < count; i++) {
                out.add(next(seconds).body);
            }
            Thread.sleep((long) (settle * 1000));
            Delivery d;
            while ((d = got.poll()) != null) {
                out.add(d.body);
            }
            return out;
        }
    }

    /** Consumes `queue` with auto-ack until `count` messages arrived (plus 0.3 s for extras). */
    static List<String> collect(Channel ch, String queue, int count) throws Exception {
        Collector c = new Collector(ch);
        String tag = ch.basicConsume(queue, true, c);
        List<String> out = c.bodies(count, 5, 0.3);
        ch.basicCancel(tag);
        return out;
    }

    // --- RabbitMQ tutorials 1-6 ----------------------------------------------------------------

    static void tutorial1HelloWorld(Ctx ctx) throws Exception {
        Channel ch = ctx.channel();
        String queue = name("hello");
        ch.queueDeclare(queue, false, false, false, null);
        ctx.onExit(c -> ch.queueDelete(queue));
        ch.basicPublish("", queue, null, bytes("Hello World!"));
        Collector consumer = new Collector(ch);
        ch.basicConsume(queue, true, consumer);
        Delivery d = consumer.next(5);
        expectEq(d.body, "Hello World!", "body");
        expectEq(d.envelope.getExchange(), "", "exchange");
        expectEq(d.envelope.getRoutingKey(), queue, "routing key");
        expect(!d.envelope.isRedeliver(), "first delivery must not be redelivered");
    }

    static void tutorial2WorkQueues(Ctx ctx) throws Exception {
        String queue = name("task_queue");
        Channel producer = ctx.channel();
        producer.queueDeclare(queue, true, false, false, null);
        ctx.onExit(c -> producer.queueDelete(queue));

        List<Channel> channels = new ArrayList<>();
        List<Collector> workers = new ArrayList<>();
        for (int i = 0; i < 2; i++) {
            Channel ch = ctx.channel();
            ch.queueDeclare(queue, true, false, false, null);
            ch.basicQos(1);
            Collector w = new Collector(ch);
            ch.basicConsume(queue, false, w);
            channels.add(ch);
            workers.add(w);
        }
        for (int i = 0; i < 4; i++) {
            producer.basicPublish("", queue, MessageProperties.PERSISTENT_TEXT_PLAIN, bytes("task " + i));
        }
        // prefetch 1: each worker holds exactly one message until it acks
        List<Delivery> held = new ArrayList<>();
        for (Collector w : workers) {
            held.add(w.next(5));
        }
        Thread.sleep(300);
        for (Collector w : workers) {
            expectEq(w.got.size(), 0, "further deliveries to a worker holding an unacked message (prefetch 1)");
        }
        List<String> first = new ArrayList<>();
        for (Delivery d : held) {
            expectEq(d.props.getDeliveryMode(), 2, "delivery mode");
            first.add(d.body);
        }
        Collections.sort(first);
        expectEq(first, Arrays.asList("task 0", "task 1"), "first two tasks, one per worker");
        // each ack lets exactly one more message through, to the worker that acked
        List<String> done = new ArrayList<>(first);
        for (int i = 0; i < 2; i++) {
            channels.get(i).basicAck(held.get(i).envelope.getDeliveryTag(), false);
            Delivery d = workers.get(i).next(5);
            held.set(i, d);
        }
        for (int i = 0; i < 2; i++) {
            channels.get(i).basicAck(held.get(i).envelope.getDeliveryTag(), false);
            done.add(held.get(i).body);
        }
        Thread.sleep(200);
        for (Collector w : workers) {
            expectEq(w.got.size(), 0, "deliveries after all four tasks");
        }
        Collections.sort(done);
        expectEq(done, Arrays.asList("task 0", "task 1", "task 2", "task 3"), "all tasks, each once");
        expectEq(messageCount(producer, queue), 0L, "messages left in the queue");
    }

    static void tutorial3PublishSubscribe(Ctx ctx) throws Exception {
        String exchange = name("logs");
        Channel pub = ctx.channel();
        pub.exchangeDeclare(exchange, BuiltinExchangeType.FANOUT);
        ctx.onExit(c -> pub.exchangeDelete(exchange));
        List<Channel> chans = new ArrayList<>();
        List<String> queues = new ArrayList<>();
        for (int i = 0; i < 2; i++) {
            Channel ch = ctx.channel();
            String queue = ch.queueDeclare().getQueue();
            expect(queue.startsWith("amq.gen-"), "server-named queue should start with amq.gen-, got " + queue);
            ch.queueBind(queue, exchange, "");
            chans.add(ch);
            queues.add(queue);
        }
        expect(!queues.get(0).equals(queues.get(1)), "server-named queues must differ");
        pub.basicPublish(exchange, "", null, bytes("info: Hello World!"));
        for (int i = 0; i < 2; i++) {
            expectEq(collect(chans.get(i), queues.get(i), 1), Arrays.asList("info: Hello World!"),
                    "messages in " + queues.get(i));
        }
    }

    static void tutorial4Routing(Ctx ctx) throws Exception {
        String exchange = name("direct_logs");
        Channel pub = ctx.channel();
        pub.exchangeDeclare(exchange, BuiltinExchangeType.DIRECT);
        ctx.onExit(c -> pub.exchangeDelete(exchange));
        Channel ch = ctx.channel();
        String errors = ch.queueDeclare().getQueue();
        ch.queueBind(errors, exchange, "error");
        String everything = ch.queueDeclare().getQueue();
        for (String severity : new String[] {"info", "warning", "error"}) {
            ch.queueBind(everything, exchange, severity);
        }
        for (String severity : new String[] {"info", "warning", "error", "debug"}) {
            pub.basicPublish(exchange, severity, null, bytes(severity + ": Hello"));
        }
        expectEq(collect(ch, errors, 1), Arrays.asList("error: Hello"), "error queue");
        expectEq(collect(ch, everything, 3), Arrays.asList("info: Hello", "warning: Hello", "error: Hello"),
                "queue bound to info, warning and error");
    }

    static void tutorial5Topics(Ctx ctx) throws Exception {
        String exchange = name("topic_logs");
        Channel pub = ctx.channel();
        pub.exchangeDeclare(exchange, BuiltinExchangeType.TOPIC);
        ctx.onExit(c -> pub.exchangeDelete(exchange));
        Channel ch = ctx.channel();
        String q1 = ch.queueDeclare().getQueue();
        ch.queueBind(q1, exchange, "*.orange.*");
        String q2 = ch.queueDeclare().getQueue();
        ch.queueBind(q2, exchange, "*.*.rabbit");
        ch.queueBind(q2, exchange, "lazy.#");
        String[] keys = {
            "quick.orange.rabbit",
            "lazy.orange.elephant",
            "quick.orange.fox",
            "lazy.brown.fox",
            "lazy.pink.rabbit", // matches both of q2's bindings: delivered once
            "quick.brown.fox",
            "orange",
            "quick.orange.new.rabbit",
            "lazy.orange.new.rabbit",
            "lazy",
        };
        for (String key : keys) {
            pub.basicPublish(exchange, key, null, bytes(key));
        }
        expectEq(collect(ch, q1, 3), Arrays.asList("quick.orange.rabbit", "lazy.orange.elephant", "quick.orange.fox"),
                "*.orange.*");
        expectEq(collect(ch, q2, 6),
                Arrays.asList("quick.orange.rabbit", "lazy.orange.elephant", "lazy.brown.fox", "lazy.pink.rabbit",
                        "lazy.orange.new.rabbit", "lazy"),
                "*.*.rabbit + lazy.#");
    }

    static long fib(int n) {
        long a = 0, b = 1;
        for (int i = 0; i < n; i++) {
            long t = a + b;
            a = b;
            b = t;
        }
        return a;
    }

    static void tutorial6Rpc(Ctx ctx) throws Exception {
        String rpcQueue = name("rpc_queue");
        // the server, on a connection of its own, as in the tutorial's RPCServer
        Channel server = ctx.channel();
        server.queueDeclare(rpcQueue, false, false, false, null);
        ctx.onExit(c -> server.queueDelete(rpcQueue));
        server.basicQos(1);
        AtomicReference<String> serverError = new AtomicReference<>();
        server.basicConsume(rpcQueue, false, new DefaultConsumer(server) {
            @Override
            public void handleDelivery(String tag, Envelope env, AMQP.BasicProperties props, byte[] body) {
                try {
                    AMQP.BasicProperties reply = new AMQP.BasicProperties.Builder()
                            .correlationId(props.getCorrelationId())
                            .build();
                    String response = Long.toString(fib(Integer.parseInt(str(body))));
                    getChannel().basicPublish("", props.getReplyTo(), reply, bytes(response));
                    getChannel().basicAck(env.getDeliveryTag(), false);
                } catch (Exception e) {
                    serverError.set("RPC server: " + e);
                }
            }
        });

        // the client
        Channel ch = ctx.channel();
        String callbackQueue = ch.queueDeclare().getQueue();
        Map<String, String> responses = new ConcurrentHashMap<>();
        BlockingQueue<String> arrived = new LinkedBlockingQueue<>();
        ch.basicConsume(callbackQueue, true, new DefaultConsumer(ch) {
            @Override
            public void handleDelivery(String tag, Envelope env, AMQP.BasicProperties props, byte[] body) {
                responses.put(props.getCorrelationId(), str(body));
                arrived.add(props.getCorrelationId());
            }
        });
        for (int n : new int[] {0, 1, 10, 30}) {
            String corrId = UUID.randomUUID().toString();
            AMQP.BasicProperties props = new AMQP.BasicProperties.Builder()
                    .correlationId(corrId)
                    .replyTo(callbackQueue)
                    .build();
            ch.basicPublish("", rpcQueue, props, bytes(Integer.toString(n)));
            String got = arrived.poll(5, TimeUnit.SECONDS);
            expect(serverError.get() == null, String.valueOf(serverError.get()));
            expect(got != null, "no response to fib(" + n + ") within 5 s");
            expectEq(got, corrId, "correlation id");
            expectEq(responses.get(corrId), Long.toString(fib(n)), "fib(" + n + ")");
        }
        expectEq(responses.size(), 4, "one response per request");
    }

    // --- publisher confirms ----------------------------------------------------------------------

    static void publisherConfirmsWaitForConfirmsOrDie(Ctx ctx) throws Exception {
        Connection conn = ctx.connect();
        Channel ch = conn.createChannel();
        ch.confirmSelect();
        String queue = name("confirms");
        ch.queueDeclare(queue, false, false, false, null);
        Channel cleanup = conn.createChannel();
        ctx.onExit(c -> cleanup.queueDelete(queue));
        for (int i = 0; i < 3; i++) {
            expectEq(ch.getNextPublishSeqNo(), (long) i + 1, "next publish sequence number");
            ch.basicPublish("", queue, null, bytes("confirmed " + i));
        }
        ch.waitForConfirmsOrDie(5_000);
        expectEq(messageCount(ch, queue), 3L, "messages after three confirmed publishes");
        // a batch of 100, and an unroutable publish (confirmed too)
        for (int i = 0; i < 100; i++) {
            ch.basicPublish("", queue, MessageProperties.PERSISTENT_BASIC, bytes("batch " + i));
        }
        ch.basicPublish("", name("nowhere"), null, bytes("dropped"));
        ch.waitForConfirmsOrDie(5_000);
        expectEq(messageCount(ch, queue), 103L, "messages after the batch");
    }

    static void publisherConfirmsListener(Ctx ctx) throws Exception {
        Channel ch = ctx.channel();
        String queue = ch.queueDeclare().getQueue();
        ch.confirmSelect();
        ConcurrentSkipListSet<Long> outstanding = new ConcurrentSkipListSet<>();
        List<String> nacked = Collections.synchronizedList(new ArrayList<>());
        CountDownLatch allConfirmed = new CountDownLatch(1);
        int count = 500;
        ch.addConfirmListener(new ConfirmListener() {
            @Override
            public void handleAck(long tag, boolean multiple) {
                if (multiple) {
                    outstanding.headSet(tag, true).clear();
                } else {
                    outstanding.remove(tag);
                }
                if (outstanding.isEmpty()) {
                    allConfirmed.countDown();
                }
            }

            @Override
            public void handleNack(long tag, boolean multiple) {
                nacked.add(tag + (multiple ? " (multiple)" : ""));
            }
        });
        for (int i = 0; i < count; i++) {
            outstanding.add(ch.getNextPublishSeqNo());
            ch.basicPublish("", queue, null, bytes("async " + i));
        }
        expect(allConfirmed.await(10, TimeUnit.SECONDS),
                "not every publish was confirmed within 10 s; outstanding: " + outstanding.size());
        expectEq(nacked, Collections.emptyList(), "nacks");
        expectEq(messageCount(ch, queue), (long) count, "messages in the queue");
    }

    static void publisherConfirmsMissingExchange(Ctx ctx) throws Exception {
        Connection conn = ctx.connect();
        Channel ch = conn.createChannel();
        ch.confirmSelect();
        String missing = name("no-such-exchange");
        ch.basicPublish(missing, "anything", null, bytes("lost"));
        try {
            ch.waitForConfirmsOrDie(5_000);
            throw new AssertionError("waitForConfirmsOrDie returned after a publish to a missing exchange");
        } catch (ShutdownSignalException sse) { // AlreadyClosedException included
            expect(!sse.isHardError(), "expected a channel error, got a connection error: " + sse.getMessage());
            Object reason = sse.getReason();
            expect(reason instanceof AMQP.Channel.Close, "expected channel.close, got " + reason);
            AMQP.Channel.Close close = (AMQP.Channel.Close) reason;
            expectEq(close.getReplyCode(), 404, "reply code");
            expectEq(close.getReplyText(), "NOT_FOUND - no exchange '" + missing + "' in vhost '/'", "reply text");
        }
        expect(!ch.isOpen(), "channel should be closed");
        expect(conn.isOpen(), "connection should stay open");
        conn.createChannel().queueDeclare();
    }

    // --- automatic connection recovery -----------------------------------------------------------

    static void automaticRecoveryAfterRestart(Ctx ctx) throws Exception {
        String restart = System.getenv("WARREN_RESTART_CMD");
        if (restart == null || restart.trim().isEmpty()) {
            throw new Skip("WARREN_RESTART_CMD is not set (run under interop/run-all.sh to restart the broker)");
        }
        ConnectionFactory f = ctx.factory();
        f.setAutomaticRecoveryEnabled(true);
        f.setTopologyRecoveryEnabled(true);
        f.setNetworkRecoveryInterval(500);
        Connection conn = ctx.connect(f);
        CountDownLatch recovered = new CountDownLatch(1);
        CountDownLatch started = new CountDownLatch(1);
        ((RecoverableConnection) conn).addRecoveryListener(new RecoveryListener() {
            @Override
            public void handleRecovery(Recoverable r) {
                recovered.countDown();
            }

            @Override
            public void handleRecoveryStarted(Recoverable r) {
                started.countDown();
            }
        });
        Channel ch = conn.createChannel();
        String exchange = name("recovery");
        ch.exchangeDeclare(exchange, BuiltinExchangeType.FANOUT);
        ctx.onExit(c -> ch.exchangeDelete(exchange));
        String queue = ch.queueDeclare().getQueue(); // server-named, exclusive: recovered under a new name
        ch.queueBind(queue, exchange, "");
        Collector consumer = new Collector(ch);
        ch.basicConsume(queue, true, consumer);
        ch.basicPublish(exchange, "", null, bytes("before restart"));
        expectEq(consumer.next(5).body, "before restart", "delivery before the restart");

        Process p = new ProcessBuilder("bash", "-c", restart)
                .redirectErrorStream(true)
                .redirectOutput(ProcessBuilder.Redirect.INHERIT)
                .start();
        expect(p.waitFor(60, TimeUnit.SECONDS), "restart command did not finish within 60 s");
        expectEq(p.exitValue(), 0, "restart command's exit status");
        expect(started.await(10, TimeUnit.SECONDS), "recovery did not start within 10 s of the restart");
        expect(recovered.await(30, TimeUnit.SECONDS), "connection not recovered within 30 s of the restart");
        expect(conn.isOpen(), "recovered connection should be open");
        expect(ch.isOpen(), "recovered channel should be open");
        // the exchange, the server-named queue, its binding and the consumer were declared again
        ch.basicPublish(exchange, "", null, bytes("after restart"));
        expectEq(consumer.next(5).body, "after restart", "delivery after the restart");
        // and the recovered connection can do new work
        Channel again = conn.createChannel();
        String q2 = again.queueDeclare().getQueue();
        again.basicPublish("", q2, null, bytes("new channel"));
        expectEq(str(again.basicGet(q2, true).getBody()), "new channel", "basic.get on a new channel");
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 1) {
            System.err.println("usage: InteropChecks AMQP_URL");
            System.exit(2);
        }
        url = args[0];
        Map<String, Check> checks = new LinkedHashMap<>();
        checks.put("tutorial_1_hello_world", InteropChecks::tutorial1HelloWorld);
        checks.put("tutorial_2_work_queues", InteropChecks::tutorial2WorkQueues);
        checks.put("tutorial_3_publish_subscribe", InteropChecks::tutorial3PublishSubscribe);
        checks.put("tutorial_4_routing", InteropChecks::tutorial4Routing);
        checks.put("tutorial_5_topics", InteropChecks::tutorial5Topics);
        checks.put("tutorial_6_rpc", InteropChecks::tutorial6Rpc);
        checks.put("publisher_confirms_wait_for_confirms_or_die", InteropChecks::publisherConfirmsWaitForConfirmsOrDie);
        checks.put("publisher_confirms_listener", InteropChecks::publisherConfirmsListener);
        checks.put("publisher_confirms_missing_exchange", InteropChecks::publisherConfirmsMissingExchange);
        checks.put("automatic_recovery_after_restart", InteropChecks::automaticRecoveryAfterRestart);

        int passed = 0;
        int failed = 0;
        for (Map.Entry<String, Check> e : checks.entrySet()) {
            String checkName = e.getKey();
            int limit = checkName.startsWith("automatic_recovery") ? RECOVERY_CHECK_TIMEOUT : CHECK_TIMEOUT;
            Ctx ctx = new Ctx();
            long started = System.nanoTime();
            ExecutorService ex = Executors.newSingleThreadExecutor(r -> {
                Thread t = new Thread(r, "check-" + checkName);
                t.setDaemon(true);
                return t;
            });
            Future<?> fut = ex.submit(() -> {
                e.getValue().run(ctx);
                return null;
            });
            try {
                fut.get(limit, TimeUnit.SECONDS);
                System.out.println("ok " + checkName);
                passed++;
            } catch (TimeoutException te) {
                fut.cancel(true);
                System.out.println("FAIL " + checkName + ": no result within " + limit + " s");
                failed++;
            } catch (java.util.concurrent.ExecutionException ee) {
                Throwable cause = ee.getCause();
                if (cause instanceof Skip) {
                    System.out.println("skip " + checkName + ": " + cause.getMessage());
                } else {
                    String reason = cause instanceof AssertionError ? cause.getMessage() : describe(cause);
                    System.out.println("FAIL " + checkName + ": " + reason);
                    if (!(cause instanceof AssertionError)) {
                        cause.printStackTrace(System.err);
                    }
                    failed++;
                }
            } finally {
                ex.shutdownNow();
                Thread closer = new Thread(ctx::close);
                closer.setDaemon(true);
                closer.start();
                closer.join(10_000);
            }
            double elapsed = (System.nanoTime() - started) / 1e9;
            if (elapsed > 5) {
                System.out.printf("   (%s took %.1f s)%n", checkName, elapsed);
            }
            System.out.flush();
        }
        System.out.println(passed + " passed, " + failed + " failed");
        System.out.flush();
        System.exit(failed == 0 ? 0 : 1);
    }

    /** An exception and its causes in one line. */
    static String describe(Throwable t) {
        StringBuilder sb = new StringBuilder();
        for (Throwable c = t; c != null; c = c.getCause()) {
            if (sb.length() > 0) {
                sb.append(" <- ");
            }
            sb.append(c.getClass().getSimpleName());
            if (c.getMessage() != null) {
                sb.append(": ").append(c.getMessage());
            }
            if (c.getCause() == c) {
                break;
            }
        }
        return sb.toString();
    }
}

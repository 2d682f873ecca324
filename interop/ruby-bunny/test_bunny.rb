#!/usr/bin/env ruby
# frozen_string_literal: true

# Bunny interop checks for an AMQP 0-9-1 broker (Warren, or RabbitMQ as the reference).
#
# Usage: test_bunny.rb amqp://guest:guest@127.0.0.1:5672/%2f
#
# RabbitMQ's tutorials 1-6 written with Bunny, plus publisher confirms (wait_for_confirms, and a
# publish to a missing exchange). Every check prints "ok NAME" or "FAIL NAME: REASON"; the last
# line is "N passed, N failed". Names carry a random suffix and the checks delete what they
# declare, so runs against a long-lived broker do not see each other's leftovers.

require "bunny"
require "securerandom"
require "timeout"

CHECK_TIMEOUT = 30 # seconds one check may take before it counts as failed
PERSISTENT = 2 # delivery-mode of a persistent message
RUN = SecureRandom.hex(4)
CHECKS = []
$url = nil

class CheckFailed < StandardError; end
class CheckTimeout < StandardError; end

# A name unique to this run, so runs never see each other's queues or exchanges.
def name(what)
  "interop-bunny-#{what}-#{RUN}"
end

def check(name, &block)
  CHECKS << [name, block]
end

def expect(cond, what)
  raise CheckFailed, what unless cond
end

def expect_eq(got, want, what)
  raise CheckFailed, "#{what}: expected #{want.inspect}, got #{got.inspect}" unless got == want
end

# Bunny reports connection-level errors to a "session error handler" (by default it raises them
# in the thread that opened the connection); this one keeps them for the check to look at.
class ErrorLog
  attr_reader :errors

  def initialize
    @errors = []
  end

  def raise(*args)
    @errors << args.map(&:to_s).join(" ")
  end
end

# Per-check state: opens connections and closes whatever is left open afterwards.
class Ctx
  attr_reader :session_errors

  def initialize
    @connections = []
    @cleanups = []
    @session_errors = ErrorLog.new
  end

  def connect
    conn = Bunny.new($url, automatically_recover: false, connection_timeout: 10,
                           session_error_handler: @session_errors, log_file: $stderr,
                           log_level: Logger::ERROR)
    @connections << conn
    conn.start
    conn
  end

  def channel
    connect.create_channel
  end

  def on_exit(&block)
    @cleanups << block
  end

  def close
    @cleanups.reverse_each do |fn|
      fn.call
    rescue StandardError, Timeout::Error
      nil
    end
    @connections.each do |conn|
      conn.close if conn.open?
    rescue StandardError, Timeout::Error
      nil
    end
  end
end

# Takes one item from `queue`, waiting at most `seconds`.
def pop(queue, seconds, what)
  deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + seconds
  loop do
    return queue.pop(true)
  rescue ThreadError
    raise CheckFailed, "#{what}: nothing within #{seconds} s" if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

    sleep 0.01
  end
end

def drain(queue)
  out = []
  loop { out << queue.pop(true) }
rescue ThreadError
  out
end

# Consumes `queue_name` with auto-ack until `count` messages arrived (plus `settle` seconds for
# extras that should not come); returns the bodies in arrival order.
def collect(ch, queue_name, count, settle: 0.3, timeout: 5)
  got = Queue.new
  # a client-generated tag: Bunny drops deliveries that beat basic.consume-ok to a server-named one
  consumer = ch.basic_consume(queue_name, ch.generate_consumer_tag, true, false, {}) { |_di, _props, body| got << body }
  bodies = Array.new(count) { pop(got, timeout, "message #{count} from #{queue_name}") }
  sleep settle
  bodies.concat(drain(got))
  ch.basic_cancel(consumer.consumer_tag)
  bodies
end

def message_count(ch, queue_name)
  ch.queue_declare(queue_name, passive: true).message_count
end

# --- RabbitMQ tutorials 1-6 -------------------------------------------------------------------

check "tutorial_1_hello_world" do |ctx|
  ch = ctx.channel
  queue = ch.queue(name("hello"))
  ctx.on_exit { queue.delete }
  ch.default_exchange.publish("Hello World!", routing_key: queue.name)
  received = Queue.new
  queue.subscribe { |delivery_info, _properties, body| received << [delivery_info, body] }
  delivery_info, body = pop(received, 5, "delivery")
  expect_eq(body, "Hello World!", "body")
  expect_eq(delivery_info.exchange, "", "exchange")
  expect_eq(delivery_info.routing_key, queue.name, "routing key")
  expect(!delivery_info.redelivered?, "first delivery must not be redelivered")
end

check "tutorial_2_work_queues" do |ctx|
  queue_name = name("task_queue")
  producer = ctx.channel
  producer.queue(queue_name, durable: true)
  ctx.on_exit { producer.queue_delete(queue_name) }

  workers = Array.new(2) do
    ch = ctx.channel
    ch.prefetch(1)
    q = ch.queue(queue_name, durable: true)
    held = Queue.new
    q.subscribe(manual_ack: true) { |di, props, body| held << [di.delivery_tag, props.delivery_mode, body] }
    { ch: ch, held: held }
  end
  4.times { |i| producer.default_exchange.publish("task #{i}", routing_key: queue_name, persistent: true) }

  # prefetch 1: each worker holds exactly one message until it acks
  first = workers.map { |w| pop(w[:held], 5, "first task") }
  sleep 0.3
  workers.each { |w| expect_eq(w[:held].size, 0, "further deliveries to a worker holding an unacked message") }
  first.each { |_tag, mode, _body| expect_eq(mode, PERSISTENT, "delivery mode") }
  expect_eq(first.map { |f| f[2] }.sort, ["task 0", "task 1"], "first two tasks, one per worker")
  done = first.map { |f| f[2] }
  # each ack lets exactly one more message through, to the worker that acked
  second = workers.each_with_index.map do |w, i|
    w[:ch].ack(first[i][0])
    pop(w[:held], 5, "second task")
  end
  workers.each_with_index do |w, i|
    w[:ch].ack(second[i][0])
    done << second[i][2]
  end
  sleep 0.2
  workers.each { |w| expect_eq(w[:held].size, 0, "deliveries after all four tasks") }
  expect_eq(done.sort, (0..3).map { |i| "task #{i}" }, "all tasks, each once")
  expect_eq(message_count(producer, queue_name), 0, "messages left in the queue")
end

check "tutorial_3_publish_subscribe" do |ctx|
  pub = ctx.channel
  exchange = pub.fanout(name("logs"))
  ctx.on_exit { exchange.delete }
  subscribers = Array.new(2) do
    ch = ctx.channel
    q = ch.queue("", exclusive: true)
    expect(q.name.start_with?("amq.gen-"), "server-named queue should start with amq.gen-, got #{q.name.inspect}")
    q.bind(exchange.name)
    [ch, q.name]
  end
  expect(subscribers[0][1] != subscribers[1][1], "server-named queues must differ")
  exchange.publish("info: Hello World!")
  subscribers.each do |ch, q|
    expect_eq(collect(ch, q, 1), ["info: Hello World!"], "messages in #{q}")
  end
end

check "tutorial_4_routing" do |ctx|
  pub = ctx.channel
  exchange = pub.direct(name("direct_logs"))
  ctx.on_exit { exchange.delete }
  ch = ctx.channel
  errors = ch.queue("", exclusive: true)
  errors.bind(exchange.name, routing_key: "error")
  everything = ch.queue("", exclusive: true)
  %w[info warning error].each { |severity| everything.bind(exchange.name, routing_key: severity) }
  %w[info warning error debug].each { |severity| exchange.publish("#{severity}: Hello", routing_key: severity) }
  expect_eq(collect(ch, errors.name, 1), ["error: Hello"], "error queue")
  expect_eq(collect(ch, everything.name, 3), ["info: Hello", "warning: Hello", "error: Hello"],
            "queue bound to info, warning and error")
end

check "tutorial_5_topics" do |ctx|
  pub = ctx.channel
  exchange = pub.topic(name("topic_logs"))
  ctx.on_exit { exchange.delete }
  ch = ctx.channel
  q1 = ch.queue("", exclusive: true)
  q1.bind(exchange.name, routing_key: "*.orange.*")
  q2 = ch.queue("", exclusive: true)
  q2.bind(exchange.name, routing_key: "*.*.rabbit")
  q2.bind(exchange.name, routing_key: "lazy.#")
  keys = [
    "quick.orange.rabbit",
    "lazy.orange.elephant",
    "quick.orange.fox",
    "lazy.brown.fox",
    "lazy.pink.rabbit", # matches both of q2's bindings: delivered once
    "quick.brown.fox",
    "orange",
    "quick.orange.new.rabbit",
    "lazy.orange.new.rabbit",
    "lazy"
  ]
  keys.each { |key| exchange.publish(key, routing_key: key) }
  expect_eq(collect(ch, q1.name, 3), ["quick.orange.rabbit", "lazy.orange.elephant", "quick.orange.fox"],
            "*.orange.*")
  expect_eq(collect(ch, q2.name, 6),
            ["quick.orange.rabbit", "lazy.orange.elephant", "lazy.brown.fox", "lazy.pink.rabbit",
             "lazy.orange.new.rabbit", "lazy"],
            "*.*.rabbit + lazy.#")
end

def fib(n)
  a = 0
  b = 1
  n.times { a, b = b, a + b }
  a
end

check "tutorial_6_rpc" do |ctx|
  rpc_queue = name("rpc_queue")
  # the server, on a connection of its own, as in the tutorial's rpc_server.rb
  server = ctx.channel
  server.prefetch(1)
  sq = server.queue(rpc_queue)
  ctx.on_exit { server.queue_delete(rpc_queue) }
  server_errors = Queue.new
  sq.subscribe(manual_ack: true) do |di, props, body|
    server.default_exchange.publish(fib(body.to_i).to_s, routing_key: props.reply_to,
                                                         correlation_id: props.correlation_id)
    server.ack(di.delivery_tag)
  rescue StandardError => e
    server_errors << "RPC server: #{e.inspect}"
  end

  # the client
  ch = ctx.channel
  callback_queue = ch.queue("", exclusive: true)
  responses = Queue.new
  callback_queue.subscribe { |_di, props, body| responses << [props.correlation_id, body] }
  [0, 1, 10, 30].each do |n|
    corr_id = SecureRandom.uuid
    ch.default_exchange.publish(n.to_s, routing_key: rpc_queue, correlation_id: corr_id,
                                        reply_to: callback_queue.name)
    got_id, body = pop(responses, 5, "response to fib(#{n})")
    expect(server_errors.empty?, drain(server_errors).join("; "))
    expect_eq(got_id, corr_id, "correlation id")
    expect_eq(body, fib(n).to_s, "fib(#{n})")
  end
  expect_eq(responses.size, 0, "one response per request")
end

# --- publisher confirms -----------------------------------------------------------------------

check "publisher_confirms" do |ctx|
  conn = ctx.connect
  ch = conn.create_channel
  ch.confirm_select
  queue = name("confirms")
  ch.queue(queue)
  cleanup = conn.create_channel
  ctx.on_exit { cleanup.queue_delete(queue) }
  3.times do |i|
    expect_eq(ch.next_publish_seq_no, i + 1, "next publish sequence number")
    ch.default_exchange.publish("confirmed #{i}", routing_key: queue)
  end
  expect(ch.wait_for_confirms, "wait_for_confirms: some publishes were nacked: #{ch.nacked_set.to_a}")
  expect(ch.unconfirmed_set.empty?, "unconfirmed after wait_for_confirms: #{ch.unconfirmed_set.to_a}")
  expect_eq(message_count(ch, queue), 3, "messages after three confirmed publishes")
  # a batch of 100, and an unroutable publish (confirmed too)
  100.times { |i| ch.default_exchange.publish("batch #{i}", routing_key: queue, persistent: true) }
  ch.default_exchange.publish("dropped", routing_key: name("nowhere"))
  expect(ch.wait_for_confirms, "wait_for_confirms: some publishes were nacked: #{ch.nacked_set.to_a}")
  expect_eq(ch.nacked_set.size, 0, "nacks")
  expect_eq(message_count(ch, queue), 103, "messages after the batch")
end

check "publisher_confirms_missing_exchange" do |ctx|
  conn = ctx.connect
  ch = conn.create_channel
  ch.confirm_select
  missing = name("no-such-exchange")
  Bunny::Exchange.new(ch, :direct, missing, no_declare: true).publish("lost", routing_key: "anything")
  deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 5
  sleep 0.01 until ch.closed? || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
  expect(ch.closed?, "channel not closed within 5 s of a publish to a missing exchange")
  begin
    ch.wait_for_confirms
    raise CheckFailed, "wait_for_confirms returned on a channel closed by the broker"
  rescue Bunny::ChannelAlreadyClosed => e
    expect(e.message.end_with?("server-reported channel error: NOT_FOUND - no exchange '#{missing}' in vhost '/'"),
           "unexpected error: #{e.message}")
  end
  error = ch.instance_variable_get(:@last_channel_error)
  expect(error.is_a?(Bunny::NotFound), "expected Bunny::NotFound (404), got #{error.inspect}")
  expect(conn.open?, "connection should stay open")
  expect(ctx.session_errors.errors.empty?, "connection errors: #{ctx.session_errors.errors}")
  conn.create_channel.queue("", exclusive: true)
end

def main
  if ARGV.size != 1
    warn "usage: test_bunny.rb AMQP_URL"
    return 2
  end
  $url = ARGV[0]
  $stdout.sync = true
  passed = 0
  failed = 0
  CHECKS.each do |check_name, fn|
    ctx = Ctx.new
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    begin
      Timeout.timeout(CHECK_TIMEOUT, CheckTimeout, "no result within #{CHECK_TIMEOUT} s") { fn.call(ctx) }
      puts "ok #{check_name}"
      passed += 1
    rescue Exception => e # rubocop:disable Lint/RescueException - a check's failure must not stop the run
      raise if e.is_a?(Interrupt) || e.is_a?(SystemExit)

      reason = e.is_a?(CheckFailed) || e.is_a?(CheckTimeout) ? e.message : "#{e.class}: #{e.message}"
      puts "FAIL #{check_name}: #{reason}"
      warn e.full_message(highlight: false) unless e.is_a?(CheckFailed)
      failed += 1
    ensure
      begin
        Timeout.timeout(10) { ctx.close }
      rescue Exception # rubocop:disable Lint/RescueException
        nil
      end
    end
    elapsed = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
    puts format("   (%s took %.1f s)", check_name, elapsed) if elapsed > 5
  end
  puts "#{passed} passed, #{failed} failed"
  failed.zero? ? 0 : 1
end

exit(main)

// Stream queue checks (x-queue-type: stream) with amqp091-go, beside its integration tests,
// which know nothing of streams.
//
// Usage: stream_checks AMQP_URL
//
// Every check prints "ok NAME" or "FAIL NAME: REASON"; the last line is "N passed, N failed".
// Streams are named with a random suffix and deleted afterwards, so runs against a long-lived
// broker do not see each other's.
package main

import (
	"errors"
	"fmt"
	"math/rand"
	"os"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

var (
	url    string
	suffix = fmt.Sprintf("%08x", rand.New(rand.NewSource(time.Now().UnixNano())).Uint32())
)

func name(what string) string {
	return "interop-go-" + what + "-" + suffix
}

// declareStream declares a stream named for `what` on a connection of its own, and returns its
// name and a function that deletes it.
func declareStream(what string) (string, func(), error) {
	queue := name(what)
	conn, ch, err := open()
	if err != nil {
		return "", nil, err
	}
	if _, err := ch.QueueDeclare(queue, true, false, false, false, amqp.Table{"x-queue-type": "stream"}); err != nil {
		conn.Close()
		return "", nil, fmt.Errorf("queue.declare: %w", err)
	}
	return queue, func() {
		ch.QueueDelete(queue, false, false, false)
		conn.Close()
	}, nil
}

// open returns a new connection to the broker and a channel on it.
func open() (*amqp.Connection, *amqp.Channel, error) {
	conn, err := amqp.Dial(url)
	if err != nil {
		return nil, nil, err
	}
	ch, err := conn.Channel()
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	return conn, ch, nil
}

// refusal checks that err is the broker's close with `code` and `text`.
func refusal(err error, code int, text string) error {
	var e *amqp.Error
	if !errors.As(err, &e) {
		return fmt.Errorf("expected a %d close, got %v", code, err)
	}
	if e.Code != code || e.Reason != text {
		return fmt.Errorf("expected %d %q, got %d %q", code, text, e.Code, e.Reason)
	}
	return nil
}

var checks = []struct {
	name string
	run  func() error
}{
	{"stream_consume_from_first_with_offsets", func() error {
		queue, cleanup, err := declareStream("stream")
		if err != nil {
			return err
		}
		defer cleanup()
		conn, ch, err := open()
		if err != nil {
			return err
		}
		defer conn.Close()
		if err := ch.Confirm(false); err != nil {
			return fmt.Errorf("confirm.select: %w", err)
		}
		for i := 0; i < 5; i++ {
			dc, err := ch.PublishWithDeferredConfirm("", queue, false, false,
				amqp.Publishing{Body: []byte(fmt.Sprintf("m%d", i))})
			if err != nil {
				return fmt.Errorf("publish: %w", err)
			}
			if !dc.Wait() {
				return fmt.Errorf("publish %d was nacked", i)
			}
		}
		if err := ch.Qos(10, 0, false); err != nil {
			return fmt.Errorf("basic.qos: %w", err)
		}
		deliveries, err := ch.Consume(queue, "", false, false, false, false, amqp.Table{"x-stream-offset": "first"})
		if err != nil {
			return fmt.Errorf("basic.consume: %w", err)
		}
		for i := 0; i < 5; i++ {
			select {
			case d, ok := <-deliveries:
				if !ok {
					return errors.New("the consumer was closed")
				}
				want := fmt.Sprintf("m%d", i)
				if string(d.Body) != want {
					return fmt.Errorf("body %d: expected %q, got %q", i, want, d.Body)
				}
				// the broker sends a signed 64-bit integer (field type 'l')
				if offset, ok := d.Headers["x-stream-offset"].(int64); !ok || offset != int64(i) {
					return fmt.Errorf("x-stream-offset of %s: expected int64 %d, got %T %v",
						want, i, d.Headers["x-stream-offset"], d.Headers["x-stream-offset"])
				}
				if err := d.Ack(false); err != nil {
					return fmt.Errorf("ack: %w", err)
				}
			case <-time.After(5 * time.Second):
				return fmt.Errorf("delivery %d did not come within 5 s", i)
			}
		}
		return nil
	}},
	{"stream_non_durable_declare_refused", func() error {
		conn, ch, err := open()
		if err != nil {
			return err
		}
		defer conn.Close()
		queue := name("stream-transient")
		_, err = ch.QueueDeclare(queue, false, false, false, false, amqp.Table{"x-queue-type": "stream"})
		return refusal(err, 406,
			fmt.Sprintf("PRECONDITION_FAILED - invalid property 'non-durable' for queue '%s' in vhost '/'", queue))
	}},
	{"stream_consume_without_prefetch_refused", func() error {
		queue, cleanup, err := declareStream("stream-no-qos")
		if err != nil {
			return err
		}
		defer cleanup()
		conn, ch, err := open()
		if err != nil {
			return err
		}
		defer conn.Close()
		_, err = ch.Consume(queue, "", false, false, false, false, nil)
		if err := refusal(err, 406, fmt.Sprintf(
			"PRECONDITION_FAILED - consumer prefetch count is not set for 'queue '%s' in vhost '/''", queue)); err != nil {
			return err
		}
		if conn.IsClosed() {
			return errors.New("the connection was closed, not only the channel")
		}
		return nil
	}},
	{"stream_auto_ack_consume_not_implemented", func() error {
		queue, cleanup, err := declareStream("stream-auto-ack")
		if err != nil {
			return err
		}
		defer cleanup()
		conn, ch, err := open()
		if err != nil {
			return err
		}
		defer conn.Close()
		if err := ch.Qos(10, 0, false); err != nil {
			return fmt.Errorf("basic.qos: %w", err)
		}
		_, err = ch.Consume(queue, "", true, false, false, false, nil)
		if err := refusal(err, 540, fmt.Sprintf(
			"NOT_IMPLEMENTED - automatic acknowledgement not supported by stream queues queue '%s' in vhost '/'", queue)); err != nil {
			return err
		}
		// the connection's close may still be on its way when the channel hears of it
		for deadline := time.Now().Add(5 * time.Second); !conn.IsClosed(); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				return errors.New("the connection is still open")
			}
		}
		return nil
	}},
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: stream_checks AMQP_URL")
		os.Exit(2)
	}
	url = os.Args[1]
	passed, failed := 0, 0
	for _, c := range checks {
		done := make(chan error, 1)
		go func(run func() error) { done <- run() }(c.run)
		var err error
		select {
		case err = <-done:
		case <-time.After(30 * time.Second):
			err = errors.New("no result within 30 s")
		}
		if err != nil {
			fmt.Printf("FAIL %s: %v\n", c.name, err)
			failed++
		} else {
			fmt.Printf("ok %s\n", c.name)
			passed++
		}
	}
	fmt.Printf("%d passed, %d failed\n", passed, failed)
	if failed > 0 {
		os.Exit(1)
	}
}

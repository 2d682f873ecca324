// TLS checks with amqp091-go's own TLS API (DialTLS, DialTLS_ExternalAuth), beside its
// integration tests, which run.sh also runs over amqps://.
//
// Usage: tls_checks AMQPS_URL CA_PEM CLIENT_CERT_PEM CLIENT_KEY_PEM
//
// The client certificate must be signed by the CA and name the URL's user as the broker reads
// it for EXTERNAL. Every check prints "ok NAME" or "FAIL NAME: REASON"; the last line is
// "N passed, N failed".
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"os"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

var (
	url        string
	caPool     *x509.CertPool
	clientCert tls.Certificate
)

// roundTrip publishes one message under confirms to a new exclusive queue and gets it back.
func roundTrip(conn *amqp.Connection) error {
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("channel: %w", err)
	}
	if err := ch.Confirm(false); err != nil {
		return fmt.Errorf("confirm.select: %w", err)
	}
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		return fmt.Errorf("queue.declare: %w", err)
	}
	body := []byte("over TLS " + conn.LocalAddr().String())
	dc, err := ch.PublishWithDeferredConfirm("", q.Name, false, false, amqp.Publishing{Body: body})
	if err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	if !dc.Wait() {
		return errors.New("publish was nacked")
	}
	msg, ok, err := ch.Get(q.Name, true)
	if err != nil || !ok {
		return fmt.Errorf("basic.get: ok %v, %v", ok, err)
	}
	if string(msg.Body) != string(body) {
		return fmt.Errorf("body: expected %q, got %q", body, msg.Body)
	}
	return ch.Close()
}

// tlsConfig trusts the CA (or `roots`), showing `certs` to the broker.
func tlsConfig(roots *x509.CertPool, certs ...tls.Certificate) *tls.Config {
	return &tls.Config{RootCAs: roots, Certificates: certs, MinVersion: tls.VersionTLS12}
}

// foreignCertificate is a self-signed client certificate that no CA the broker trusts signed.
func foreignCertificate() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	template := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "guest", Organization: []string{"Nobody the broker trusts"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

var checks = []struct {
	name string
	run  func() error
}{
	{"dial_tls_with_ca_and_password", func() error {
		conn, err := amqp.DialTLS(url, tlsConfig(caPool))
		if err != nil {
			return err
		}
		defer conn.Close()
		state := conn.ConnectionState()
		if !state.HandshakeComplete || state.Version < tls.VersionTLS12 {
			return fmt.Errorf("TLS state: handshake complete %v, version %#x", state.HandshakeComplete, state.Version)
		}
		return roundTrip(conn)
	}},
	{"dial_tls_external_auth_with_client_certificate", func() error {
		// DialTLS_ExternalAuth logs in with EXTERNAL whatever user the URL names
		conn, err := amqp.DialTLS_ExternalAuth(url, tlsConfig(caPool, clientCert))
		if err != nil {
			return err
		}
		defer conn.Close()
		if len(conn.ConnectionState().PeerCertificates) == 0 {
			return errors.New("no server certificate in the connection state")
		}
		return roundTrip(conn)
	}},
	{"untrusted_server_certificate_refused", func() error {
		conn, err := amqp.DialTLS(url, tlsConfig(x509.NewCertPool()))
		if err == nil {
			conn.Close()
			return errors.New("a broker whose CA the client does not trust was accepted")
		}
		var unknown x509.UnknownAuthorityError
		if !errors.As(err, &unknown) {
			return fmt.Errorf("expected an unknown authority error, got %v", err)
		}
		return nil
	}},
	{"foreign_client_certificate_refused", func() error {
		foreign, err := foreignCertificate()
		if err != nil {
			return err
		}
		// Shown whatever CAs the broker names as acceptable (Go's client would otherwise show no
		// certificate, which fail_if_no_peer_cert = false lets through); the broker refuses the
		// handshake (with TLS 1.3 the client hears of it at its first read).
		config := tlsConfig(caPool)
		config.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return &foreign, nil
		}
		conn, err := amqp.DialTLS(url, config)
		if err == nil {
			conn.Close()
			return errors.New("a client certificate from an unknown CA was accepted")
		}
		if !strings.Contains(err.Error(), "tls: ") && !errors.Is(err, amqp.ErrCredentials) &&
			!strings.Contains(err.Error(), "EOF") && !strings.Contains(err.Error(), "reset") {
			return fmt.Errorf("expected a TLS alert or a closed connection, got %v", err)
		}
		return nil
	}},
}

func main() {
	if len(os.Args) != 5 {
		fmt.Fprintln(os.Stderr, "usage: tls_checks AMQPS_URL CA_PEM CLIENT_CERT_PEM CLIENT_KEY_PEM")
		os.Exit(2)
	}
	url = os.Args[1]
	passed, failed := 0, 0
	ca, err := os.ReadFile(os.Args[2])
	caPool = x509.NewCertPool()
	if err == nil && !caPool.AppendCertsFromPEM(ca) {
		err = fmt.Errorf("no certificate in %s", os.Args[2])
	}
	if err == nil {
		clientCert, err = tls.LoadX509KeyPair(os.Args[3], os.Args[4])
	}
	if err != nil {
		fmt.Printf("FAIL setup: %v\n0 passed, 1 failed\n", err)
		os.Exit(1)
	}
	for _, c := range checks {
		done := make(chan error, 1)
		go func(run func() error) { done <- run() }(c.run)
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

#!/usr/bin/env bash
# A RabbitMQ (Debian's rabbitmq-server, as /work/shared/tools/reference-broker.sh installs it) with
# an AMQPS listener, to run the interop suites' TLS checks and benches/amqps.rs against:
#   AMQP 127.0.0.1:5683, AMQPS 127.0.0.1:5681 (guest/guest, or EXTERNAL by the client
#   certificate's common name), node tls-reference@localhost, state under /tmp/rabbitmq-tls
# usage: benches/rabbitmq-tls.sh start CERT_DIR | stop | status
# CERT_DIR holds ca.pem, server.pem and server.key (interop/lib/tls.sh's tls_make_certs makes
# them); client certificates are verified against ca.pem but not required, as in interop/run-all.sh.
set -u
ST=/tmp/rabbitmq-tls
NODE=tls-reference@localhost
up() { (echo >/dev/tcp/127.0.0.1/5681) 2>/dev/null && (echo >/dev/tcp/127.0.0.1/5683) 2>/dev/null; }
as_rabbitmq() { su rabbitmq -s /bin/sh -c "$1"; }
case "${1:-status}" in
start)
    certs=${2:?usage: $0 start CERT_DIR}
    if ! up; then
        mkdir -p $ST/mnesia $ST/log $ST/certs
        cp "$certs/ca.pem" "$certs/server.pem" "$certs/server.key" $ST/certs/
        cat >$ST/rabbit.conf <<C
listeners.tcp.default = 127.0.0.1:5683
listeners.ssl.default = 127.0.0.1:5681
ssl_options.cacertfile = $ST/certs/ca.pem
ssl_options.certfile = $ST/certs/server.pem
ssl_options.keyfile = $ST/certs/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
ssl_cert_login_from = common_name
auth_mechanisms.1 = PLAIN
auth_mechanisms.2 = AMQPLAIN
auth_mechanisms.3 = EXTERNAL
C
        echo '[rabbitmq_auth_mechanism_ssl].' >$ST/enabled_plugins
        chown -R rabbitmq: $ST
        as_rabbitmq "RABBITMQ_NODENAME=$NODE RABBITMQ_DIST_PORT=25683 RABBITMQ_CONFIG_FILE=$ST/rabbit RABBITMQ_ENABLED_PLUGINS_FILE=$ST/enabled_plugins RABBITMQ_MNESIA_BASE=$ST/mnesia RABBITMQ_LOG_BASE=$ST/log setsid rabbitmq-server >$ST/out.log 2>&1 &"
    fi
    for _ in $(seq 90); do up && break; sleep 1; done
    "$0" status
    ;;
stop)
    as_rabbitmq "rabbitmqctl -n $NODE stop" >/dev/null 2>&1
    for _ in $(seq 30); do up || break; sleep 1; done
    "$0" status
    ;;
status)
    if up; then
        echo "RabbitMQ with TLS up: amqp://guest:guest@127.0.0.1:5683/%2f, amqps://guest:guest@127.0.0.1:5681/%2f"
    else
        echo "RabbitMQ with TLS down"
        exit 1
    fi
    ;;
*)
    echo "usage: $0 start CERT_DIR|stop|status" >&2
    exit 2
    ;;
esac

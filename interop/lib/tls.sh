# Sourced by interop/run-all.sh (and by whoever points the suites at another TLS broker): makes a
# throwaway CA and the certificates the suites' TLS checks use, with Debian's openssl CLI.

# tls_make_certs DIR: writes into DIR (P-256 keys, PEM, valid for two days)
#   ca.pem, ca.key           the CA ("CN=Warren interop CA")
#   server.pem, server.key   the broker's ("CN=localhost", SAN DNS:localhost and IP:127.0.0.1)
#   client.pem, client.key   a client's ("O=Warren interop, CN=guest": an EXTERNAL login named by
#                            the common name is guest)
# Returns non-zero, openssl's complaint on stderr, when one cannot be made.
tls_make_certs() {
    local dir=$1 log
    mkdir -p "$dir"
    log=$(mktemp)
    if {
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$dir/ca.key" \
            -out "$dir/ca.pem" -days 2 -subj "/CN=Warren interop CA" \
            -addext "basicConstraints = critical, CA:TRUE" \
            -addext "keyUsage = critical, keyCertSign, cRLSign" &&
            tls_leaf "$dir" server "/CN=localhost" \
                "subjectAltName = DNS:localhost, IP:127.0.0.1"$'\n'"extendedKeyUsage = serverAuth" &&
            tls_leaf "$dir" client "/O=Warren interop/CN=guest" "extendedKeyUsage = clientAuth"
    } >"$log" 2>&1; then
        rm -f "$log"
        return 0
    fi
    cat "$log" >&2
    rm -f "$log"
    return 1
}

# tls_leaf DIR NAME SUBJECT EXTENSIONS: a key and a certificate signed by DIR's CA
tls_leaf() {
    local dir=$1
    shift
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$dir/$1.key" \
        -subj "$2" -out "$dir/$1.csr" &&
        printf '%s\n' "basicConstraints = critical, CA:FALSE" "keyUsage = critical, digitalSignature" \
            "subjectKeyIdentifier = hash" "authorityKeyIdentifier = keyid" "$3" >"$dir/$1.ext" &&
        openssl x509 -req -in "$dir/$1.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
            -set_serial "0x$(openssl rand -hex 8)" -days 2 -extfile "$dir/$1.ext" -out "$dir/$1.pem" &&
        rm -f "$dir/$1.csr" "$dir/$1.ext"
}

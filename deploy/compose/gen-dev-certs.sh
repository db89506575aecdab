#!/bin/sh
# Generates one development CA and one server certificate shared by every
# proxy replica in deploy/docker-compose.yml, so a client that trusts ca.crt
# can connect through HAProxy to whichever replica it lands on (TLS is passed
# through to the replicas). Idempotent: existing files are kept.
#
#   gen-dev-certs.sh DIR [OWNER_UID[:GID]]
#
# Extra subject alternative names: DEV_CERT_SANS="DNS:mqtt.example.test,IP:10.0.0.5".
# Not for production: the CA key is left beside the certificates.
set -eu

dir=${1:?usage: gen-dev-certs.sh DIR [UID[:GID]]}
owner=${2:-}
days=${DEV_CERT_DAYS:-825}
sans="DNS:localhost,IP:127.0.0.1,IP:::1,DNS:haproxy,DNS:proxy-1,DNS:proxy-2,DNS:proxy-3"
if [ -n "${DEV_CERT_SANS:-}" ]; then
    sans="$sans,$DEV_CERT_SANS"
fi

mkdir -p "$dir"
if [ -s "$dir/server.crt" ] && [ -s "$dir/server.key" ] && [ -s "$dir/ca.crt" ]; then
    echo "gen-dev-certs: $dir already has server.crt, server.key and ca.crt; keeping them"
    exit 0
fi

umask 077
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# CA
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/ca.key"
openssl req -x509 -new -key "$tmp/ca.key" -sha256 -days "$days" \
    -subj "/CN=mqtt-kafka-proxy development CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$tmp/ca.crt"

# Server certificate (PKCS#8 EC key, which the proxy reads).
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/server.key"
openssl req -new -key "$tmp/server.key" -subj "/CN=localhost" -out "$tmp/server.csr"
cat > "$tmp/server.ext" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=$sans
EOF
openssl x509 -req -in "$tmp/server.csr" -CA "$tmp/ca.crt" -CAkey "$tmp/ca.key" \
    -CAcreateserial -days "$days" -sha256 -extfile "$tmp/server.ext" -out "$tmp/server.crt"

for f in ca.key ca.crt server.key server.crt; do
    cp "$tmp/$f" "$dir/$f"
done
chmod 0644 "$dir/ca.crt" "$dir/server.crt"
chmod 0600 "$dir/ca.key" "$dir/server.key"
if [ -n "$owner" ]; then
    chown "$owner" "$dir/server.key" "$dir/server.crt" "$dir/ca.crt"
fi
echo "gen-dev-certs: wrote $dir/{ca.crt,ca.key,server.crt,server.key} (SANs: $sans)"

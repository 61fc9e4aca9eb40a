#!/usr/bin/env bash
# Create a private CA, a broker certificate and client certificates for atsc.
#
#   make-ca.sh OUTDIR [CLIENT_IDENTITY ...]
#
# OUTDIR gets ca.crt/ca.key, server.crt/server.key and, per identity,
# client-<name>.crt/.key where <name> is the identity with "/" replaced by "_".
# The identity becomes the certificate CN, which mosquitto uses as the username
# on the certificate listener (use_identity_as_username), so it must match the
# ACL: service-<junction>, field-<junction>, <junction>/det/<detector_id>.
#
# Environment:
#   SERVER_NAMES  extra subjectAltNames for the broker, comma separated, e.g.
#                 "DNS:broker.example.org,IP:10.1.2.3" (localhost and 127.0.0.1
#                 are always included so local clients and tests can verify).
#   CA_DAYS / CERT_DAYS  validity (default 3650 / 825 days).
# An existing CA in OUTDIR is reused, so the script can add client certificates
# later without invalidating the ones already deployed.
set -euo pipefail

if [ "$#" -lt 1 ]; then
    echo "usage: $0 OUTDIR [CLIENT_IDENTITY ...]" >&2
    exit 2
fi
out="$1"; shift
ca_days="${CA_DAYS:-3650}"
cert_days="${CERT_DAYS:-825}"
san="DNS:localhost,IP:127.0.0.1,IP:::1${SERVER_NAMES:+,$SERVER_NAMES}"

umask 077
mkdir -p "$out"

# P-256 keys: small, fast to generate and supported by mosquitto and Python ssl.
newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

if [ ! -s "$out/ca.key" ] || [ ! -s "$out/ca.crt" ]; then
    newkey "$out/ca.key"
    openssl req -x509 -new -key "$out/ca.key" -sha256 -days "$ca_days" \
        -subj "/O=atsc/CN=atsc private CA" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$out/ca.crt"
fi

sign() {  # sign KEYFILE CN EXTFILE CERTFILE
    local csr
    csr="$(mktemp)"
    # "/" separates RDNs in -subj, so detector identities need it escaped.
    openssl req -new -key "$1" -subj "/O=atsc/CN=${2//\//\\/}" -out "$csr"
    openssl x509 -req -in "$csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
        -CAcreateserial -CAserial "$out/ca.srl" -days "$cert_days" -sha256 \
        -extfile "$3" -out "$4" 2>/dev/null
    rm -f "$csr"
}

ext="$(mktemp)"
trap 'rm -f "$ext"' EXIT

if [ ! -s "$out/server.key" ] || [ ! -s "$out/server.crt" ]; then
    newkey "$out/server.key"
    printf '%s\n' "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature,keyEncipherment" \
        "extendedKeyUsage=serverAuth" "subjectAltName=$san" > "$ext"
    sign "$out/server.key" "atsc-broker" "$ext" "$out/server.crt"
fi

printf '%s\n' "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature" "extendedKeyUsage=clientAuth" > "$ext"
for identity in "$@"; do
    # Only the three identity shapes the ACL knows; anything else would either
    # get no rights or, via the %u pattern, rights on an unexpected topic.
    if ! [[ "$identity" =~ ^(service|field)-[A-Za-z0-9_-]+$ || "$identity" =~ ^[A-Za-z0-9_-]+/det/[A-Za-z0-9_.-]+$ ]]; then
        echo "make-ca: bad identity '$identity' (want service-<junction>, field-<junction> or <junction>/det/<detector_id>)" >&2
        exit 2
    fi
    name="client-${identity//\//_}"
    if [ ! -s "$out/$name.key" ] || [ ! -s "$out/$name.crt" ]; then
        newkey "$out/$name.key"
        sign "$out/$name.key" "$identity" "$ext" "$out/$name.crt"
    fi
done

# Public parts may be world readable; keys stay 0600.
chmod 0644 "$out"/*.crt
echo "make-ca: certificates in $out" >&2

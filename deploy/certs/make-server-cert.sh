#!/usr/bin/env bash
# Create the coordinator's TLS certificate, signed by DIR/ca.pem and DIR/ca.key (from
# make-ca.sh or your own PKI): DIR/server.pem and DIR/server.key, the names
# `residency coordinator init` uses. Every HOST nodes may dial goes in subjectAltName.
set -euo pipefail

usage() {
    echo "usage: $(basename "$0") [-d DIR] [-y DAYS] HOST [HOST ...]" >&2
    echo "  HOST: a DNS name or an IP address nodes use to reach the coordinator" >&2
    echo "  reads DIR/ca.pem and DIR/ca.key, writes DIR/server.pem and DIR/server.key" >&2
    echo "  (default DIR: .; DAYS: 825)" >&2
    exit 2
}

dir=. days=825
while getopts "d:y:h" opt; do
    case "$opt" in
        d) dir=$OPTARG ;;
        y) days=$OPTARG ;;
        *) usage ;;
    esac
done
shift $((OPTIND - 1))
[[ $# -ge 1 ]] || usage
[[ $days =~ ^[1-9][0-9]*$ ]] || usage

names=() dns=0 ip=0
for host in "$@"; do
    if [[ $host =~ ^[0-9]+(\.[0-9]+){3}$ || $host == *:* ]]; then
        ip=$((ip + 1))
        names+=("IP.$ip = $host")
    elif [[ $host =~ ^[A-Za-z0-9*]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]]; then
        dns=$((dns + 1))
        names+=("DNS.$dns = $host")
    else
        echo "error: '$host' is neither a DNS name nor an IP address" >&2
        usage
    fi
done

for file in ca.pem ca.key; do
    if [[ ! -f "$dir/$file" ]]; then
        echo "error: $dir/$file not found; create a CA with make-ca.sh -d $dir" >&2
        exit 1
    fi
done
if [[ -e "$dir/server.key" || -e "$dir/server.pem" ]]; then
    echo "error: $dir/server.key or $dir/server.pem exists; move them away to renew" >&2
    exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
{
    cat <<CONF
[req]
distinguished_name = dn
[dn]
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = @names
[names]
CONF
    printf '%s\n' "${names[@]}"
} >"$work/openssl.cnf"

umask 077
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/server.key"
openssl req -new -config "$work/openssl.cnf" -key "$dir/server.key" -subj "/CN=$1" \
    -out "$work/server.csr"
openssl x509 -req -in "$work/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -sha256 -days "$days" \
    -extfile "$work/openssl.cnf" -extensions server -out "$dir/server.pem"
chmod 600 "$dir/server.key"
chmod 644 "$dir/server.pem"
openssl verify -CAfile "$dir/ca.pem" "$dir/server.pem" >/dev/null
echo "wrote $dir/server.pem and $dir/server.key for: $*"

#!/usr/bin/env bash
# Create a certificate authority for a Residency coordinator: DIR/ca.pem and DIR/ca.key, the
# names `residency coordinator init` uses. For institutions that keep their own PKI instead
# of the CA `coordinator init` makes; sign the server certificate with make-server-cert.sh.
set -euo pipefail

usage() {
    echo "usage: $(basename "$0") [-d DIR] [-n NAME] [-y DAYS]" >&2
    echo "  writes DIR/ca.pem and DIR/ca.key (default DIR: .; NAME: 'Residency CA'; DAYS: 3650)" >&2
    exit 2
}

dir=. name="Residency CA" days=3650
while getopts "d:n:y:h" opt; do
    case "$opt" in
        d) dir=$OPTARG ;;
        n) name=$OPTARG ;;
        y) days=$OPTARG ;;
        *) usage ;;
    esac
done
shift $((OPTIND - 1))
[[ $# -eq 0 ]] || usage
[[ $days =~ ^[1-9][0-9]*$ ]] || usage

if [[ -e "$dir/ca.key" || -e "$dir/ca.pem" ]]; then
    echo "error: $dir/ca.key or $dir/ca.pem exists; refusing to replace a CA" >&2
    exit 1
fi
mkdir -p "$dir"

config=$(mktemp)
trap 'rm -f "$config"' EXIT
cat >"$config" <<CONF
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
CONF

umask 077
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/ca.key"
openssl req -new -x509 -config "$config" -extensions ca -key "$dir/ca.key" \
    -subj "/CN=$name" -sha256 -days "$days" -out "$dir/ca.pem"
chmod 600 "$dir/ca.key"
chmod 644 "$dir/ca.pem"
echo "wrote $dir/ca.pem and $dir/ca.key (keep ca.key offline: only signing needs it)"

#!/usr/bin/env bash
# System packages the test suite needs, installed if missing (Debian/Ubuntu, apt):
# - iproute2, tshark/dumpcap: tests/integration/test_cross_border.py puts each country node in
#   its own network namespace and captures its traffic (run as root, as CI does);
# - chromium and a font: tests/e2e/test_audit_report_chromium.py renders the audit report.
# The README's test command and .ci/run both call this first.
set -euo pipefail

missing=0
for tool in tshark dumpcap ip chromium; do
  command -v "$tool" >/dev/null || missing=1
done
[ -d /usr/share/fonts/truetype/dejavu ] || missing=1
[ "$missing" = 0 ] && exit 0

if ! command -v apt-get >/dev/null; then
  echo "tests/system-packages.sh: apt-get not found; install tshark, iproute2, chromium and" \
    "fonts-dejavu-core with your package manager, then run the tests again" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  sudo="sudo"
fi
# Answer "no" to letting non-root users capture; root captures anyway.
echo "wireshark-common wireshark-common/install-setuid boolean false" | $sudo debconf-set-selections
$sudo apt-get update
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
  tshark iproute2 chromium fonts-dejavu-core

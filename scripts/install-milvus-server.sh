#!/usr/bin/env bash
# Install the Milvus 2.3.5 standalone server from PyPI (package `milvus`) into
# .venv-milvus-server/ in the repository root, and check that it starts.
#
# The package pins pymilvus < 2.4 for its optional client, which conflicts with the
# project's pymilvus 3.x, so the server gets its own virtual environment. Its wheel
# ships the server binary and shared libraries as .lzma files; this script unpacks
# them into .venv-milvus-server/milvus-home/bin, where tests/milvus_server.py runs
# them. It does nothing when a previous run finished its start check.
#
# Environment: PYTHON (default python3) creates the virtual environment.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv-milvus-server"
home="$venv/milvus-home"
stamp="$venv/.start-check-passed"
version=2.3.5

# Test sessions started at the same time may both run this script, so the second
# waits here for the first and then finds the stamp.
exec 9<"${BASH_SOURCE[0]}"
flock 9

if [ -x "$home/bin/milvus" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$version" ]; then
    exit 0
fi

fail() {
    echo "install-milvus-server: $*" >&2
    exit 1
}

log=$(mktemp)
check_dir=""
server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then
        kill -KILL -- "-$server_pid" 2>/dev/null || true
    fi
    if [ -n "$check_dir" ]; then
        rm -rf "$check_dir"
    fi
    rm -f "$log"
}
trap cleanup EXIT

if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$venv" >"$log" 2>&1 ||
        fail "creating $venv failed: $(tail -n 5 "$log")"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "milvus==$version" >"$log" 2>&1 ||
    fail "pip install milvus==$version failed: $(tail -n 5 "$log")"

# The md5 files written next to each library make a repeated unpack a no-op.
"$venv/bin/python" -c 'import sys, milvus; milvus._initialize_data_files(sys.argv[1])' \
    "$home" >"$log" 2>&1 ||
    fail "unpacking the server binary into $home failed: $(tail -n 5 "$log")"

missing=$(LD_LIBRARY_PATH="$home/bin" ldd "$home/bin/milvus" | grep 'not found' || true)
if [ -n "$missing" ]; then
    fail "the server binary needs shared libraries that are not installed: $missing"
fi

# Start check through the package's own launcher, which waits for /healthz and then
# prints its banner. The embedded etcd listens on 2379 and 2380 unless a config file
# sets other ports, so free ports keep this check clear of any other running server.
check_dir=$(mktemp -d)
read -r etcd_port peer_port < <("$venv/bin/python" -c '
import socket
sockets = [socket.socket() for _ in range(2)]
for sock in sockets:
    sock.bind(("127.0.0.1", 0))
print(*(sock.getsockname()[1] for sock in sockets))
')
cat >"$check_dir/etcd.yaml" <<EOF
listen-client-urls: http://127.0.0.1:$etcd_port
advertise-client-urls: http://127.0.0.1:$etcd_port
listen-peer-urls: http://127.0.0.1:$peer_port
initial-advertise-peer-urls: http://127.0.0.1:$peer_port
initial-cluster: default=http://127.0.0.1:$peer_port
EOF

# setsid gives the launcher and the server its own process group, which the
# cleanup trap kills as a whole.
ETCD_CONFIG_PATH="$check_dir/etcd.yaml" setsid "$venv/bin/milvus-server" \
    --data "$check_dir/data" --etcd-port "$etcd_port" >"$log" 2>&1 &
server_pid=$!

started=""
for _ in $(seq 1 120); do
    if grep -q 'Process:' "$log"; then
        started=yes
        break
    fi
    # The launcher prints "timeout" or "already stopped" when its wait fails.
    if grep -q -e 'timeout' -e 'already stopped' "$log"; then
        break
    fi
    if ! kill -0 "$server_pid" 2>/dev/null; then
        break
    fi
    sleep 1
done
if [ -z "$started" ]; then
    stderr_log="$check_dir/data/logs/milvus-stderr.log"
    fail "the server did not start within 120 s. Last lines of $stderr_log:
$(tail -n 20 "$stderr_log" 2>/dev/null || true)"
fi

kill -TERM -- "-$server_pid" 2>/dev/null || true
sleep 2
echo "$version" >"$stamp"

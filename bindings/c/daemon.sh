# Sourced by the shell scripts that need a daemon: start_daemon starts the release tidepoold
# on a private ipc endpoint and returns once it has bound (it prints one line then, read
# through a FIFO kept open on fd 3), setting $endpoint, $daemon (its pid) and $private (its
# directory); stop_daemon sends SIGTERM, waits, and returns the daemon's exit status.
start_daemon() {
    local root=$1
    private=$(mktemp -d /tmp/tidepool-daemon.XXXXXX)
    endpoint="ipc://$private/tidepool.sock"
    mkfifo "$private/ready"
    "$root/.build/release/tidepoold" --endpoint "$endpoint" --log-level warning > "$private/ready" 2> "$private/log" &
    daemon=$!
    exec 3< "$private/ready"
    local line
    read -r line <&3 || true
    [[ "$line" == *"listening on"* ]] || { echo "tidepoold did not start: $line $(cat "$private/log")" >&2; return 1; }
}

stop_daemon() {
    local status=0
    kill -TERM "$daemon" 2>/dev/null || true
    wait "$daemon" || status=$?
    exec 3<&-
    rm -rf "$private"
    return $status
}

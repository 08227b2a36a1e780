#!/usr/bin/env bash
# Drive a running cc_daemon with nothing but curl: every endpoint, over whichever
# transport the daemon listens on (Unix socket or TCP).
#
#   examples/curl.sh [--data-dir DIR]
#
# The daemon is found through DIR/daemon.json (DIR: --data-dir, else $CHEETAHCLAWS_HOME,
# else ~/.cheetahclaws). This script starts nothing; with no daemon it says so and exits 1.
# Start one first, e.g.:   cheetahclaws serve            (Unix socket)
#                          cheetahclaws serve --listen tcp://127.0.0.1:8765
#
# Every command is printed before it runs, ready to copy. On TCP the bearer token is fed
# to curl on stdin (-H @-), so it never appears on a command line (visible to other
# users in `ps`) nor in this script's output.
#
# Exit codes: 0 everything behaved as documented, 1 no daemon / the daemon misbehaved,
# 2 bad usage.

set -euo pipefail

API_HEADER='Cheetahclaws-Api-Version: 0'
KIND_HEADER='X-Client-Kind: curl-example'
RUN_TAG="curl-sh-$$-$(date +%s)"   # tells this run's events apart from anyone else's

usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; }
die() { printf 'curl.sh: %s\n' "$*" >&2; exit 1; }

# -- arguments and discovery ----------------------------------------------------------------
DATA_DIR="${CHEETAHCLAWS_HOME:-$HOME/.cheetahclaws}"
while (($#)); do
  case "$1" in
    --data-dir) (($# >= 2)) || { usage >&2; exit 2; }; DATA_DIR="$2"; shift 2 ;;
    --data-dir=*) DATA_DIR="${1#*=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) printf 'curl.sh: unknown argument %s\n' "$1" >&2; usage >&2; exit 2 ;;
  esac
done

command -v curl >/dev/null || die "curl is not installed"
DISCOVERY="$DATA_DIR/daemon.json"
[[ -r "$DISCOVERY" ]] || die "no daemon runs for $DATA_DIR ($DISCOVERY is missing). Start one with: cheetahclaws serve --data-dir $DATA_DIR"

# daemon.json is written pretty-printed, one key per line: a sed per field is enough.
json_field() { sed -n "s/^ *\"$1\": *\"\\([^\"]*\\)\".*/\\1/p" "$DISCOVERY" | head -n 1; }
# "url" is cc_daemon's own form of the address ("address" is the reference's, without a scheme).
ADDRESS="$(json_field url)"
case "$ADDRESS" in
  unix://*)
    TRANSPORT=unix
    SOCKET="${ADDRESS#unix://}"
    BASE=http://localhost ;;
  tcp://*)
    TRANSPORT=tcp
    BASE="http://${ADDRESS#tcp://}"
    TOKEN_PATH="$(json_field token_path)"
    [[ -n "$TOKEN_PATH" && -r "$TOKEN_PATH" ]] || die "cannot read the bearer token file '$TOKEN_PATH' named in $DISCOVERY" ;;
  *) die "$DISCOVERY names no usable address (got '$ADDRESS')" ;;
esac

TMP="$(mktemp -d)"
STREAM_PID=""
cleanup() {
  [[ -n "$STREAM_PID" ]] && kill "$STREAM_PID" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

# -- curl helpers ---------------------------------------------------------------------------
# Quote one word for display so the printed command can be pasted into a shell.
shell_word() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then printf '%s' "$1"
  else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}

show_command() {
  local line="" word
  for word in "$@"; do line+=" $(shell_word "$word")"; done
  if [[ $TRANSPORT == unix ]]; then
    printf '$ curl --unix-socket %s%s\n' "$(shell_word "$SOCKET")" "$line"
  else
    printf '$ printf '\''Authorization: Bearer %%s\\n'\'' "$(cat %s)" | curl -H @-%s\n' \
      "$(shell_word "$TOKEN_PATH")" "$line"
  fi
}

auth_header() { printf 'Authorization: Bearer %s\n' "$(cat "$TOKEN_PATH")"; }

# curl against the daemon, with the transport's options; prints nothing extra.
daemon_curl() {
  if [[ $TRANSPORT == unix ]]; then
    curl -sS --globoff --unix-socket "$SOCKET" "$@"
  else
    auth_header | curl -sS --globoff -H @- "$@"
  fi
}

# Print the command, run it, and print the HTTP status after the body.
step() {
  show_command "$@"
  daemon_curl -w '\n[HTTP %{http_code}]\n' "$@"
}

# POST one JSON-RPC body to /rpc (extra curl options may precede the body).
rpc() {
  local body="${*: -1}"
  step -H "$API_HEADER" -H "$KIND_HEADER" "${@:1:$#-1}" -d "$body" "$BASE/rpc"
}

# An SSE request that runs for a bounded time (a stream never ends by itself).
bounded_stream() {
  show_command --max-time 1 "$@"
  local status=0
  daemon_curl --max-time 1 "$@" 2>"$TMP/stream.err" || status=$?
  # 28 is curl's "timed out": the expected way for this bounded look at a stream to end.
  ((status == 0 || status == 28)) || die "curl failed ($status): $(cat "$TMP/stream.err")"
}

section() { printf '\n== %s ==\n' "$*"; }

wait_for_file() {  # wait_for_file FILE PATTERN SECONDS: until FILE contains PATTERN
  local deadline=$((SECONDS + $3))
  until grep -q -- "$2" "$1" 2>/dev/null; do
    ((SECONDS < deadline)) || return 1
    sleep 0.05
  done
}

# -- 1. is anyone there? --------------------------------------------------------------------
section "1. daemon at $ADDRESS (from $DISCOVERY)"
if ! daemon_curl -o /dev/null --max-time 5 "$BASE/healthz" 2>"$TMP/connect.err"; then
  die "$DISCOVERY names $ADDRESS but no daemon answers there ($(tr -d '\n' < "$TMP/connect.err")); a daemon that died leaves a stale discovery file behind: start one with cheetahclaws serve --data-dir $DATA_DIR"
fi

# -- 2. health, readiness, metrics ----------------------------------------------------------
section "2. GET /healthz, /readyz, /metrics (authenticated like everything else)"
step "$BASE/healthz"
step "$BASE/readyz"
step "$BASE/metrics"
# Prometheus scrapers ask for text; without that Accept, /metrics answers the JSON above.
show_command -H 'Accept: text/plain' "$BASE/metrics"
daemon_curl -H 'Accept: text/plain' "$BASE/metrics" | grep -E '^(# TYPE|ccd_)' | sed -n '1,12p'
echo "... (truncated)"

# -- 3. plain calls -------------------------------------------------------------------------
section "3. POST /rpc: system.ping, with the response headers (note X-Client-Id)"
show_command -i -H "$API_HEADER" -H "$KIND_HEADER" -d '{"jsonrpc":"2.0","method":"system.ping","id":1}' "$BASE/rpc"
daemon_curl -i -H "$API_HEADER" -H "$KIND_HEADER" -d '{"jsonrpc":"2.0","method":"system.ping","id":1}' "$BASE/rpc" \
  | tr -d '\r' | tee "$TMP/ping"
echo
CLIENT_ID="$(sed -n 's/^[Xx]-[Cc]lient-[Ii]d: *\([0-9a-f]\{32\}\)$/\1/p' "$TMP/ping")"
[[ -n "$CLIENT_ID" ]] || die "the daemon returned no X-Client-Id"
echo "our client id: $CLIENT_ID (a secret: present it again with -H 'X-Client-Id: ...' to be the same client)"
ME=(-H "X-Client-Id: $CLIENT_ID")

section "3b. system.version, and rpc.discover (the OpenRPC document; method names only here)"
rpc '{"jsonrpc":"2.0","method":"system.version","id":2}'
show_command -H "$API_HEADER" -d '{"jsonrpc":"2.0","method":"rpc.discover","id":3}' "$BASE/rpc"
daemon_curl -H "$API_HEADER" -d '{"jsonrpc":"2.0","method":"rpc.discover","id":3}' "$BASE/rpc" \
  | grep -o '"name":"[a-z_]*\.[a-z_.]*"' | sed 's/"name":/method /'

section "3c. echo.ping by name (publishes a ping_received event)"
rpc "${ME[@]}" '{"jsonrpc":"2.0","method":"echo.ping","params":{"run":"'"$RUN_TAG"'","step":"by-name"},"id":"e1"}'

# -- 4. notification ------------------------------------------------------------------------
section "4. a notification (no id): no JSON-RPC response, HTTP 204 and an empty body"
rpc '{"jsonrpc":"2.0","method":"echo.ping","params":{"run":"'"$RUN_TAG"'","step":"notification"}}'

# -- 5. batch -------------------------------------------------------------------------------
section "5. a batch: one array in, one array out; the notification in it gets no entry"
rpc '[{"jsonrpc":"2.0","method":"system.ping","id":1},
 {"jsonrpc":"2.0","method":"echo.ping","params":{"run":"'"$RUN_TAG"'","step":"batched notification"}},
 {"jsonrpc":"2.0","method":"no.such.method","id":"b"},
 {"jsonrpc":"2.0","method":"system.version","id":null}]'
section "5b. a batch of notifications only: HTTP 204"
rpc '[{"jsonrpc":"2.0","method":"system.ping"},{"jsonrpc":"2.0","method":"system.ping"}]'

# -- 6. errors ------------------------------------------------------------------------------
section "6. JSON-RPC errors (HTTP 200 with an error object)"
rpc '{"jsonrpc":"2.0","method":"no.such.method","id":10}'
rpc '{"jsonrpc":"2.0","method":"permission.answer","params":{"request_id":"pr_0000000000000000"},"id":11}'
rpc '{"jsonrpc":"2.0","method":"system.ping","id":12'
rpc '[]'
section "6b. HTTP errors: no API-version header (426), unknown path (404), wrong method (405)"
step -d '{"jsonrpc":"2.0","method":"system.ping","id":13}' "$BASE/rpc"
step "$BASE/no/such/path"
step "$BASE/rpc"

# -- 7. permission requests -----------------------------------------------------------------
section "7. permission requests: only the originator may answer"
rpc "${ME[@]}" '{"jsonrpc":"2.0","method":"permission.demo","params":{"tool":"Bash","input":{"command":"ls"},"rationale":"'"$RUN_TAG"'","timeout_s":120},"id":20}' \
  | tee "$TMP/demo"
REQUEST_ID="$(grep -o '"request_id":"pr_[0-9a-f]*"' "$TMP/demo" | head -n 1 | cut -d'"' -f4)"
[[ -n "$REQUEST_ID" ]] || die "permission.demo returned no request_id"
rpc "${ME[@]}" '{"jsonrpc":"2.0","method":"permission.list","id":21}'
echo "-- by-position params: [request_id, extend_s]"
rpc "${ME[@]}" '{"jsonrpc":"2.0","method":"permission.refresh_timeout","params":["'"$REQUEST_ID"'",300],"id":22}'
echo "-- another client (no X-Client-Id: the daemon mints a new one) is refused: HTTP 403, -32001"
rpc '{"jsonrpc":"2.0","method":"permission.answer","params":{"request_id":"'"$REQUEST_ID"'","result":{"approve":true}},"id":23}'
echo "-- the originator answers"
rpc "${ME[@]}" '{"jsonrpc":"2.0","method":"permission.answer","params":{"request_id":"'"$REQUEST_ID"'","result":{"approve":true,"reason":"fine"}},"id":24}'
rpc "${ME[@]}" '{"jsonrpc":"2.0","method":"permission.get","params":{"request_id":"'"$REQUEST_ID"'"},"id":25}'
echo "-- answering twice: -32002"
rpc "${ME[@]}" '{"jsonrpc":"2.0","method":"permission.answer","params":{"request_id":"'"$REQUEST_ID"'","result":{"approve":false}},"id":26}'

# -- 8. live events -------------------------------------------------------------------------
section "8. GET /events live with curl -N (in the background), then two echo.ping calls"
EVENTS_URL="$BASE/events?types=ping_received"
show_command -N -H "$API_HEADER" "${ME[@]}" "$EVENTS_URL"
if [[ $TRANSPORT == unix ]]; then
  curl -sS -N --globoff --max-time 30 --unix-socket "$SOCKET" -H "$API_HEADER" "${ME[@]}" "$EVENTS_URL" > "$TMP/live" &
else
  auth_header | curl -sS -N --globoff --max-time 30 -H @- -H "$API_HEADER" "${ME[@]}" "$EVENTS_URL" > "$TMP/live" &
fi
STREAM_PID=$!
# The daemon subscribes before it sends "retry:", so once that arrived nothing is missed.
wait_for_file "$TMP/live" '^retry:' 5 || die "no retry: frame on /events within 5 s"
for n in 1 2; do
  rpc "${ME[@]}" '{"jsonrpc":"2.0","method":"echo.ping","params":{"run":"'"$RUN_TAG"'","step":"live-'"$n"'"},"id":'"$n"'}' >/dev/null
  # Each event shows up while the stream is still open: streamed, not buffered until close.
  wait_for_file "$TMP/live" "\"step\":\"live-$n\"" 5 || die "event live-$n did not arrive on the open stream"
  echo "(published live-$n; the stream already shows it)"
done
kill "$STREAM_PID" 2>/dev/null || true
wait "$STREAM_PID" 2>/dev/null || true
STREAM_PID=""
echo "-- what curl -N printed:"
cat "$TMP/live"

# -- 9. replay and resume -------------------------------------------------------------------
FIRST_ID="$(awk -v want="\"step\":\"live-1\"" '/^id: /{id=$2} index($0, want){print id; exit}' "$TMP/live")"
[[ -n "$FIRST_ID" ]] || die "could not find the id of the live-1 event"
section "9. replay: ?since=$((FIRST_ID - 1)) sends every retained event after that id (both pings)"
echo "(this request presents no X-Client-Id, so originator.client_id is left out of every frame)"
bounded_stream -H "$API_HEADER" "$BASE/events?types=ping_received&since=$((FIRST_ID - 1))"
section "9b. resume: Last-Event-ID: $FIRST_ID wins over ?since=0 (only live-2 and later)"
bounded_stream -H "$API_HEADER" -H "Last-Event-ID: $FIRST_ID" "$BASE/events?types=ping_received&since=0"

section "done: every endpoint answered as documented over $TRANSPORT"

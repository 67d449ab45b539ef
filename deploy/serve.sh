#!/usr/bin/env bash
# Serve a manualrag vector store to a team: a Chroma server bound to 127.0.0.1 and, in front of it, an nginx
# reverse proxy that lets through only requests carrying `Authorization: Bearer <token>`.
#
#   deploy/serve.sh start     start both, wait until a heartbeat through the proxy (with the token) answers
#   deploy/serve.sh stop      stop both (SIGTERM, then wait; SIGKILL after 15 s)
#   deploy/serve.sh status    exit 0 when both run and answer, 3 otherwise
#
# Chroma 1.5.9's server has no authentication of its own: never bind it to anything but 127.0.0.1.
# Needs: nginx (Debian package `nginx`; `make setup` installs it) and the `chroma` command from the venv.
# Nothing under /etc/nginx or /var/lib/nginx is read or written; it works as root and as any user.
#
# Settings (environment variables; relative paths are taken from the repository root):
#   MANUALRAG_TOKEN              the bearer token clients must send (16-256 characters from A-Za-z0-9_-).
#                                Unset: read MANUALRAG_TOKEN_FILE, else the token kept in the run folder
#                                by an earlier start, else a new one is generated into RUN/token (0600).
#   MANUALRAG_TOKEN_FILE         a file holding the token (first line)
#   MANUALRAG_SERVE_DATA         Chroma's data folder                     (default data/chroma-server)
#   MANUALRAG_SERVE_RUN          run folder: pids, logs, rendered nginx config (holds the token, 0700)
#                                                                         (default data/serve-run)
#   MANUALRAG_SERVE_CHROMA_PORT  Chroma's port on 127.0.0.1               (default 8765)
#   MANUALRAG_SERVE_PROXY_PORT   the proxy's port                         (default 8766)
#   MANUALRAG_SERVE_PROXY_HOST   the proxy's listen address               (default 127.0.0.1)
#                                Another address (0.0.0.0, a LAN address) requires TLS:
#   MANUALRAG_SERVE_TLS_CERT     certificate chain (PEM) for https on the proxy port
#   MANUALRAG_SERVE_TLS_KEY      its private key (PEM)
#   MANUALRAG_SERVE_TIMEOUT      seconds to wait for both to answer       (default 30)
#   CHROMA                       the chroma command  (default .venv/bin/chroma, else `chroma` on PATH)
#   NGINX                        the nginx command   (default `nginx` on PATH, else /usr/sbin/nginx)
#
# Clients (manualrag) then use, in a config file:
#   store:
#     url: http://127.0.0.1:8766            # https://HOST:PORT with TLS
#     headers: {Authorization: "Bearer ${MANUALRAG_TOKEN}"}
set -euo pipefail
umask 077

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPLOY="$REPO/deploy"

abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$REPO/$1" ;; esac; }

DATA="$(abspath "${MANUALRAG_SERVE_DATA:-data/chroma-server}")"
RUN="$(abspath "${MANUALRAG_SERVE_RUN:-data/serve-run}")"
CHROMA_PORT="${MANUALRAG_SERVE_CHROMA_PORT:-8765}"
PROXY_PORT="${MANUALRAG_SERVE_PROXY_PORT:-8766}"
PROXY_HOST="${MANUALRAG_SERVE_PROXY_HOST:-127.0.0.1}"
TLS_CERT="${MANUALRAG_SERVE_TLS_CERT:-}"
TLS_KEY="${MANUALRAG_SERVE_TLS_KEY:-}"
TIMEOUT="${MANUALRAG_SERVE_TIMEOUT:-30}"

if [ -x "$REPO/.venv/bin/python" ]; then PY="$REPO/.venv/bin/python"; else PY="$(command -v python3 || true)"; fi
if [ -z "${CHROMA:-}" ]; then
  if [ -x "$REPO/.venv/bin/chroma" ]; then CHROMA="$REPO/.venv/bin/chroma"; else CHROMA="$(command -v chroma || true)"; fi
fi
if [ -z "${NGINX:-}" ]; then
  NGINX="$(command -v nginx || true)"
  [ -n "$NGINX" ] || { [ -x /usr/sbin/nginx ] && NGINX=/usr/sbin/nginx; } || true
fi

die() { echo "serve.sh: $*" >&2; exit 1; }
log() { echo "serve.sh: $*"; }

is_loopback() { case "$1" in 127.*|localhost|"[::1]") return 0 ;; *) return 1 ;; esac; }  # IPv6 in [ ]

scheme() { if [ -n "$TLS_CERT" ]; then echo https; else echo http; fi; }
client_host() {
  case "$PROXY_HOST" in 0.0.0.0|"[::]"|::) echo 127.0.0.1 ;; *) echo "$PROXY_HOST" ;; esac
}
proxy_url() {  # the one recorded by start (it knows about TLS), else from the settings
  if [ -s "$RUN/proxy.url" ]; then cat "$RUN/proxy.url"; else echo "$(scheme)://$(client_host):$PROXY_PORT"; fi
}
chroma_url() { echo "http://127.0.0.1:$CHROMA_PORT"; }

# HTTP status of GET URL (000 when unreachable). The token travels in the environment, never in argv.
http_status() {
  local url="$1" token="${2:-}"
  [ -n "$PY" ] || die "python3 is needed for health checks"
  SERVE_URL="$url" SERVE_TOKEN="$token" SERVE_CA="$TLS_CERT" "$PY" - <<'EOF'
import os, ssl, urllib.error, urllib.request
req = urllib.request.Request(os.environ["SERVE_URL"])
if os.environ["SERVE_TOKEN"]:
    req.add_header("Authorization", "Bearer " + os.environ["SERVE_TOKEN"])
ctx = None
if req.full_url.startswith("https:"):
    # a health check of our own proxy: trust its certificate, whatever name it carries
    ctx = ssl.create_default_context(cafile=os.environ["SERVE_CA"] or None)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
try:
    with urllib.request.urlopen(req, timeout=2, context=ctx) as resp:
        print(resp.status)
except urllib.error.HTTPError as exc:
    print(exc.code)
except Exception:
    print("000")
EOF
}

pid_alive() {  # pid_alive FILE NAME: the pid in FILE runs a process whose command line mentions NAME
  local file="$1" name="$2" pid
  [ -s "$file" ] || return 1
  pid="$(cat "$file")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$name"
}

stop_one() {  # stop_one FILE NAME; returns 1 when it was not running
  local file="$1" name="$2" pid i
  if ! pid_alive "$file" "$name"; then
    rm -f "$file"
    return 1
  fi
  pid="$(cat "$file")"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 150; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name (pid $pid) did not stop on SIGTERM within 15 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  log "stopped $name (pid $pid)"
  rm -f "$file"
}

resolve_token() {
  local tok="${MANUALRAG_TOKEN:-}"
  if [ -z "$tok" ] && [ -n "${MANUALRAG_TOKEN_FILE:-}" ]; then
    [ -r "$MANUALRAG_TOKEN_FILE" ] || die "MANUALRAG_TOKEN_FILE=$MANUALRAG_TOKEN_FILE cannot be read"
    tok="$(head -n1 "$MANUALRAG_TOKEN_FILE" | tr -d '\r\n')"
  fi
  if [ -z "$tok" ] && [ -s "$RUN/token" ]; then
    tok="$(head -n1 "$RUN/token" | tr -d '\r\n')"
  fi
  if [ -z "$tok" ]; then
    if command -v openssl >/dev/null 2>&1; then
      tok="$(openssl rand -hex 24)"
    else
      tok="$("$PY" -c 'import secrets; print(secrets.token_hex(24))')"
    fi
    (umask 077 && printf '%s\n' "$tok" >"$RUN/token")
    GENERATED_TOKEN=1
  fi
  if ! [[ "$tok" =~ ^[A-Za-z0-9_-]{16,256}$ ]]; then
    die "the token must be 16-256 characters from A-Z a-z 0-9 _ - (e.g. openssl rand -hex 24)"
  fi
  TOKEN="$tok"
}

make_private_dir() {  # a folder of ours, ignored by git when we create it
  if [ ! -d "$1" ]; then
    mkdir -p "$1"
    printf '*\n' >"$1/.gitignore"
  fi
}

render() {  # render TEMPLATE OUT
  local tls_sed='/^#TLS# /d'
  [ -n "$TLS_CERT" ] && tls_sed='s/^#TLS# //'
  local listen="$PROXY_HOST:$PROXY_PORT"
  [ -n "$TLS_CERT" ] && listen="$listen ssl"
  sed -e "$tls_sed" \
    -e "s|@LISTEN@|$listen|g" \
    -e "s|@CHROMA_PORT@|$CHROMA_PORT|g" \
    -e "s|@RUN_DIR@|$RUN|g" \
    -e "s|@TLS_CERT@|$TLS_CERT|g" \
    -e "s|@TLS_KEY@|$TLS_KEY|g" \
    -e "s|@TOKEN@|$TOKEN|g" \
    "$1" >"$2"
  chmod 600 "$2"
}

wait_for() {  # wait_for URL TOKEN WANT PIDFILE NAME LOG
  local url="$1" token="$2" want="$3" pidfile="$4" name="$5" logf="$6" deadline code
  deadline=$((SECONDS + TIMEOUT))
  while :; do
    code="$(http_status "$url" "$token")"
    [ "$code" = "$want" ] && return 0
    if ! pid_alive "$pidfile" "$name"; then
      echo "serve.sh: $name exited; the end of $logf:" >&2
      tail -n 30 "$logf" >&2 || true
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "serve.sh: $url did not answer $want within $TIMEOUT s (last: $code); the end of $logf:" >&2
      tail -n 30 "$logf" >&2 || true
      return 1
    fi
    sleep 0.2
  done
}

cmd_start() {
  [ -n "$CHROMA" ] && [ -x "$CHROMA" ] || die "the chroma command was not found (run make setup, or set CHROMA)"
  [ -n "$NGINX" ] && [ -x "$NGINX" ] || die "nginx was not found (apt-get install nginx, or make setup; or set NGINX)"
  for p in "$CHROMA_PORT" "$PROXY_PORT"; do
    [[ "$p" =~ ^[0-9]+$ ]] && [ "$p" -ge 1 ] && [ "$p" -le 65535 ] || die "bad port: $p"
  done
  [ "$CHROMA_PORT" != "$PROXY_PORT" ] || die "the Chroma and proxy ports must differ"
  if { [ -n "$TLS_CERT" ] && [ -z "$TLS_KEY" ]; } || { [ -z "$TLS_CERT" ] && [ -n "$TLS_KEY" ]; }; then
    die "set both MANUALRAG_SERVE_TLS_CERT and MANUALRAG_SERVE_TLS_KEY, or neither"
  fi
  if [ -n "$TLS_CERT" ]; then
    TLS_CERT="$(abspath "$TLS_CERT")"
    TLS_KEY="$(abspath "$TLS_KEY")"
    [ -r "$TLS_CERT" ] && [ -r "$TLS_KEY" ] || die "cannot read $TLS_CERT or $TLS_KEY"
  elif ! is_loopback "$PROXY_HOST"; then
    die "MANUALRAG_SERVE_PROXY_HOST=$PROXY_HOST serves beyond this machine: the bearer token would cross the network in clear text; set MANUALRAG_SERVE_TLS_CERT and MANUALRAG_SERVE_TLS_KEY (see deploy/nginx-manualrag.conf.template)"
  fi
  # these paths are written into the nginx configuration unquoted
  for p in "$RUN" "$TLS_CERT" "$TLS_KEY"; do
    [[ "$p" =~ ^[A-Za-z0-9._/+:,=-]*$ ]] || die "the path '$p' has characters the nginx configuration cannot take (keep to A-Za-z0-9._/+:,=-)"
  done
  if pid_alive "$RUN/chroma.pid" chroma || pid_alive "$RUN/nginx.pid" nginx; then
    die "already running from $RUN (deploy/serve.sh status; deploy/serve.sh stop first)"
  fi
  if [ "$(http_status "$(chroma_url)/api/v2/heartbeat")" != 000 ]; then
    die "port $CHROMA_PORT already answers HTTP: another server? set MANUALRAG_SERVE_CHROMA_PORT"
  fi

  make_private_dir "$RUN"
  make_private_dir "$DATA"
  chmod 700 "$RUN"
  mkdir -p "$RUN/tmp"
  GENERATED_TOKEN=0
  resolve_token

  # 1. Chroma, on the loopback interface only
  ANONYMIZED_TELEMETRY=False nohup "$CHROMA" run --path "$DATA" --host 127.0.0.1 --port "$CHROMA_PORT" \
    >"$RUN/chroma.log" 2>&1 </dev/null &
  echo $! >"$RUN/chroma.pid"
  if ! wait_for "$(chroma_url)/api/v2/heartbeat" "" 200 "$RUN/chroma.pid" chroma "$RUN/chroma.log"; then
    stop_one "$RUN/chroma.pid" chroma || true
    exit 1
  fi

  # 2. nginx, in the foreground of its own prefix (the token is only in the 0600 config, never in argv)
  rm -f "$RUN/proxy.url"
  render "$DEPLOY/nginx-manualrag.conf.template" "$RUN/manualrag-site.conf"
  render "$DEPLOY/nginx-standalone.conf.template" "$RUN/nginx.conf"
  if ! "$NGINX" -t -q -e "$RUN/nginx-error.log" -p "$RUN/" -c "$RUN/nginx.conf" >"$RUN/nginx.log" 2>&1; then
    cat "$RUN/nginx.log" >&2
    stop_one "$RUN/chroma.pid" chroma || true
    die "the rendered nginx configuration was refused (see above)"
  fi
  nohup "$NGINX" -e "$RUN/nginx-error.log" -p "$RUN/" -c "$RUN/nginx.conf" -g 'daemon off;' \
    >>"$RUN/nginx.log" 2>&1 </dev/null &
  echo $! >"$RUN/nginx.pid"
  if ! wait_for "$(proxy_url)/api/v2/heartbeat" "$TOKEN" 200 "$RUN/nginx.pid" nginx "$RUN/nginx-error.log"; then
    stop_one "$RUN/nginx.pid" nginx || true
    stop_one "$RUN/chroma.pid" chroma || true
    exit 1
  fi
  proxy_url >"$RUN/proxy.url"
  local anon
  anon="$(http_status "$(proxy_url)/api/v2/heartbeat")"
  if [ "$anon" != 401 ]; then
    stop_one "$RUN/nginx.pid" nginx || true
    stop_one "$RUN/chroma.pid" chroma || true
    die "the proxy answered $anon (not 401) to a request without the token: refusing to serve"
  fi

  log "Chroma $(chroma_url) (pid $(cat "$RUN/chroma.pid"), data $DATA)"
  log "proxy  $(proxy_url) (pid $(cat "$RUN/nginx.pid")): requests need 'Authorization: Bearer <token>'"
  if [ "$GENERATED_TOKEN" = 1 ]; then
    log "generated a token into $RUN/token (kept for later starts); clients use it with"
    echo "    export MANUALRAG_TOKEN=\"\$(cat $RUN/token)\""
  elif [ -z "${MANUALRAG_TOKEN:-}" ]; then
    log "token from ${MANUALRAG_TOKEN_FILE:-$RUN/token}"
  fi
  echo "    # config file:  store: {url: $(proxy_url), headers: {Authorization: \"Bearer \${MANUALRAG_TOKEN}\"}}"
  echo "    deploy/serve.sh stop     # stops both"
}

cmd_stop() {
  local stopped=0
  stop_one "$RUN/nginx.pid" nginx && stopped=1
  stop_one "$RUN/chroma.pid" chroma && stopped=1
  rm -f "$RUN/manualrag-site.conf" "$RUN/nginx.conf" "$RUN/proxy.url"  # the rendered config holds the token
  [ "$stopped" = 1 ] || log "nothing was running from $RUN"
}

cmd_status() {
  local ok=0 code
  if pid_alive "$RUN/chroma.pid" chroma; then
    code="$(http_status "$(chroma_url)/api/v2/heartbeat")"
    log "chroma: running (pid $(cat "$RUN/chroma.pid")), $(chroma_url) heartbeat: $code"
    [ "$code" = 200 ] || ok=3
  else
    log "chroma: not running"
    ok=3
  fi
  if pid_alive "$RUN/nginx.pid" nginx; then
    local tok="${MANUALRAG_TOKEN:-}"
    [ -z "$tok" ] && [ -n "${MANUALRAG_TOKEN_FILE:-}" ] && tok="$(head -n1 "$MANUALRAG_TOKEN_FILE" 2>/dev/null | tr -d '\r\n')"
    [ -z "$tok" ] && [ -s "$RUN/token" ] && tok="$(head -n1 "$RUN/token" | tr -d '\r\n')"
    if [ -n "$tok" ]; then
      code="$(http_status "$(proxy_url)/api/v2/heartbeat" "$tok")"
      log "proxy:  running (pid $(cat "$RUN/nginx.pid")), $(proxy_url) heartbeat with the token: $code"
      [ "$code" = 200 ] || ok=3
    else
      code="$(http_status "$(proxy_url)/api/v2/heartbeat")"
      log "proxy:  running (pid $(cat "$RUN/nginx.pid")), $(proxy_url) heartbeat without a token: $code (want 401; set MANUALRAG_TOKEN to check with it)"
      [ "$code" = 401 ] || ok=3
    fi
  else
    log "proxy:  not running"
    ok=3
  fi
  return "$ok"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  restart) cmd_stop; cmd_start ;;
  *) echo "usage: deploy/serve.sh start|stop|status|restart   (settings: see the top of this file)" >&2; exit 2 ;;
esac

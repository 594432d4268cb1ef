#!/usr/bin/env bash
# files-bench.sh: loopback file throughput, Sluice against nginx, on a 2-core
# machine. Server on core 0, generator on core 1.
#
# What it does, all by itself (servers and temp dir go away on exit):
#   * builds target/release/{sluice,sluice-load} (SKIP_BUILD=1 to skip);
#   * writes a SIZE_MIB (1024) MiB file of random bytes into a temp dir;
#   * starts `sluice serve` and nginx (`daemon off; worker_processes 1;
#     sendfile on; tcp_nopush on;`, access_log off), both `taskset -c 0`;
#   * after one untimed warm-up download from each (Sluice computes the
#     file's sha256 on first open), runs ROUNDS (3) rounds, each case as
#     nginx then Sluice (A B A B ...), generator `taskset -c 1`:
#       - 1 download: curl | sluice-load download (client sha256 on, and off)
#       - CONC (8) concurrent downloads, one socket each: same
#       - 1 upload of the file's size: nginx PUT (dav module, curl -T; no
#         fsync, no digest: a reference only) | sluice-load upload (sha256
#         declared and checked, fsync, rename)
#   * samples each server's CPU time (utime+stime from /proc/<pid>/stat, the
#     nginx master and its workers) before and after every run;
#   * prints a markdown table of medians to stdout (progress to stderr).
#
# MB/s = 10^6 bytes per second; server CPU in CPU-seconds per GB (10^9 bytes).
# Needs: curl, nginx (installed with apt-get when missing and run as root),
# taskset, getconf. Environment knobs: ROUNDS, SIZE_MIB, CONC, SLUICE_PORT,
# NGINX_PORT, CHUNK (download chunk size asked by sluice-load, default: the
# server's), UPLOAD_CHUNK (default 1MiB), NGINX (path of the binary).
set -euo pipefail

ROUNDS=${ROUNDS:-3}
SIZE_MIB=${SIZE_MIB:-1024}
CONC=${CONC:-8}
SLUICE_PORT=${SLUICE_PORT:-4640}
NGINX_PORT=${NGINX_PORT:-4641}
CHUNK=${CHUNK:-}
UPLOAD_CHUNK=${UPLOAD_CHUNK:-1MiB}
NGINX=${NGINX:-/usr/sbin/nginx}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SLUICE=$ROOT/target/release/sluice
LOAD=$ROOT/target/release/sluice-load
SIZE=$((SIZE_MIB * 1024 * 1024))
TICK=$(getconf CLK_TCK)

log() { printf '%s\n' "$*" >&2; }
die() { log "files-bench: $*"; exit 1; }

[ "$(nproc --all)" -ge 2 ] || die "needs 2 cores (server on 0, generator on 1)"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "building release binaries"
    (cd "$ROOT" && cargo build --release -q -p sluice -p sluice-load) || die "build failed"
fi
[ -x "$SLUICE" ] && [ -x "$LOAD" ] || die "missing $SLUICE or $LOAD"
if [ ! -x "$NGINX" ]; then
    [ "$(id -u)" = 0 ] || die "nginx is missing (apt-get install nginx)"
    log "installing nginx"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx >&2 || die "cannot install nginx"
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/files-bench.XXXXXX")
SLUICE_PID=
NGINX_PID=
cleanup() {
    for pid in $SLUICE_PID $NGINX_PID; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in $SLUICE_PID $NGINX_PID; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$TMP/files" "$TMP/uploads" "$TMP/nginx/tmp" "$TMP/files/up"
# nginx's worker runs as an unprivileged user when started by root.
chmod 755 "$TMP" "$TMP/files" "$TMP/nginx"
chmod 1777 "$TMP/files/up" "$TMP/nginx/tmp"
log "writing a $SIZE_MIB MiB file of random bytes"
head -c "$SIZE" /dev/urandom >"$TMP/files/big.bin"
# Older than Sluice's --file-settle (2 s), so it is memory-mapped, not copied.
touch -d '-1 minute' "$TMP/files/big.bin"

# --- servers --------------------------------------------------------------

SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export SLUICE_SECRET_KEY_BASE=$SECRET
export SLUICE_API_KEY=files-bench-api-key
taskset -c 0 "$SLUICE" serve --listen "127.0.0.1:$SLUICE_PORT" \
    --files-dir "$TMP/files" --uploads-dir "$TMP/uploads" \
    --max-upload-bytes $((SIZE + 1)) --log-level warn \
    >"$TMP/sluice.log" 2>&1 &
SLUICE_PID=$!

cat >"$TMP/nginx/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    client_body_temp_path $TMP/nginx/tmp/body;
    proxy_temp_path $TMP/nginx/tmp/proxy;
    fastcgi_temp_path $TMP/nginx/tmp/fastcgi;
    uwsgi_temp_path $TMP/nginx/tmp/uwsgi;
    scgi_temp_path $TMP/nginx/tmp/scgi;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $TMP/files;
        location /up/ {
            dav_methods PUT;
            client_max_body_size 0;
        }
    }
}
EOF
taskset -c 0 "$NGINX" -e "$TMP/nginx/error.log" -p "$TMP/nginx/" -c "$TMP/nginx/nginx.conf" \
    >"$TMP/nginx/stdout.log" 2>&1 &
NGINX_PID=$!

for _ in $(seq 100); do
    s=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$SLUICE_PORT/healthz" || true)
    n=$(curl -s -o /dev/null -w '%{http_code}' -r 0-0 "http://127.0.0.1:$NGINX_PORT/big.bin" || true)
    [ "$s" = 200 ] && [ "$n" = 206 ] && break
    kill -0 "$SLUICE_PID" 2>/dev/null || die "sluice exited: $(cat "$TMP/sluice.log")"
    kill -0 "$NGINX_PID" 2>/dev/null || die "nginx exited: $(cat "$TMP/nginx/error.log")"
    sleep 0.1
done
[ "$s" = 200 ] && [ "$n" = 206 ] || die "servers not ready (sluice $s, nginx $n)"

# --- measuring ------------------------------------------------------------

# CPU ticks (utime + stime) of a process and its children (nginx's worker).
cpu_ticks() {
    local total=0 pid t
    for pid in "$1" $(ps -o pid= --ppid "$1" 2>/dev/null); do
        # Fields after the `(comm)`: state is 1, utime 12, stime 13.
        t=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13}') || continue
        total=$((total + ${t:-0}))
    done
    echo "$total"
}

now() { date +%s.%N; }

RESULTS=$TMP/results.tsv
: >"$RESULTS"

# record CASE SERVER MBPS TICKS BYTES
record() {
    local cpu
    local mbps cpu
    mbps=$(awk -v m="$3" 'BEGIN { printf "%.1f", m }')
    cpu=$(awk -v t="$4" -v hz="$TICK" -v b="$5" 'BEGIN { printf "%.3f", (t / hz) / (b / 1e9) }')
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$mbps" "$cpu" >>"$RESULTS"
    log "  $(printf '%-26s %-7s %9s MB/s %7s CPU-s/GB' "$1" "$2" "$mbps" "$cpu")"
}

LOAD_ARGS=(--url "ws://127.0.0.1:$SLUICE_PORT/socket/websocket" --secret-key-base "$SECRET"
    --duration 300s --timeout 30s --json)
CHUNK_ARGS=()
[ -n "$CHUNK" ] && CHUNK_ARGS=(--chunk-size "$CHUNK")

# nginx: N concurrent curl downloads; aggregate MB/s over the batch's wall time.
nginx_download() {
    local n=$1 label=$2 t0 t1 c0 c1 i pids=()
    c0=$(cpu_ticks "$NGINX_PID")
    t0=$(now)
    for i in $(seq "$n"); do
        taskset -c 1 curl -s -o /dev/null -w '%{http_code} %{size_download} %{speed_download}\n' \
            "http://127.0.0.1:$NGINX_PORT/big.bin" >"$TMP/curl.$i" &
        pids+=($!)
    done
    wait "${pids[@]}" || true
    t1=$(now)
    c1=$(cpu_ticks "$NGINX_PID")
    for i in $(seq "$n"); do
        read -r code got _ <"$TMP/curl.$i"
        [ "$code" = 200 ] && [ "$got" = "$SIZE" ] || die "curl $i: HTTP $code, $got bytes"
    done
    local mbps
    if [ "$n" = 1 ]; then
        mbps=$(awk '{ printf "%.1f", $3 / 1e6 }' "$TMP/curl.1")
    else
        mbps=$(awk -v b=$((n * SIZE)) -v a="$t0" -v z="$t1" 'BEGIN { printf "%.1f", b / (z - a) / 1e6 }')
    fi
    record "$label" nginx "$mbps" $((c1 - c0)) $((n * SIZE))
}

# sluice-load with ARGS; takes MB/s from its JSON, refuses any error.
sluice_run() {
    local label=$1 bytes=$2 c0 c1 out
    shift 2
    c0=$(cpu_ticks "$SLUICE_PID")
    out=$(taskset -c 1 "$LOAD" "${LOAD_ARGS[@]}" "$@") || die "sluice-load $*: $out"
    c1=$(cpu_ticks "$SLUICE_PID")
    local errors mbps
    errors=$(jq -r '.errors' <<<"$out")
    [ "$errors" = 0 ] || die "sluice-load $*: $errors errors: $out"
    mbps=$(jq -r '.transfer.mb_per_s' <<<"$out")
    record "$label" sluice "$mbps" $((c1 - c0)) "$bytes"
}

nginx_upload() {
    local label=$1 c0 c1 res
    c0=$(cpu_ticks "$NGINX_PID")
    res=$(taskset -c 1 curl -s -o /dev/null -w '%{http_code} %{size_upload} %{speed_upload}' \
        -T "$TMP/files/big.bin" "http://127.0.0.1:$NGINX_PORT/up/put.bin")
    c1=$(cpu_ticks "$NGINX_PID")
    read -r code sent speed <<<"$res"
    case "$code" in 201 | 204) ;; *) die "nginx PUT: HTTP $code" ;; esac
    [ "$sent" = "$SIZE" ] || die "nginx PUT sent $sent bytes"
    record "$label" nginx "$(awk -v s="$speed" 'BEGIN { printf "%.1f", s / 1e6 }')" $((c1 - c0)) "$SIZE"
    rm -f "$TMP/files/up/put.bin"
}

sluice_upload() {
    sluice_run "$1" "$SIZE" upload --size "$SIZE" --chunk-size "$UPLOAD_CHUNK" --name bench
    rm -f "$TMP"/uploads/*/bench-*.bin
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "warm-up (untimed); load average $LOAD_BEFORE"
taskset -c 1 curl -s -o /dev/null "http://127.0.0.1:$NGINX_PORT/big.bin"
taskset -c 1 "$LOAD" "${LOAD_ARGS[@]}" download --file big.bin >/dev/null || die "warm-up download failed"

D1="download x1"
D1N="download x1, no client sha"
DC="download x$CONC"
DCN="download x$CONC, no client sha"
UP="upload x1"
for round in $(seq "$ROUNDS"); do
    log "round $round of $ROUNDS"
    nginx_download 1 "$D1"
    sluice_run "$D1" "$SIZE" download --file big.bin "${CHUNK_ARGS[@]}"
    nginx_download 1 "$D1N"
    sluice_run "$D1N" "$SIZE" download --file big.bin --no-verify "${CHUNK_ARGS[@]}"
    nginx_download "$CONC" "$DC"
    sluice_run "$DC" $((CONC * SIZE)) download --file big.bin -c "$CONC" "${CHUNK_ARGS[@]}"
    nginx_download "$CONC" "$DCN"
    sluice_run "$DCN" $((CONC * SIZE)) download --file big.bin -c "$CONC" --no-verify "${CHUNK_ARGS[@]}"
    nginx_upload "$UP"
    sluice_upload "$UP"
done

# --- the table --------------------------------------------------------------

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
column_of() { awk -F'\t' -v c="$1" -v s="$2" -v k="$3" '$1 == c && $2 == s { print $k }' "$RESULTS"; }
range_of() { column_of "$@" | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%s–%s", lo, hi }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "–" }'; }

echo
echo "Loopback, ${SIZE_MIB} MiB file, medians of $ROUNDS rounds (min–max), server \`taskset -c 0\`, generator \`taskset -c 1\`,"
echo "download chunk ${CHUNK:-server default}, upload chunk $UPLOAD_CHUNK. MB/s = 10^6 B/s; CPU = server CPU-seconds per GB moved."
echo
echo "| case | nginx MB/s | sluice MB/s | sluice/nginx | nginx CPU s/GB | sluice CPU s/GB | sluice/nginx |"
echo "|---|---|---|---|---|---|---|"
for c in "$D1" "$D1N" "$DC" "$DCN" "$UP"; do
    nm=$(column_of "$c" nginx 3 | median)
    sm=$(column_of "$c" sluice 3 | median)
    nc=$(column_of "$c" nginx 4 | median)
    sc=$(column_of "$c" sluice 4 | median)
    echo "| $c | $nm ($(range_of "$c" nginx 3)) | $sm ($(range_of "$c" sluice 3)) | $(ratio "$sm" "$nm") | $nc | $sc | $(ratio "$sc" "$nc") |"
done
echo
echo "nginx rows: curl -o /dev/null (no digest). \"no client sha\": sluice-load --no-verify; the nginx run of that row is a"
echo "second identical curl run. Upload: nginx is a DAV PUT (body to a temp file, rename; no fsync, no digest),"
echo "sluice verifies the declared sha256, fsyncs and renames. Load average before/after: $LOAD_BEFORE / $LOAD_AFTER"
echo "(anything else running on these 2 cores skews the figures)."

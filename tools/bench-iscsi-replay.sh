# The fleet replay of tools/bench-iscsi (--replay), sourced by it: BIN, W, INI, pids,
# free_port and the cleanup trap are its. See the usage there.
[ "$(id -u)" = 0 ] || { echo "$0 --replay: needs root (drops the page cache)" >&2; exit 1; }
gcc -O2 -Wall -o "$W/replay" tools/bench-iscsi-replay.c -liscsi
IFS=, read -r -a FLEETS <<< "$SESSIONS"
MAXN=$(printf '%s\n' "${FLEETS[@]}" | sort -n | tail -1)

# ---- the trace (chunk runs) and an image it fits in
python3 - "$W" "${TRACE:-}" <<'EOF'
import random, struct, sys, zlib
w, src = sys.argv[1], sys.argv[2]
CS = 4096
if src:
    b = open(src, "rb").read()
    assert b[:8] == b"STRTRACE" and zlib.crc32(b[:-4]).to_bytes(4, "little") == b[-4:], src
    cs = struct.unpack_from("<I", b, 12)[0]
    assert cs == CS, f"chunk size {cs}"
    n = struct.unpack_from("<Q", b, 48)[0]
    runs = [struct.unpack_from("<QI", b, 56 + 12 * i) for i in range(n)]
    what = f"recorded boot trace {src}"
else:
    # A Debian boot's shape: GPT and FAT metadata, GRUB, the kernel and the initramfs as
    # two long runs, then the root's reads; 5,800 chunks in 131 runs, at random places.
    rnd = random.Random(11)
    lens = [rnd.randint(1, 31) for _ in range(129)]
    lens = [max(1, l * 2005 // sum(lens)) for l in lens]
    lens[5:5] = [2013, 1782]  # 8,247,232 and 7,299,759 bytes, in 4 KiB chunks
    space = 256 << 20 >> 12
    starts, used = [], set()
    for l in lens:
        while True:
            s = rnd.randrange(0, space - l)
            if not any(c in used for c in range(s - 1, s + l + 1)):
                break
        used.update(range(s, s + l))
        starts.append(s)
    runs = list(zip(starts, lens))
    what = "synthetic boot trace (the shape of a Debian boot's kernel+initramfs reads)"
end = max(f + n for f, n in runs) * CS
size = max(256 << 20, (end + (64 << 20) - 1) // (64 << 20) * (64 << 20))
with open(f"{w}/trace.runs", "w") as f:
    for first, n in runs:
        f.write(f"{first * CS} {n * CS}\n")
with open(f"{w}/trace.info", "w") as f:
    f.write(f"{size} {sum(n for _, n in runs)} {len(runs)} {what}\n")
EOF
read -r IMG_BYTES T_CHUNKS T_RUNS T_WHAT < "$W/trace.info"
T_MIB=$((T_CHUNKS * 4096 >> 20))
echo "trace: $T_WHAT: $T_CHUNKS chunks ($T_MIB MiB) in $T_RUNS runs; image $((IMG_BYTES >> 20)) MiB" >&2
head -c "$IMG_BYTES" /dev/urandom > "$W/gold.raw"

# ---- strata: the image, MAXN clones, each exported to its own initiator
R="$BIN --repo $W/repo"
$R image import --name boot "$W/gold.raw" >/dev/null
echo "creating $MAXN clones and exports" >&2
for i in $(seq 1 "$MAXN"); do
    $R volume create "c$i" --from boot >/dev/null
    $R export "c$i" --initiator "$INI-$i" >/dev/null
done
# The trace file for the image (its identity: SHA-256 of the index), kept aside.
python3 - "$W" <<'EOF'
import hashlib, struct, sys, zlib
w = sys.argv[1]
ident = hashlib.sha256(open(f"{w}/repo/images/boot/index", "rb").read()).digest()
runs = [tuple(map(int, l.split())) for l in open(f"{w}/trace.runs")]
b = b"STRTRACE" + struct.pack("<II", 1, 4096) + ident + struct.pack("<Q", len(runs))
for off, n in runs:
    b += struct.pack("<QI", off // 4096, n // 4096)
b += zlib.crc32(b).to_bytes(4, "little")
open(f"{w}/boot-trace", "wb").write(b)
EOF

# ---- tgt: copies holding the trace's bytes, sparse elsewhere
NCOPIES=$((MAXN < TGT_MAX_COPIES ? MAXN : TGT_MAX_COPIES))
echo "making $NCOPIES copies for tgt" >&2
python3 - "$W" "$NCOPIES" "$IMG_BYTES" <<'EOF'
import os, sys
w, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
runs = [tuple(map(int, l.split())) for l in open(f"{w}/trace.runs")]
src = os.open(f"{w}/gold.raw", os.O_RDONLY)
pieces = [(off, os.pread(src, ln, off)) for off, ln in runs]
for i in range(1, n + 1):
    fd = os.open(f"{w}/tgt{i}.raw", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.ftruncate(fd, size)
    for off, data in pieces:
        os.pwrite(fd, data, off)
    os.close(fd)
EOF
TGT_PORT=$(free_port)
TGT_PID=
start_tgt() {
    tgtd -f --iscsi portal=127.0.0.1:$TGT_PORT > "$W/tgtd.log" 2>&1 &
    TGT_PID=$!
    pids+=($TGT_PID)
    for _ in $(seq 100); do tgtadm --lld iscsi --op show --mode target >/dev/null 2>&1 && break; sleep 0.1; done
    for i in $(seq 1 "$NCOPIES"); do
        tgtadm --lld iscsi --op new --mode target --tid "$i" -T "iqn.2026-11.org.peer:c$i"
        tgtadm --lld iscsi --op new --mode logicalunit --tid "$i" --lun 1 -b "$W/tgt$i.raw"
        tgtadm --lld iscsi --op bind --mode target --tid "$i" -I ALL
    done
}
stop_tgt() {
    tgtadm --lld iscsi --op delete --mode system >/dev/null 2>&1 || true
    kill "$TGT_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$TGT_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$TGT_PID" 2>/dev/null || true
    wait "$TGT_PID" 2>/dev/null || true
}
SPID=
start_strata() {
    : > "$W/serve.out"
    : > "$W/serve.log"
    $R --cache-mb $((T_MIB + 256)) serve ${STRATA_SERVE_ARGS:-} --listen 127.0.0.1:0 \
        > "$W/serve.out" 2>> "$W/serve.log" &
    SPID=$!
    pids+=($SPID)
    for _ in $(seq 300); do grep -q "serving iSCSI on" "$W/serve.out" && break; sleep 0.1; done
    S_ADDR=$(sed -n 's/^serving iSCSI on //p' "$W/serve.out" | head -1)
}
stop_strata() {
    kill "$SPID"
    wait "$SPID" 2>/dev/null || true
}
field() { sed -n "s/^$1=//p" "$2"; }
logfield() { grep "$2" "$W/serve.log" | tail -1 | tr ' ' '\n' | sed -n "s/^$1=//p" | tr -d '"'; }

replay() { # which(strata|strata-trace|tgt) N -> $W/out.which.N
    local which=$1 n=$2 i pid out="$W/out.$1.$2"
    sync
    echo 3 > /proc/sys/vm/drop_caches
    : > "$W/urls"
    case $which in
        tgt)
            start_tgt
            for i in $(seq 1 "$n"); do
                echo "$INI-$i iscsi://127.0.0.1:$TGT_PORT/iqn.2026-11.org.peer:c$(((i - 1) % NCOPIES + 1))/1" >> "$W/urls"
            done
            pid=$TGT_PID ;;
        *)
            rm -f "$W/repo/images/boot/boot-trace"
            if [ "$which" = strata-trace ]; then cp "$W/boot-trace" "$W/repo/images/boot/boot-trace"; fi
            start_strata
            for i in $(seq 1 "$n"); do
                echo "$INI-$i iscsi://$S_ADDR/iqn.2026-11.org.strata:c$i/0" >> "$W/urls"
            done
            pid=$SPID ;;
    esac
    if ! "$W/replay" -q 4 -m 128 -p "$pid" "$W/trace.runs" "$W/urls" > "$out" 2> "$out.err"; then
        echo "replay by $n sessions against $which failed:" >&2
        cat "$out.err" >&2
        tail -20 "$W/serve.log" >&2 || true
        exit 1
    fi
    case $which in
        tgt) stop_tgt ;;
        *)
            stop_strata
            {
                echo "srv_p50_below_us=$(logfield p50_us_below 'read latency')"
                echo "srv_p99_below_us=$(logfield p99_us_below 'read latency')"
                echo "srv_mean_us=$(logfield mean_us 'read latency')"
                echo "srv_reads=$(logfield reads 'read latency')"
                echo "srv_buckets=$(grep 'read latency' "$W/serve.log" | tail -1 | sed -n 's/.*buckets=\(.*\) *$/\1/p' | tr -d '"')"
                echo "mib_loaded=$(logfield mib_loaded 'image chunk cache')"
            } >> "$out"
            ;;
    esac
}

ROUNDS=${ROUNDS:-2}
for n in "${FLEETS[@]}"; do
    for round in $(seq 1 "$ROUNDS"); do
        for which in tgt strata strata-trace; do
            echo "replay: $n sessions, $which, round $round" >&2
            replay "$which" "$n"
            mv "$W/out.$which.$n" "$W/res.$which.$n.$round"
        done
    done
done

echo
echo "fleet replay on 127.0.0.1, $(nproc) CPUs: $T_WHAT, $T_CHUNKS chunks ($T_MIB MiB) in $T_RUNS runs per session,"
echo "reads of <= 128 KiB, 4 in flight per session, cold caches; best of $ROUNDS rounds by MB/s"
best_of() { # which n -> file of the round with the highest mb_s
    local f b= bm=0 m
    for f in "$W"/res.$1.$2.*; do
        m=$(field mb_s "$f")
        if python3 -c "import sys; sys.exit(0 if float('$m') > float('$bm') else 1)"; then b=$f; bm=$m; fi
    done
    echo "$b"
}
printf "%-6s %-13s %8s %9s %9s %12s %11s %12s %12s %10s\n" sessions server "MB/s" "p50 us" "p99 us" "srv p99 us" "srv mean" "file MiB" "idle KiB/ses" "peak MiB"
for n in "${FLEETS[@]}"; do
    for which in tgt strata strata-trace; do
        f=$(best_of "$which" "$n")
        idle=$((($(field rss_idle_kib "$f") - $(field rss_before_kib "$f")) / n))
        srv=$(field srv_p99_below_us "$f"); srv=${srv:+<$srv}
        mean=$(field srv_mean_us "$f")
        printf "%-6s %-13s %8s %9s %9s %12s %11s %12s %12s %10s\n" "$n" "$which" "$(field mb_s "$f")" \
            "$(field p50_us "$f")" "$(field p99_us "$f")" "${srv:--}" "${mean:--}" \
            "$(($(field file_read_bytes "$f") >> 20))" "$idle" "$(($(field rss_peak_kib "$f") >> 10))"
    done
    t=$(best_of tgt "$n"); a=$(best_of strata "$n"); b=$(best_of strata-trace "$n")
    python3 - "$(field mb_s "$t")" "$(field mb_s "$a")" "$(field mb_s "$b")" \
        "$(field p99_us "$a")" "$(field p99_us "$b")" "$(field srv_mean_us "$a")" "$(field srv_mean_us "$b")" <<'EOF'
import sys
t, a, b, pa, pb, ma, mb = map(float, sys.argv[1:])
print(f"       strata/tgt {a / t:.2f}x, with trace {b / t:.2f}x; client p99 with/without trace "
      f"{pb / pa:.2f}, server mean {mb / ma if ma else 0:.2f}")
EOF
    if [ "$n" -gt "$NCOPIES" ]; then
        echo "       (tgt: $NCOPIES copies, each read by $(((n + NCOPIES - 1) / NCOPIES)) sessions or fewer)"
    fi
done
echo "idle KiB/ses: the server's VmRSS with every session logged in and idle, less before the first"
echo "login, per session (strata-trace's includes the trace's chunks, prefetched into the cache);"
echo "file MiB: what the server read from files during the replay (strata-trace: prefetched before it)"
for n in "${FLEETS[@]}"; do
    for which in strata strata-trace; do
        echo "server read latency buckets, $n sessions, $which (lower bound us:count): $(field srv_buckets "$(best_of "$which" "$n")")"
    done
done

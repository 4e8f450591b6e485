#!/usr/bin/env bash
# Host half of `./dev bench`: the micro-benchmark table, then callgrind's instructions per
# request (deterministic, so fit to compare commits).
#   run.sh BIN OUT.json [QUICK]
set -euo pipefail
bin=$1 out=$2 quick=${3:-0}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=$(dirname "$out")/callgrind
secs=0.3
[ "$quick" = 1 ] && secs=0.15

echo "  requests through the fake kernel, ${secs} s per case (server ns/req: CPU of the"
echo "  server's threads, system calls included; loadgen: the fake kernel's side)"
"$bin" --matrix --seconds "$secs" --json "$out" | sed 's/^/  /'

command -v valgrind >/dev/null || { echo "  valgrind missing: no instruction counts"; exit 0; }
rm -rf "$work"
mkdir -p "$work"
n1=2000 n2=12000
args=()
for op in read write; do
    for n in $n1 $n2; do
        # Collection only inside the server's threads (thread_main); the fake kernel runs in
        # a child process valgrind does not follow.
        valgrind --tool=callgrind --toggle-collect='*::thread_main*' \
            --callgrind-out-file="$work/$op.$n" \
            "$bin" --op "$op" --size 4K --qd 32 --threads 1 --requests "$n" --split \
            >"$work/$op.$n.log" 2>&1 || {
            echo "  callgrind run failed: $work/$op.$n.log"
            exit 1
        }
    done
    args+=("4K $op QD32" "$n1" "$work/$op.$n1" "$n2" "$work/$op.$n2")
done
echo "  callgrind, marginal instructions per request ($n1 vs $n2 requests):"
python3 "$here/callgrind_cost.py" "${args[@]}" --merge "$out" | sed 's/^/  /'

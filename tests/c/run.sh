#!/bin/sh
# Runs C test programs, one line each, and writes the closing "N passed, N failed".
# usage: run.sh SUMMARY_FILE "RUNNER (may be empty)" PROGRAM...
summary=$1; runner=$2; shift 2
passed=0; failed=0; failed_names=""
for prog in "$@"; do
  name=$(basename "$prog")
  log="$prog.log"
  if [ ! -x "$prog" ]; then
    failed=$((failed + 1)); failed_names="$failed_names $name"
    echo "FAIL  $name  (did not build)"; continue
  fi
  start=$(date +%s.%N)
  if $runner "./$prog" >"$log" 2>&1; then rc=0; else rc=$?; fi
  secs=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.2f", e - s }')
  if [ "$rc" -eq 0 ]; then
    passed=$((passed + 1)); echo "PASS  $name  (${secs}s)  $(tail -n 1 "$log")"
  else
    failed=$((failed + 1)); failed_names="$failed_names $name"
    echo "FAIL  $name  (exit $rc, ${secs}s); its output:"; sed 's/^/    /' "$log"
  fi
done
[ -n "$failed_names" ] && echo "failed:$failed_names"
echo "$passed passed, $failed failed" | tee "$summary"
[ "$failed" -eq 0 ]

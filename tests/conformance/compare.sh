#!/bin/sh
# compare.sh PROGRAM MODE EXPECTED: run dmuser-conformance in MODE and compare what its
# daemon saw with EXPECTED (the module's transcript); a difference fails, shown as a diff.
out=$("$1" "$2") || exit 1
printf '%s\n' "$out" | diff -u "$3" - && echo "$2: the same as $3"

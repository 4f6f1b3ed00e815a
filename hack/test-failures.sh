#!/usr/bin/env bash
# Prints, last, a short digest of the failures in `make test`'s logs: each Ginkgo [FAILED]
# message with its location, and each plain `--- FAIL:` with the lines the test logged.
#
# Why: a CI log is often read only from its end, where the suites' own summaries name a failed
# spec's location but not what it measured. The data-plane suite's timed assertions put their
# numbers in the message, so the digest is what says by how much a run missed.
set -euo pipefail

for log in "$@"; do
	[ -s "$log" ] || continue
	# Colours off, then: a Ginkgo failure runs from "[FAILED] <message>" to "In [<node>] at:",
	# a go test failure from "--- FAIL:" over its indented lines. At most 12 lines of each.
	sed 's/\x1b\[[0-9;]*m//g' "$log" | awk -v src="$log" '
		function flush() { if (n > 1 || inblock == "ginkgo") { print "-- " src ":"; for (i = 1; i <= n && i <= 12; i++) print buf[i]; if (n > 12) print "   ..." } n = 0 }
		/^[[:space:]]*\[FAILED\] / && !/\[FAILED\] in \[/ { flush(); inblock = "ginkgo"; buf[++n] = $0; next }
		inblock == "ginkgo" { buf[++n] = $0; if ($0 ~ /In \[[A-Za-z]+\] at:/) { flush(); inblock = "" } ; next }
		/^[[:space:]]*--- FAIL: / { flush(); inblock = "go"; buf[++n] = $0; next }
		inblock == "go" && /^(    |\t)/ { buf[++n] = $0; next }
		inblock == "go" { flush(); inblock = "" }
		END { flush() }'
done | awk 'BEGIN { printed = 0 } { if (!printed) { print "==== failures, in short (the full messages are above) ===="; printed = 1 } print }'

#!/usr/bin/env bash
# usage: summarize.sh LOG [FROM_LINE] -> per-attempt probe lines (deployment, status) + access log lines
tail -n +${2:-1} "$1" | grep -E 'on_request_headers|deployment =>|on_response_headers|ACCESS|ejected|outlier' | grep -v 'req_body' \
 | sed -E 's/^\[([0-9:.]+)\]\[[a-z]+\]\[[a-z]+\] (wasm log: )?/\1 /; s/ hex=[0-9a-f]+//; s/hdrs=\[[^]]*\]//'

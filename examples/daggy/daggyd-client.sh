#!/bin/sh
# A client written against daggyd's REST API, as a Daggy user's script would be: it posts a
# run spec, waits for the run to end, and prints each task's state. It runs unchanged
# against Trellis (`daggyd`, or `trellis daggyd`). Usage: daggyd-client.sh SPEC.json
# (DAGGYD: the daemon's address, default http://127.0.0.1:2503).
set -eu
DAGGYD=${DAGGYD:-http://127.0.0.1:2503}
curl -sf "$DAGGYD/ready" | grep -q 'Ya like DAGs'
run=$(curl -sf -X POST "$DAGGYD/v1/dagrun" --data-binary @"$1" | sed 's/.*"runID":\([0-9]*\).*/\1/')
echo "run $run submitted"
while :; do
    state=$(curl -sf "$DAGGYD/v1/dagrun/$run/state" | sed 's/.*"state":"\([A-Za-z]*\)".*/\1/')
    case $state in
        Completed|Errored|Killed) break ;;
    esac
    sleep 0.2
done
echo "run $run $state"
curl -sf "$DAGGYD/v1/dagrun/$run/tasks" | tr ',{}' '\n  ' | sed -n 's/ *"\(.*\)":"\(.*\)"/\1 \2/p'
[ "$state" = Completed ]

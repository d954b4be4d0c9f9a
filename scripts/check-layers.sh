#!/usr/bin/env bash
# Checks that the crate's layers depend only downwards (ARCHITECTURE.md,
# "Layers"): each top-level module of src/ may use only the modules listed
# for it. Prints every offending line and exits 1 if there is one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# module: the crate modules it may use
declare -A allowed=(
    [model]=""
    [metrics]=""
    [settings]="model"
    [adapters]="model metrics"
    [http]="model metrics adapters"
    [worker]="model metrics settings adapters"
    [supervisor]="model metrics settings adapters http worker"
    [cli]="model metrics settings adapters http worker supervisor"
)
fail=0
for m in "${!allowed[@]}"; do
    if [ -d "src/$m" ]; then files=$(find "src/$m" -name '*.rs'); else files="src/$m.rs"; fi
    for other in model metrics settings adapters http worker supervisor cli; do
        [ "$other" = "$m" ] && continue
        case " ${allowed[$m]} " in *" $other "*) continue ;; esac
        # Code lines only (comments may name any module).
        if hits=$(grep -nE "crate::$other\b" $files | grep -vE '^[^:]+:[0-9]+:\s*//'); then
            echo "layer violation: $m uses $other:" >&2
            echo "$hits" >&2
            fail=1
        fi
    done
done
if [ "$fail" = 0 ]; then echo "layers: every module depends only downwards"; fi
exit "$fail"

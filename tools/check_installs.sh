#!/usr/bin/env bash
# Resolves every install extra of setup.py with `pip install --dry-run` (downloads the
# metadata, installs nothing) and prints the jax / accelerator / torch versions each one
# would install. Fails if an extra does not resolve.
#
#   bash tools/check_installs.sh                # cuda12 cuda13 tpu dev
#   bash tools/check_installs.sh tpu            # only the named extras
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
extras=("$@")
[ ${#extras[@]} -eq 0 ] && extras=(cuda12 cuda13 tpu dev)
report="$(mktemp)"
trap 'rm -f "$report"' EXIT
status=0
for extra in "${extras[@]}"; do
  if python -m pip install --dry-run --quiet --ignore-installed --report "$report" \
      "${root}[${extra}]" >/dev/null 2>"${report}.err"; then
    summary="$(python - "$report" <<'PY'
import json, re, sys
keep = re.compile(r"^(jax|jaxlib|jax-cuda\d+-(plugin|pjrt)|libtpu|torch)$")
items = json.load(open(sys.argv[1]))["install"]
pins = sorted(f"{i['metadata']['name']}=={i['metadata']['version']}" for i in items
              if keep.match(i["metadata"]["name"].lower()))
print(f"{len(items)} packages; " + " ".join(pins))
PY
)"
    echo "ok   .[${extra}]: ${summary}"
  else
    echo "FAIL .[${extra}]:"
    grep -v '^WARNING' "${report}.err" | tail -5
    status=1
  fi
  rm -f "${report}.err"
done
exit $status

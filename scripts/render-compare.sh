#!/usr/bin/env bash
# Render every stack at a git revision and in the working tree, then compare the files.
#   scripts/render-compare.sh BASE      (make render-compare BASE=<rev>)
# Exits 0 when every render is identical, 1 with the differences otherwise. The revision
# is rendered by its own `make render-all`, in a temporary worktree borrowing this .venv.
# resources.json is compared with its entries in URN order: revisions before the render
# sorted them listed resources in registration order, which varies between runs.
set -euo pipefail
base=${1:?usage: scripts/render-compare.sh <git revision>}
top=$(git rev-parse --show-toplevel)
work=$(mktemp -d)
trap 'git -C "$top" worktree remove --force "$work/base" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git -C "$top" worktree add --quiet --detach "$work/base" "$base"
ln -s "$top/.venv" "$work/base/.venv"
touch "$top/.venv/.installed"  # the same environment: the old revision must not reinstall it
make -C "$work/base" --no-print-directory render-all OUT="$work/before" >"$work/before.log" 2>&1 \
  || { cat "$work/before.log"; echo "render-compare: rendering $base failed" >&2; exit 2; }
make -C "$top" --no-print-directory render-all OUT="$work/after" >"$work/after.log" 2>&1 \
  || { cat "$work/after.log"; echo "render-compare: rendering the working tree failed" >&2; exit 2; }
"$top/.venv/bin/python" - "$work/before" "$work/after" "$base" "$work/base" "$top" <<'PY'
import difflib, json, sys
from pathlib import Path

def files(root, checkout):
    out = {}
    for p in sorted(Path(root).rglob("*")):
        if p.is_file():
            text = p.read_text().replace(checkout, "<checkout>")  # the kustomize directory is an absolute path
            if p.name == "resources.json":
                text = json.dumps(sorted(json.loads(text), key=lambda r: r["urn"]), indent=2) + "\n"
            out[str(p.relative_to(root))] = text
    return out

before, after, base = files(sys.argv[1], sys.argv[4]), files(sys.argv[2], sys.argv[5]), sys.argv[3]
changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
for k in changed:
    sys.stdout.writelines(difflib.unified_diff(before.get(k, "").splitlines(True), after.get(k, "").splitlines(True),
                                               f"{base}/{k}", f"working-tree/{k}", n=2))
print(f"render-compare: {len(after)} files, {len(changed)} differ from {base}")
sys.exit(1 if changed else 0)
PY

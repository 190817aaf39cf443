#!/usr/bin/env bash
# Set up attnlab in ./.venv (once; again only when pyproject.toml changes), then run "$@" inside it.
#   bash scripts/bootstrap.sh attnlab reproduce
#   bash scripts/bootstrap.sh pytest
# ATTNLAB_EXTRAS picks the extras to install: default "report" (what `attnlab reproduce` needs),
# or "dev" when the command is pytest (the test tools plus every extra: serve, sweep, report,
# parquet, hf). Each set is installed once; switching back does not reinstall.
# ATTNLAB_TORCH picks the torch to install when the venv has none (default: torch==2.13.0, whose
# CPU build is pre-seeded on the machines we develop on). Elsewhere, e.g. ATTNLAB_TORCH=torch for
# your platform's default build; a torch already in the venv is always kept.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${ATTNLAB_VENV:-$root/.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "attnlab: creating $venv" >&2
  "$python" -m venv "$venv"
fi
case "${1:-}" in
  pytest|py.test) default_extras=dev ;;
  python) if [ "${2:-}" = "-m" ] && [ "${3:-}" = "pytest" ]; then default_extras=dev; else default_extras=report; fi ;;
  *) default_extras=report ;;
esac
extras="${ATTNLAB_EXTRAS:-$default_extras}"
stamp="$venv/.attnlab-installed-${extras//,/-}"
want="$( (cat "$root/pyproject.toml"; echo "extras=$extras") | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "attnlab: installing attnlab[$extras] into $venv (first run takes a minute)" >&2
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    "$venv/bin/python" -m pip install -q "${ATTNLAB_TORCH:-torch==2.13.0}" >&2
  fi
  "$venv/bin/python" -m pip install -q -e "$root[$extras]" >&2
  echo "$want" > "$stamp"
fi
if [ "$#" -eq 0 ]; then
  exit 0
fi
export PATH="$venv/bin:$PATH"
cd "$root"
exec "$@"

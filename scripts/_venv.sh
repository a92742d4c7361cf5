# Sourced by scripts/run and scripts/test: make .venv if needed and install tagrun into it.
# Re-installs only when pyproject.toml changed since the last install.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
extras=${1:-}
python=${PYTHON:-python3}
venv="$root/.venv"
if [ ! -x "$venv/bin/python" ]; then
    echo "scripts: creating $venv" >&2
    "$python" -m venv "$venv"
fi
stamp="$venv/.tagrun-installed${extras:+-$extras}"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
    echo "scripts: installing tagrun${extras:+[$extras]} into .venv" >&2
    "$venv/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
    "$venv/bin/python" -m pip install --quiet -e "$root${extras:+[$extras]}" 2>&1 \
        | grep -v "is ignored: it is neither" >&2 || true
    "$venv/bin/python" -c "import tagrun.server" || { echo "scripts: install failed" >&2; exit 1; }
    touch "$stamp"
fi

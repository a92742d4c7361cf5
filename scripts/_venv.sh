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
    # pip and setuptools talk a lot (an editable install prints a warning banner): what they
    # said is shown only when the install fails.
    install_log=$(mktemp)
    if ! "$venv/bin/python" -m pip install --quiet -e "$root${extras:+[$extras]}" \
            >"$install_log" 2>&1 || ! "$venv/bin/python" -c "import tagrun.server" 2>>"$install_log"; then
        cat "$install_log" >&2
        rm -f "$install_log"
        echo "scripts: install failed" >&2
        exit 1
    fi
    rm -f "$install_log"
    touch "$stamp"
fi

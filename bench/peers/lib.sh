# shellcheck shell=bash
# Shared helpers of the peer comparisons; sourced by each run.sh (bash, set -euo pipefail).

PEERS_CACHE="${MODEL_RUNNER_PEERS_CACHE:-$HOME/.cache/model-runner-peers}"
# No bytecode caches inside the repository.
export PYTHONDONTWRITEBYTECODE=1

die() {
    echo "error: $*" >&2
    exit 1
}

# ensure_venv NAME PYTHON REQUIREMENTS_FILE -> prints the venv directory.
# The venv lives under $PEERS_CACHE, keyed by the interpreter's version and the requirements'
# content, and is reused when present (a ".ready" marker is written only after pip succeeded).
ensure_venv() {
    local name="$1" python="$2" req="$3"
    command -v "$python" >/dev/null 2>&1 || [ -x "$python" ] || die "no Python interpreter $python"
    local pyver key dir
    pyver="$("$python" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')" ||
        die "$python does not run"
    key="$( (echo "$pyver"; cat "$req") | sha256sum | cut -c1-12)"
    dir="$PEERS_CACHE/$name-py$pyver-$key"
    if [ ! -f "$dir/.ready" ]; then
        echo "creating virtual environment $dir (Python $pyver)" >&2
        rm -rf "$dir"
        mkdir -p "$PEERS_CACHE"
        "$python" -m venv "$dir" >&2 || die "cannot create a venv with $python (Debian: apt-get install python3-venv)"
        "$dir/bin/python" -m pip install --quiet --upgrade pip >&2 || die "pip upgrade failed (is PyPI reachable?)"
        "$dir/bin/python" -m pip install --quiet -r "$req" >&2 || die "pip install -r $req failed (is PyPI reachable?)"
        touch "$dir/.ready"
    fi
    echo "$dir"
}

# require_tcp NAME HOST PORT: a clear error when a server is not listening.
require_tcp() {
    local name="$1" host="$2" port="$3"
    if ! timeout 3 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null; then
        die "$name is not reachable at $host:$port (start it, or point the URL variable elsewhere)"
    fi
}

# host and port of a URL like scheme://user:pass@host:port/path (the password is never printed).
url_host() { local h="${1#*://}"; h="${h##*@}"; h="${h%%/*}"; h="${h%%\?*}"; echo "${h%%:*}"; }
url_port() {
    local h="${1#*://}"; h="${h##*@}"; h="${h%%/*}"; h="${h%%\?*}"
    if [[ "$h" == *:* ]]; then echo "${h##*:}"; else echo "$2"; fi
}
# The URL with any password replaced by ***.
url_redacted() { echo "$1" | sed -E 's#(://[^:/@]+):[^@]*@#\1:***@#'; }

load() { cut -d' ' -f1-3 /proc/loadavg; }

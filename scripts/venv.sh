#!/usr/bin/env bash
# Create or update the Python virtual environment that holds the test tools
# (moto server, cfn-lint) pinned in a requirements file. Run by `make venv`.
#
# Usage: scripts/venv.sh [VENV_DIR] [REQUIREMENTS]
#        (defaults: .venv test/requirements.txt; PYTHON overrides python3)
#
# A successful install leaves VENV_DIR/.stamp, a copy of the requirements it
# installed. When the stamp equals the requirements file and the venv's
# interpreter runs, there is nothing to do and the script returns at once.
# Otherwise it (re)creates the venv if its interpreter is missing or broken,
# then installs the requirements.
set -euo pipefail

venv=${1:-.venv}
requirements=${2:-test/requirements.txt}
python=${PYTHON:-python3}
stamp=$venv/.stamp
venv_python=$venv/bin/python

if [[ ! -f $requirements ]]; then
	echo "venv: requirements file $requirements not found" >&2
	exit 1
fi

venv_works() { "$venv_python" -c '' 2>/dev/null; }

if cmp -s "$requirements" "$stamp" && venv_works; then
	exit 0
fi

if ! venv_works; then
	if ! command -v "$python" >/dev/null; then
		echo "venv: $python not found; install Python 3 (3.9 or newer)" >&2
		exit 1
	fi
	hint="install Python's venv module (Debian/Ubuntu: apt-get install python3-venv)"
	if ! "$python" -c 'import venv' 2>/dev/null; then
		echo "venv: $python has no venv module; $hint" >&2
		exit 1
	fi
	echo "venv: creating $venv with $("$python" --version 2>&1)"
	if ! "$python" -m venv --clear "$venv"; then
		echo "venv: '$python -m venv' failed; $hint" >&2
		exit 1
	fi
fi

echo "venv: installing $requirements into $venv"
rm -f "$stamp"
"$venv_python" -m pip install --disable-pip-version-check --quiet --requirement "$requirements"
cp "$requirements" "$stamp"

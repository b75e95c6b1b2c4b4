#!/usr/bin/env bash
# Validates every workflow in .github/workflows/ against the GitHub workflow
# schema that ships inside check-jsonschema (no download but pip's).
set -euo pipefail
cd "$(dirname "$0")/.."

version=0.39.0
venv=.venv-ci/check-jsonschema
if ! "$venv/bin/check-jsonschema" --version 2>/dev/null | grep -qx "check-jsonschema, version $version"; then
  rm -rf "$venv"
  "${PYTHON:-python3}" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "check-jsonschema==$version"
fi

shopt -s nullglob
workflows=(.github/workflows/*.yml .github/workflows/*.yaml)
if [ ${#workflows[@]} -eq 0 ]; then
  echo "no workflow in .github/workflows/" >&2
  exit 1
fi
"$venv/bin/check-jsonschema" --builtin-schema vendor.github-workflows "${workflows[@]}"

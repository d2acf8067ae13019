#!/usr/bin/env bash
# System programs some tests use: espeak-ng (synthesized speech), chromium (the serve
# playground in a browser) and PostgreSQL
# (a shared Optuna study). Best effort: the tests that need them skip with a reason
# when they are missing, so a machine without apt (or root) still runs the suite.
set -u
need=()
command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v chromium >/dev/null 2>&1 || need+=(chromium)  # the serve playground's browser test
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "system_deps: cannot install ${need[*]} (needs root and apt-get); their tests will skip" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
  || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null 2>&1; } \
  || echo "system_deps: apt-get could not install ${need[*]}; their tests will skip" >&2
exit 0

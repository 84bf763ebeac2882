#!/usr/bin/env bash
# Installs what building, running and testing Switchboard needs, and nothing
# that is already there. Debian/Ubuntu packages via apt-get, test clients via npm.
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(build-essential cmake pkg-config clang libclang-rt-14-dev
      libuv1-dev libcjson-dev zlib1g-dev libssl-dev libcurl4-openssl-dev
      libhiredis-dev libsqlite3-dev liburing-dev)
# Node may come from elsewhere than Debian (nodesource, nvm): a working command
# is enough, and installing Debian's npm over it would conflict.
command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
command -v npm >/dev/null 2>&1 || pkgs+=(npm)
# Only the test and bench targets need these.
if [ "${1:-}" != "--runtime-only" ]; then
  pkgs+=(redis-server chromium)
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# clang's runtime package is versioned; any installed version will do.
if [[ " ${missing[*]} " == *" libclang-rt-14-dev "* ]] && ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1; then
  missing=("${missing[@]/libclang-rt-14-dev}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Node clients for the integration and browser tests (ws, eventsource, playwright-core).
if [ "${1:-}" != "--runtime-only" ] && [ -f tests/package.json ]; then
  if [ ! -d tests/node_modules ] || [ tests/package.json -nt tests/node_modules ]; then
    echo "deps: npm install in tests/"
    (cd tests && npm install --no-audit --no-fund --loglevel=error >/dev/null)
    touch tests/node_modules
  fi
fi

# The JS SDK and React hooks (clients/js, clients/react): their devDependencies,
# then tsc into dist/ whenever a source is newer than the build. The client
# first: the React package's types come from its dist/.
if [ "${1:-}" != "--runtime-only" ]; then
  for pkg in clients/js clients/react; do
    [ -f "$pkg/package.json" ] || continue
    if [ ! -d "$pkg/node_modules" ] || [ "$pkg/package.json" -nt "$pkg/node_modules" ]; then
      echo "deps: npm install in $pkg/"
      (cd "$pkg" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
      touch "$pkg/node_modules"
    fi
    if [ ! -f "$pkg/dist/index.js" ] ||
       [ -n "$(find "$pkg/src" "$pkg/tsconfig.json" "$pkg/package.json" -newer "$pkg/dist/index.js" -print -quit)" ]; then
      echo "deps: building $pkg"
      (cd "$pkg" && npm run --silent build)
    fi
  done
fi

#!/usr/bin/env bash
# Installs the real servers the remote-archive tests run against (tests/remote/conftest.py):
#   nginx      Debian package nginx-light (apt-get; needs root, as here and in CI)
#   versitygw  an S3 server (Go module, posix backend), built with `go install` into a cache
#              folder outside the work tree so the machine keeps it between runs:
#              $BPZ_TOOLS_DIR, else ${XDG_CACHE_HOME:-$HOME/.cache}/bpz-tools/bin
# Idempotent and quiet when both are already there; building versitygw takes several minutes.
set -euo pipefail

VERSITYGW_VERSION=v1.8.0
tools_dir="${BPZ_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/bpz-tools/bin}"

if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    echo "install-servers: installing nginx (Debian package nginx-light, into /usr/sbin/nginx)"
    export DEBIAN_FRONTEND=noninteractive
    # The package's own service is not wanted: the tests start nginx with their own config.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get install -y -qq nginx-light >/dev/null 2>&1 || {
        apt-get update -qq >/dev/null
        apt-get install -y -qq nginx-light >/dev/null
    }
fi

if [ ! -x "$tools_dir/versitygw" ]; then
    if ! command -v go >/dev/null 2>&1; then
        echo "install-servers: Go is needed to build versitygw (the S3 server of the tests)" >&2
        exit 1
    fi
    echo "install-servers: building versitygw $VERSITYGW_VERSION into $tools_dir (takes several minutes)"
    mkdir -p "$tools_dir"
    GOBIN="$tools_dir" GOFLAGS=-mod=mod go install "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION"
fi

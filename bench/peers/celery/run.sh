#!/usr/bin/env bash
# Celery + RabbitMQ + PostgreSQL: tasks/s of a production-shape Celery stack (see README.md).
#
#   bench/peers/celery/run.sh [--tasks 10000] [--prefetch 1,4] [--variants trivial,erc20_transfers]
#                             [--concurrency N] [--logs-per-block 5] [--no-floors]
#
# Servers (defaults: this machine's): PEERS_AMQP_URL=amqp://guest:guest@127.0.0.1:5672//
# PEERS_PG_URL=postgres://postgres@127.0.0.1:5432/postgres (a role that may CREATE DATABASE).
# PYTHON picks the interpreter for the virtual environment (default: python3 on PATH).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=../lib.sh
source "$here/../lib.sh"

export PEERS_AMQP_URL="${PEERS_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672//}"
export PEERS_PG_URL="${PEERS_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
require_tcp RabbitMQ "$(url_host "$PEERS_AMQP_URL")" "$(url_port "$PEERS_AMQP_URL" 5672)"
require_tcp PostgreSQL "$(url_host "$PEERS_PG_URL")" "$(url_port "$PEERS_PG_URL" 5432)"

venv="$(ensure_venv celery "${PYTHON:-python3}" "$here/requirements.txt")"
PEERS_WORKDIR="$(mktemp -d "${TMPDIR:-/tmp}/peers-celery.XXXXXX")"
export PEERS_WORKDIR
trap 'rm -rf "$PEERS_WORKDIR"' EXIT

echo "machine: $(nproc) cores, $(uname -sr); $(date -u +%Y-%m-%dT%H:%M:%SZ); load $(load)"
"$venv/bin/python" "$here/bench.py" "$@"

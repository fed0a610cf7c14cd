#!/usr/bin/env bash
# up -> status -> up again (converged: nothing created) -> down, against a local AWS emulator.
# Nothing here touches a real AWS account: the emulator listens on loopback only.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/target/debug/gitlab-provision"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The emulator runs until its stdin closes, i.e. until this script exits.
coproc EMULATOR { "$root/.venv/bin/python" "$root/tests/harness/emulator.py" --capture "$work/calls.jsonl"; }
read -r banner <&"${EMULATOR[0]}"
endpoint="$(printf '%s' "$banner" | sed -E 's/.*"endpoint": "([^"]+)".*/\1/')"

export AWS_ENDPOINT_URL="$endpoint" AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo AWS_REGION=us-east-1
# Empty AWS config files: the demo must not pick up a real profile from ~/.aws.
: > "$work/aws-config"
export AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE="$work/aws-config" AWS_SHARED_CREDENTIALS_FILE="$work/aws-config"
cd "$work"
cat > gitlab-provision.toml <<'TOML'
stack = "demo"
allowed_cidrs = ["203.0.113.0/24"]
vpc_cidr = "10.42.0.0/16"
TOML

step() { printf '\n\033[1m$ gitlab-provision %s\033[0m\n' "$*"; "$bin" "$@"; }
echo "emulator at $endpoint; working in $work"
step plan
step up
step status
step up
step down --yes
step status

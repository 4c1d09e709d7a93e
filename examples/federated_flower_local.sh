#!/usr/bin/env bash
# A real Flower federation on one machine: one SuperLink and one SuperNode per site on
# 127.0.0.1, with TLS, SuperNode authentication and SecAgg+ — the commands of
# docs/DEPLOY.md, with every machine played by a local process.
#
# Usage:
#   examples/federated_flower_local.sh WORKDIR SITE_DIR...     (at least two site folders)
#   ROUNDS=5 ARCH=mc3d-s examples/federated_flower_local.sh /tmp/fl /data/a /data/b /data/c
#
# Needs `pip install "medcodec[flower]"` (or this repository's venv with PYTHONPATH=src),
# openssl and ssh-keygen. Writes WORKDIR/creds, WORKDIR/app, the logs and the run folder
# WORKDIR/run (model file, metrics.json). Every process it starts is stopped on exit.
set -euo pipefail

[[ $# -ge 3 ]] || { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
work=$(mkdir -p "$1" && cd "$1" && pwd); shift
sites=("$@")
here=$(cd "$(dirname "$0")/.." && pwd)
rounds=${ROUNDS:-2} arch=${ARCH:-mc3d-xs}
export FLWR_HOME=$work/flwr-home
mkdir -p "$FLWR_HOME"

pids=()
cleanup() {  # stop every process group started here (SuperLink, SuperNodes and their children)
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  sleep 3
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
free_port() { python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# 1. Credentials: a CA, the SuperLink's certificate for 127.0.0.1, one key pair per site.
nodes=()
for i in "${!sites[@]}"; do nodes+=(--node "site$i"); done
[[ -e $work/creds/ca.key ]] || "$here/scripts/make_certificates.sh" "$work/creds" --ip 127.0.0.1 "${nodes[@]}"

# 2. The coordinator's SuperLink: one TLS port for the SuperNodes, the flwr CLI and the ServerApp.
port=$(free_port)
setsid flower-superlink --ssl-ca-certfile "$work/creds/ca.crt" --ssl-certfile "$work/creds/server.pem" \
  --ssl-keyfile "$work/creds/server.key" --enable-supernode-auth --disable-runtime-dependency-installation \
  --host 127.0.0.1 --port "$port" >"$work/superlink.log" 2>&1 &
pids+=($!)
cat >"$FLWR_HOME/config.toml" <<EOF
[superlink]
default = "local-tls"

[superlink.local-tls]
address = "127.0.0.1:$port"
root-certificates = "$work/creds/ca.crt"
EOF

# 3. Register every site's public key (only registered SuperNodes may connect).
for i in "${!sites[@]}"; do
  for _ in $(seq 30); do flwr supernode register "$work/creds/supernodes/site$i.pub" local-tls >/dev/null 2>&1 && break; sleep 1; done
done

# 4. One SuperNode per site, each with its own data folder and its own local port.
for i in "${!sites[@]}"; do
  setsid flower-supernode --root-certificates "$work/creds/ca.crt" --superlink "127.0.0.1:$port" \
    --auth-supernode-private-key "$work/creds/supernodes/site$i" --port "$(free_port)" \
    --node-config "data-dir='$(cd "${sites[$i]}" && pwd)' site-name='site$i' partition-id=$i" \
    >"$work/site$i.log" 2>&1 &
  pids+=($!)
done

# 5. The app folder and the run. flwr run returns once the run is submitted and exits 0 even if
#    the ServerApp fails later: wait for the model file named in metrics.json.
rm -rf "$work/run"
medcodec_fed() { python -m medcodec_fed "$@"; }
medcodec_fed flower-app "$work/app" --arch "$arch" --rounds "$rounds" --local-steps 2 --batch 2 --patch 16 \
  --eval-crop 16 --calib-patches 2 --calib-size 16 --no-plots --out "$work/run" \
  --min-available-clients "${#sites[@]}" >/dev/null
sleep 5
flwr run "$work/app" local-tls
for _ in $(seq 600); do
  if python - "$work/run/metrics.json" <<'EOF' 2>/dev/null; then break; fi
import json, sys
sys.exit(0 if json.load(open(sys.argv[1])).get("model") else 1)
EOF
  sleep 2
done
[[ -f $work/run/metrics.json ]] || { echo "no run folder: see $work/superlink.log and flwr log" >&2; exit 1; }
python - "$work/run/metrics.json" <<'EOF'
import json, sys
doc = json.load(open(sys.argv[1]))
if not doc.get("model"):
    sys.exit("the run ended without a model file: see flwr log and the ServerApp's messages")
for r in doc["rounds"]:
    print(f"round {r['round']}: trained {', '.join(r['accepted'])}; psnr {r['global']['psnr']:.2f} dB")
print("model:", doc["model"])
EOF

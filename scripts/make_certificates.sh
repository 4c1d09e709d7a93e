#!/usr/bin/env bash
# Make the credentials of a medcodec_fed federation on Flower (see docs/DEPLOY.md):
#
#   OUT/ca.crt, OUT/ca.key          a certificate authority (keep ca.key offline; ca.crt goes to every machine)
#   OUT/server.pem, OUT/server.key  the SuperLink's TLS certificate (signed by the CA) and its key
#   OUT/supernodes/NAME[.pub]       one SuperNode authentication key pair per --node NAME
#                                   (EC P-384, OpenSSH format; NAME stays at the site, NAME.pub is
#                                   registered with `flwr supernode register`)
#
# Usage:
#   scripts/make_certificates.sh OUT [--ip ADDRESS]... [--dns NAME]... [--node NAME]... [--days N]
#
# The server certificate names every address the SuperNodes and the flwr CLI use to reach the
# SuperLink (subjectAltName); by default IP:127.0.0.1 and DNS:localhost, for a test on one machine.
# Example for a coordinator at 10.0.0.5 / fl.example.org and three hospitals:
#   scripts/make_certificates.sh creds --ip 10.0.0.5 --dns fl.example.org --node north --node south --node east
#
# Needs openssl and ssh-keygen. Refuses to overwrite an existing CA. For production, have your
# organization's PKI issue the server certificate instead and use this for the node keys only.
set -euo pipefail

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }

[[ $# -ge 1 ]] || usage
case "$1" in -h|--help) usage 0 ;; esac
out=$1; shift
ips=(); dnss=(); nodes=(); days=365
while [[ $# -gt 0 ]]; do
  case "$1" in
    --ip) ips+=("$2"); shift 2 ;;
    --dns) dnss+=("$2"); shift 2 ;;
    --node) nodes+=("$2"); shift 2 ;;
    --days) days=$2; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "make_certificates.sh: unknown argument $1" >&2; usage ;;
  esac
done
[[ ${#ips[@]} -gt 0 || ${#dnss[@]} -gt 0 ]] || { ips=(127.0.0.1); dnss=(localhost); }
for n in "${nodes[@]}"; do
  [[ $n =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || { echo "make_certificates.sh: bad node name $n" >&2; exit 2; }
done

mkdir -p "$out"
if [[ -e $out/ca.key ]]; then
  echo "make_certificates.sh: $out/ca.key exists; not overwriting a CA" >&2
  exit 1
fi
umask 077

san=""
for ip in "${ips[@]}"; do san+="${san:+,}IP:$ip"; done
for d in "${dnss[@]}"; do san+="${san:+,}DNS:$d"; done

# The certificate authority.
openssl req -x509 -newkey rsa:3072 -sha256 -nodes -days "$days" \
  -keyout "$out/ca.key" -out "$out/ca.crt" -subj "/CN=medcodec-fed CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

# The SuperLink's certificate, for every address it is reached at.
openssl req -newkey rsa:3072 -sha256 -nodes -keyout "$out/server.key" -out "$out/server.csr" \
  -subj "/CN=${dnss[0]:-${ips[0]}}" 2>/dev/null
ext=$(mktemp)
trap 'rm -f "$ext"' EXIT
printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=%s\n' "$san" >"$ext"
openssl x509 -req -sha256 -days "$days" -in "$out/server.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
  -CAcreateserial -out "$out/server.pem" -extfile "$ext" 2>/dev/null
rm -f "$out/server.csr" "$out/ca.srl"
chmod 644 "$out/ca.crt" "$out/server.pem"

# One authentication key pair per SuperNode.
if [[ ${#nodes[@]} -gt 0 ]]; then
  mkdir -p "$out/supernodes"
  for n in "${nodes[@]}"; do
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "$n" -f "$out/supernodes/$n"
    chmod 644 "$out/supernodes/$n.pub"
  done
fi

echo "wrote $out: ca.crt ca.key server.pem server.key (subjectAltName $san)${nodes:+ and ${#nodes[@]} SuperNode key pairs in supernodes/}"

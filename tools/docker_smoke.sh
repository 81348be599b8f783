#!/usr/bin/env bash
# Build the CPU image and run it the way a user would: --help, train on a small folder and scan, as the image's
# uid 10001 on a bind-mounted folder. Checks exit codes, outputs, and that the host can read what the container
# wrote (files world-readable, folders world-listable, read back by an unprivileged host user when run as root).
# Takes minutes; CI does not run it. See docs/docker.md.
#
#   tools/docker_smoke.sh                          # docker (or podman if there is no docker), network build
#
#   # offline (no Docker daemon, no CPU torch index, TLS intercepted): podman, a local wheel folder, a CA bundle
#   ENGINE=podman SMOKE_BUILD=1 CA_BUNDLE=PATH/TO/ca-bundle.crt WHEELS="PATH/TO/wheels" tools/docker_smoke.sh
#
# Environment:
#   ENGINE       docker or podman (default: docker if found, else podman)
#   IMAGE        tag to build and run (default icsscan:smoke)
#   SMOKE_BUILD  1 = offline smoke build (Dockerfile switch: no CPU torch index, CUDA torch accepted; a big image)
#   WHEELS       podman only: folders of wheels, mounted into the build; pip then installs from them only
#                (no index). Without it pip uses PyPI (and the CPU torch index unless SMOKE_BUILD=1).
#   CA_BUNDLE    podman only: a CA bundle mounted into the build and named in its pip.conf (for intercepted TLS)
#   BUILD_OPTS   extra build options (podman default: --isolation=chroot --pull=never)
#   RUN_OPTS     extra run options (podman default: --runtime runc --ulimit nofile=20000:20000 --ulimit nproc=4096:4096)
#   KEEP=1       keep the work folder (data, model, report) for a look afterwards
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
ENGINE=${ENGINE:-$(command -v docker >/dev/null 2>&1 && echo docker || echo podman)}
IMAGE=${IMAGE:-icsscan:smoke}
SMOKE_BUILD=${SMOKE_BUILD:-0}
WHEELS=${WHEELS:-}
CA_BUNDLE=${CA_BUNDLE:-}
if [ "$ENGINE" = podman ]; then
  BUILD_OPTS=${BUILD_OPTS---isolation=chroot --pull=never}
  RUN_OPTS=${RUN_OPTS---runtime runc --ulimit nofile=20000:20000 --ulimit nproc=4096:4096}
else
  BUILD_OPTS=${BUILD_OPTS-}
  RUN_OPTS=${RUN_OPTS-}
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/icsscan-docker-smoke.XXXXXX")
chmod 755 "$WORK"  # the container's uid 10001 and the unprivileged reader below must reach data/
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT
FAILED=0
say() { printf '%s\n' "docker_smoke: $*"; }
check() {  # check "what" CONDITION...
  local what=$1; shift
  if "$@"; then say "PASS $what"; else say "FAIL $what"; FAILED=1; fi
}

# --------------------------------------------------------------------------------------------- build
build_args=(--target cpu -t "$IMAGE" --build-arg "SMOKE_BUILD=$SMOKE_BUILD")
if [ "$ENGINE" = podman ]; then  # build-time mounts: podman/buildah only (docker build has no -v)
  conf="$WORK/pip.conf"
  printf '[global]\n' >"$conf"
  if [ -n "$CA_BUNDLE" ]; then
    build_args+=(-v "$CA_BUNDLE:/etc/ssl/certs/host-ca.crt:ro")
    printf 'cert = /etc/ssl/certs/host-ca.crt\n' >>"$conf"
  fi
  if [ -n "$WHEELS" ]; then
    links=""
    i=0
    for dir in $WHEELS; do
      build_args+=(-v "$dir:/wheels/$i:ro")
      links="$links /wheels/$i"
      i=$((i + 1))
    done
    printf 'no-index = true\nfind-links =%s\n' "$links" >>"$conf"
  fi
  build_args+=(-v "$conf:/etc/pip.conf:ro")
fi
say "building $IMAGE with $ENGINE (SMOKE_BUILD=$SMOKE_BUILD${WHEELS:+, wheels from: $WHEELS})"
t0=$(date +%s)
# shellcheck disable=SC2086 # BUILD_OPTS is a list of options
if ! "$ENGINE" build $BUILD_OPTS "${build_args[@]}" "$REPO" >"$WORK/build.log" 2>&1; then
  tail -n 30 "$WORK/build.log"
  say "FAIL build (log above; KEEP=1 keeps $WORK/build.log)"
  exit 1
fi
bytes=$("$ENGINE" image inspect --format '{{.Size}}' "$IMAGE")
say "PASS build in $(($(date +%s) - t0)) s; image $IMAGE: $bytes bytes ($(awk -v b="$bytes" 'BEGIN{printf "%.2f GB, %.2f GiB", b/1e9, b/2^30}'))"
say "smoke-build label: $("$ENGINE" image inspect --format '{{index .Config.Labels "org.icsscan.smoke-build"}}' "$IMAGE")"

# --------------------------------------------------------------------------------------------- data
DATA="$WORK/data"
mkdir -p "$DATA"
cp -r "$REPO/sample_data/good" "$DATA/good"
cp -r "$REPO/sample_data/incoming" "$DATA/incoming"
chmod -R a+rX "$DATA"
chmod 1777 "$DATA"  # the image runs as uid 10001: it must be able to create model/ and report/ here
n_incoming=$(find "$DATA/incoming" -name '*.png' | wc -l)

# shellcheck disable=SC2086 # RUN_OPTS is a list of options
run() { "$ENGINE" run --rm $RUN_OPTS -e OMP_NUM_THREADS=1 -v "$DATA:/data" "$IMAGE" "$@"; }
status() { set +e; "$@" >"$WORK/out.txt" 2>&1; local rc=$?; set -e; echo "$rc"; }

# --------------------------------------------------------------------------------------------- runs
rc=$(status run --help)
check "--help exits 0 (got $rc)" [ "$rc" = 0 ]
check "--help lists the verbs" grep -q "scan" "$WORK/out.txt"

uid=$("$ENGINE" image inspect --format '{{.Config.User}}' "$IMAGE")
check "image user is 10001:10001 (got $uid)" [ "$uid" = 10001:10001 ]

t0=$(date +%s)
rc=$(status run train /data/good --out /data/model --backbone small --iterations 30 --seed 0 --device cpu)
say "train: exit $rc in $(($(date +%s) - t0)) s: $(grep -m1 '^train:' "$WORK/out.txt" | cut -c1-160)"
[ "$rc" = 0 ] || tail -n 5 "$WORK/out.txt"
check "train exits 0" [ "$rc" = 0 ]
check "train wrote model.onnx, config.json, calibration.json" \
  test -s "$DATA/model/model.onnx" -a -s "$DATA/model/config.json" -a -s "$DATA/model/calibration.json"
check "model files are owned by uid 10001" [ "$(stat -c %u "$DATA/model/model.onnx")" = 10001 ]

t0=$(date +%s)
rc=$(status run scan /data/incoming --model /data/model --out /data/report --format csv,json,junit)
say "scan: exit $rc in $(($(date +%s) - t0)) s"
[ "$rc" = 0 ] || tail -n 5 "$WORK/out.txt"
check "scan exits 0" [ "$rc" = 0 ]
check "scan wrote scores.csv, summary.json, junit.xml, report.html" \
  test -s "$DATA/report/scores.csv" -a -s "$DATA/report/summary.json" -a -s "$DATA/report/junit.xml" -a -s "$DATA/report/report.html"
rows=$(($(wc -l <"$DATA/report/scores.csv") - 1))
check "scores.csv has one row per image ($rows of $n_incoming)" [ "$rows" = "$n_incoming" ]
check "summary.json says complete" grep -q '"complete": true' "$DATA/report/summary.json"

rc=$(status run scan /data/incoming --model /data/model --out /data/report --threshold 0 --fail-on-anomaly)
check "scan --fail-on-anomaly with anomalies exits 1 (got $rc)" [ "$rc" = 1 ]
rc=$(status run scan /data/missing --model /data/model --out /data/report2)
check "scan of a missing folder exits 2 (got $rc)" [ "$rc" = 2 ]
rc=$(status run scan /data/incoming --model /data/nomodel --out /data/report2)
check "scan with a missing model exits 3 (got $rc)" [ "$rc" = 3 ]

# --------------------------------------------------------------------------------------------- host access
unreadable=$(find "$DATA/model" "$DATA/report" \( -type f ! -perm -o=r \) -o \( -type d ! -perm -o=rx \) | head -n 5)
check "every output file is world-readable and every folder world-listable${unreadable:+ (not: $unreadable)}" [ -z "$unreadable" ]
as_other=()
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null 2>&1; then
  as_other=(setpriv --reuid=65534 --regid=65534 --clear-groups)  # root reads anything: read as nobody instead
fi
check "the host user${as_other:+ (nobody)} can read the report and the model" \
  "${as_other[@]}" sh -c 'cat "$1"/report/scores.csv "$1"/report/summary.json "$1"/report/report.html "$1"/model/model.onnx >/dev/null && ls "$1"/report/thumbs >/dev/null' _ "$DATA"
say "top of scores.csv:"
head -n 4 "$DATA/report/scores.csv" | sed 's/^/    /'

if [ "$FAILED" = 0 ]; then say "OK ($IMAGE, $bytes bytes)"; else say "FAILED"; fi
exit "$FAILED"

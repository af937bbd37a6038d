#!/usr/bin/env bash
# ARM parity, emulated: the light runtime on an aarch64 userland (QEMU user mode) gives the same
# months as on this x86 machine, for the model in edgeba/models/default and every backend whose
# aarch64 wheel installs.
#
#   bash benchmarks/arm64/run.sh [--record]     # as root on Debian (bookworm or later), x86-64
#
# Needs: apt (Debian's archive), PyPI, python3 >= 3.11 with pip ($PYTHON), the RSNA images ($EDGEBA_DATA or
# ../shared/data/rsna). Nothing is installed on the machine: a private apt config fetches the
# bookworm arm64 .debs of Python 3.11 (unpacked into a sysroot) and Debian trixie's qemu-user
# (QEMU 10; bookworm's 7.2 segfaults when LiteRT builds its interpreter), all cached under
# .devcache/arm64/ so a rerun only predicts. binfmt_misc is not assumed: the emulator is named.
# Wheels come from PyPI for both architectures, the aarch64 set resolved from pyproject.toml and the
# x86 set pinned to the same versions. Each backend runs edgeba.predictor.Predictor (1 thread,
# --force so every image is scored) on the first $N val images of edgeba/data/rsna_split.csv.
# Exit 0 only when every compared backend agrees within $TOL months and on every mask QC verdict;
# the last line is the figure. --record copies the report to benchmarks/results/.
# Emulated timings say nothing about a real board, so none are reported.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${EDGEBA_ARM64_CACHE:-$REPO/.devcache/arm64}
PY=${PYTHON:-python3}
N=${N:-20}
TOL=${TOL:-0.05}
BACKENDS=${BACKENDS:-tflite onnx openvino}
QEMU_CPU=${QEMU_CPU:-cortex-a76}   # the Raspberry Pi 5's core (armv8.2 + dot product)
# Per backend, emulated. TFLite took 3-6 min for 20 images, ONNX Runtime 15 min on a loaded 2-core
# machine (load average 12); OpenVINO's CPU plugin is far slower under QEMU (3 images in 15 min there).
# At nice 15 next to a nice-10 training, TFLite managed 8 images in 30 min: the limit is generous.
ARM_TIMEOUT=${ARM_TIMEOUT:-7200}
RECORD=0
[[ "${1:-}" == "--record" ]] && RECORD=1
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off
log() { echo "== $*" >&2; }
START=$(date +%s)

# --- 1. Debian packages through a private apt config (the machine's sources and dpkg stay as they are)
APT=$CACHE/apt
mkdir -p "$APT/lists/partial" "$APT/archives/partial" "$CACHE/debs"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
cat > "$APT/sources.list" <<EOF
deb [arch=arm64 signed-by=$KEYRING] http://deb.debian.org/debian bookworm main
deb [arch=arm64 signed-by=$KEYRING] http://deb.debian.org/debian bookworm-updates main
deb [arch=arm64 signed-by=$KEYRING] http://deb.debian.org/debian-security bookworm-security main
deb [arch=amd64 signed-by=$KEYRING] http://deb.debian.org/debian trixie main
EOF
: > "$APT/status"
APT_OPTS=(-o "Dir::Etc::SourceList=$APT/sources.list" -o Dir::Etc::SourceParts=/dev/null
  -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT" -o "Dir::State::status=$APT/status"
  -o APT::Architectures::=amd64 -o APT::Architectures::=arm64 -o Debug::NoLocking=1
  -o APT::Sandbox::User=root -q)
if [[ ! -f $CACHE/sysroot.ok || ! -f $CACHE/qemu.ok ]]; then
  log "apt index (bookworm arm64, trixie amd64)"
  apt-get "${APT_OPTS[@]}" update > "$CACHE/apt-update.log"
fi

SYSROOT=$CACHE/sysroot
if [[ ! -f $CACHE/sysroot.ok ]]; then
  # Python 3.11 and its libraries (the dependency closure), plus the C++ and OpenMP runtimes wheels link to.
  mapfile -t PKGS < <(apt-cache "${APT_OPTS[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts \
      --no-breaks --no-replaces --no-enhances python3.11-minimal:arm64 libpython3.11-stdlib:arm64 \
      libstdc++6:arm64 libgomp1:arm64 | grep -E '^[a-z0-9.+-]+:arm64$' | sort -u)
  log "sysroot: ${#PKGS[@]} bookworm arm64 packages"
  rm -rf "$SYSROOT" && mkdir -p "$SYSROOT"
  (cd "$CACHE/debs" && apt-get "${APT_OPTS[@]}" download "${PKGS[@]}" > /dev/null)
  for p in "${PKGS[@]}"; do dpkg -x "$CACHE/debs/${p%:arm64}_"*_arm64.deb "$SYSROOT"; done
  touch "$CACHE/sysroot.ok"
fi
QEMU_DIR=$CACHE/qemu
if [[ ! -f $CACHE/qemu.ok ]]; then
  log "qemu-user from Debian trixie"
  rm -rf "$QEMU_DIR" "$CACHE/debs"/qemu-user_*
  (cd "$CACHE/debs" && apt-get "${APT_OPTS[@]}" download qemu-user:amd64 > /dev/null)
  dpkg -x "$CACHE/debs"/qemu-user_*_amd64.deb "$QEMU_DIR"
  touch "$CACHE/qemu.ok"
fi
QEMU=$QEMU_DIR/usr/bin/qemu-aarch64
ARM_PY=(timeout "$ARM_TIMEOUT" "$QEMU" -cpu "$QEMU_CPU" -L "$SYSROOT" "$SYSROOT/usr/bin/python3.11")
X86_PY=(timeout 600 "$PY")
"$QEMU" -cpu "$QEMU_CPU" -L "$SYSROOT" "$SYSROOT/usr/bin/python3.11" -c "import platform, sys; assert platform.machine() == 'aarch64', platform.machine()"

# --- 2. wheels: aarch64 resolved from pyproject (what `pip install edgeba[...]` gets on a Pi), x86 pinned to it
ARM_TAGS=(--only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none
  --platform manylinux2014_aarch64 $(for i in $(seq 17 36); do echo --platform manylinux_2_${i}_aarch64; done))
run_env() {  # run_env SITE... -- CMD: the repo and the sites first on the path, nothing from the user's site
  local path=$REPO
  while [[ $1 != -- ]]; do path=$path:$1; shift; done; shift
  env -u PYTHONHOME PYTHONPATH="$path" PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1 OMP_NUM_THREADS=1 \
    XDG_CACHE_HOME="$CACHE/xdg" EDGEBA_DATA="${EDGEBA_DATA:-}" "$@"
}
mkdir -p "$CACHE/site" "$CACHE/out"
COMPARED=() SKIPPED=() UNFINISHED=()
for b in $BACKENDS; do
  req=$CACHE/site/req-$b.txt
  "$PY" "$REPO/benchmarks/arm64/parity.py" requirements "$b" > "$req"
  key=$(sha256sum "$req" | cut -c1-16)
  arm_site=$CACHE/site/aarch64-$b-$key x86_site=$CACHE/site/x86_64-$b-$key
  if [[ ! -f $arm_site.ok ]]; then
    log "$b: aarch64 wheels ($(tr '\n' ' ' < "$req"))"
    rm -rf "$arm_site"
    if ! "$PY" -m pip install -q --target "$arm_site" "${ARM_TAGS[@]}" -r "$req" > "$arm_site.log" 2>&1; then
      [[ $b == tflite ]] && { cat "$arm_site.log" >&2; echo "FAIL: the light runtime has no aarch64 wheel set"; exit 1; }
      log "$b: no aarch64 wheel installs, skipped (pip: $(grep -m1 ERROR "$arm_site.log"))"
      SKIPPED+=("$b (no aarch64 wheel)"); continue
    fi
    "$PY" -m pip list --path "$arm_site" --format freeze > "$arm_site.pins"
    log "$b: x86_64 wheels, same versions"
    rm -rf "$x86_site"
    "$PY" -m pip install -q --target "$x86_site" --only-binary=:all: -r "$req" -c "$arm_site.pins" > "$x86_site.log" 2>&1 \
      || { cat "$x86_site.log" >&2; echo "FAIL: x86 wheels for $b"; exit 1; }
    touch "$arm_site.ok"
  fi
  if [[ -z ${LISTED:-} ]]; then  # once, with the first backend's x86 site (it needs numpy)
    run_env "$x86_site" -- "${X86_PY[@]}" "$REPO/benchmarks/arm64/parity.py" images "$N" > "$CACHE/out/images.txt"
    LISTED=1
  fi
  log "$b: x86_64, $N images"
  run_env "$x86_site" -- "${X86_PY[@]}" "$REPO/benchmarks/arm64/parity.py" predict "$b" "$CACHE/out/images.txt" "$CACHE/out/x86_64-$b.json" "$CACHE/out/inputs-$b.npz"
  log "$b: aarch64 under qemu-aarch64 -cpu $QEMU_CPU, $N images (slow: emulated)"
  rm -f "$CACHE/out/aarch64-$b.json"
  run_env "$arm_site" -- "${ARM_PY[@]}" "$REPO/benchmarks/arm64/parity.py" predict "$b" "$CACHE/out/images.txt" \
    "$CACHE/out/aarch64-$b.json" "$CACHE/out/inputs-$b.npz" --reference && arc=0 || arc=$?
  if (( arc == 124 )); then
    # Not a verdict either way: the check fails, and says what to change.
    log "$b: not finished within ARM_TIMEOUT=$ARM_TIMEOUT s under emulation"
    UNFINISHED+=("$b (not finished in $ARM_TIMEOUT s under QEMU: raise ARM_TIMEOUT, or BACKENDS= without it)"); continue
  elif (( arc != 0 )); then
    [[ $b == tflite ]] && { echo "FAIL: the light runtime (TFLite) does not run under emulation (exit $arc)"; exit 1; }
    log "$b: installs on aarch64 but fails under QEMU (exit $arc); not compared"
    SKIPPED+=("$b (installs, fails under QEMU: exit $arc)"); continue
  fi
  COMPARED+=("$CACHE/out/x86_64-$b.json" "$CACHE/out/aarch64-$b.json")
done

# --- 3. the report; the figure last
REPORT=$CACHE/out/report.txt
(
  echo "# edgeba aarch64 parity under emulation ($(date -u +%Y-%m-%dT%H:%MZ))"
  echo "host: $(uname -m), $("$PY" -c 'import platform; print(platform.python_implementation(), platform.python_version())'); commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "aarch64: $("$QEMU" --version | head -1), -cpu $QEMU_CPU, Debian bookworm arm64 sysroot, $("${ARM_PY[@]:2}" -c 'import platform; print("Python", platform.python_version(), platform.libc_ver()[0], platform.libc_ver()[1])')"
  for s in "${SKIPPED[@]}" "${UNFINISHED[@]}"; do echo "not compared: $s"; done
  echo "images: the first $N val images of edgeba/data/rsna_split.csv; tolerance $TOL months; emulated run, no timing is an ARM speed"
  "$PY" "$REPO/benchmarks/arm64/parity.py" compare "$TOL" --unfinished "${#UNFINISHED[@]}" "${COMPARED[@]}" && rc=0 || rc=$?
  echo "check took $(( $(date +%s) - START )) s"
  exit $rc
) > "$REPORT" && rc=0 || rc=$?
# the figure last: move the timing line above the verdict
grep -v '^PARITY' "$REPORT" > "$REPORT.tmp"; grep '^PARITY' "$REPORT" >> "$REPORT.tmp"; mv "$REPORT.tmp" "$REPORT"
if (( RECORD )); then
  cp "$REPORT" "$REPO/benchmarks/results/aarch64-emulated-parity-$(date -u +%Y%m%dT%H%M%S).txt"
fi
cat "$REPORT"
exit $rc

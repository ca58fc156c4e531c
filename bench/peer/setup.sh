#!/usr/bin/env bash
# Create the peer-benchmark environment bench/.venv-peer for bench/bench_peer_winclip.py.
#
# A separate venv (not .venv): anomalib 2.7.0 and its dependencies (lightning, kornia,
# timm, ...) beside torch===2.13.0 / torchvision===0.28.0, open_clip_torch==3.3.0 and
# this repository's package installed editable (`pip install -e .`, with its own pins).
#
#   bash bench/peer/setup.sh            # idempotent: does nothing when the stamp matches
#   bash bench/peer/setup.sh --force    # reinstall into the existing venv
#
# Environment: PYTHON (interpreter for the venv, default python3; 3.10+),
#              PEER_VENV (venv folder, default bench/.venv-peer).
#
# The stamp ($PEER_VENV/.peer-setup.stamp) holds a hash of requirements.txt,
# constraints.txt and pyproject.toml, so editing any of them triggers a reinstall.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${PEER_VENV:-$ROOT/bench/.venv-peer}"
PYTHON="${PYTHON:-python3}"
REQ="$HERE/requirements.txt"
CONSTRAINTS="$HERE/constraints.txt"
STAMP="$VENV/.peer-setup.stamp"

force=0
case "${1:-}" in
  --force) force=1 ;;
  "") ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

want="$(cat "$REQ" "$CONSTRAINTS" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [[ $force -eq 0 && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  echo "peer venv up to date: $VENV (stamp $STAMP; --force to reinstall)"
  exit 0
fi

start=$SECONDS
if [[ ! -x "$VENV/bin/python" ]]; then
  echo "creating $VENV with $("$PYTHON" --version 2>&1)"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)

# 1. anomalib + torch pair + open_clip, every transitive version locked by constraints.txt.
echo "installing $REQ"
"${PIP[@]}" install -q -r "$REQ" -c "$CONSTRAINTS"
# 2. this repository, editable, with the exact pins of its pyproject.toml (not constrained
#    here, so a change of those pins is not blocked by an older lock).
echo "installing $ROOT (editable)"
"${PIP[@]}" install -q -e "$ROOT"
"${PIP[@]}" check

# 3. What the benchmark imports, and the versions it was written against.
"$VENV/bin/python" - <<'EOF'
import warnings

warnings.filterwarnings("ignore")
import anomalib
import open_clip
import torch
import torchvision
import torchvision.ops  # compiled ops load only when torch and torchvision match
import vtfusion
from anomalib.models.image import WinClip
from anomalib.models.image.winclip import torch_model

torchvision.ops.nms(torch.rand(2, 4), torch.rand(2), 0.5)
got = {"anomalib": anomalib.__version__, "open_clip": open_clip.__version__,
       "torch": torch.__version__.split("+")[0], "torchvision": torchvision.__version__.split("+")[0]}
want = {"anomalib": "2.7.0", "open_clip": "3.3.0", "torch": "2.13.0", "torchvision": "0.28.0"}
assert got == want, f"peer venv versions {got} != {want}"
assert hasattr(torch_model, "PRETRAINED") and hasattr(torch_model, "WinClipModel"), \
    "anomalib's winclip torch_model lacks PRETRAINED / WinClipModel: the benchmark needs updating"
print(f"ok: anomalib {anomalib.__version__}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"open_clip {open_clip.__version__}, vtfusion {vtfusion.__version__} from {vtfusion.__file__}")
EOF

echo "$want" > "$STAMP"
echo "peer venv ready: $VENV ($((SECONDS - start)) s)"

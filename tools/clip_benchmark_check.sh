#!/usr/bin/env bash
# Evaluate an exported model with clip_benchmark (LAION) on a local ImageFolder-style set.
#
#   tools/clip_benchmark_check.sh EXPORT_DIR ZEROSHOT_ROOT [OUT_JSON]
#
# EXPORT_DIR: output of `python -m tools.convert_to_openclip`; ZEROSHOT_ROOT: class sub-folders of
# images (optional classnames.txt), as eval.zeroshot. clip_benchmark 1.6.2 crashes under
# numpy >= 2.4, so it gets its own virtual environment ($CLIP_BENCHMARK_VENV, created once).
# It has no generic image-folder dataset: `imagenet1k-unverified` reads ROOT/val/<class>/ and takes
# the class names from --custom_classname_file, with OpenAI's 80 ImageNet prompt templates.
set -euo pipefail
if [[ $# -lt 2 || $1 == -h || $1 == --help ]]; then
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
export_dir=$(realpath "$1")
zeroshot_root=$(realpath "$2")
out_json=$(realpath -m "${3:-clip_benchmark_result.json}")
venv=${CLIP_BENCHMARK_VENV:-$HOME/.cache/synthclip_jax/clip_benchmark_venv}

if [[ ! -x $venv/bin/clip_benchmark ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet clip_benchmark==1.6.2 open_clip_torch==3.3.0 \
    torch==2.14.1 torchvision==0.29.1 "numpy<2.4" requests  # clip_benchmark imports requests undeclared
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/root"
ln -s "$zeroshot_root" "$work/root/val"
"$venv/bin/python" - "$zeroshot_root" "$work/classnames.json" <<'PY'
import json, pathlib, sys
root = pathlib.Path(sys.argv[1])
folders = sorted(p.name for p in root.iterdir() if p.is_dir())
names_file = root / "classnames.txt"
names = ([n.strip() for n in names_file.read_text().splitlines() if n.strip()]
         if names_file.exists() else [f.replace("_", " ") for f in folders])
json.dump({"imagenet1k-unverified": names}, open(sys.argv[2], "w"))
PY
"$venv/bin/clip_benchmark" eval --model_type open_clip --model "local-dir:$export_dir" \
  --pretrained "" --dataset imagenet1k-unverified --dataset_root "$work/root" \
  --custom_classname_file "$work/classnames.json" --task zeroshot_classification \
  --batch_size 64 --num_workers 0 --output "$out_json"
cat "$out_json"

#!/usr/bin/env bash
# One device check: the shipped suite on --zoo-device=cuda for a handful of models across tasks, then
# the value checks of pytest_zoo.conformance.training / .deployment on the same device, autocast
# float16 included. Everything it prints also lands in $OUT (or ./device-check-out).
#
#   scripts/device_check.sh                 # on the GPU machine: installs the kit (--no-deps), runs all
#   scripts/device_check.sh --device cpu    # the same on CPU (what can be tried without a GPU)
#   scripts/device_check.sh --dry-run       # print the plan and check the environment, run nothing
#
# --no-deps: that machine ships its own (older) torch/torchvision; pip must not replace them.
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda
DRY_RUN=0
INSTALL=1
EXAMPLES=2
MODELS="resnet18,googlenet,mobilenet_v3_small,squeezenet1_1,fasterrcnn_mobilenet_v3_large_320_fpn,lraspp_mobilenet_v3_large,fcn_resnet50,r3d_18,raft_small"
PYTHON=${PYTHON:-python3}
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=$2; shift 2 ;;
        --models) MODELS=$2; shift 2 ;;
        --examples) EXAMPLES=$2; shift 2 ;;
        --no-install) INSTALL=0; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) sed -n 2,11p "$0"; exit 0 ;;
        *) echo "device_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
OUT_DIR=${OUT:-$PWD/device-check-out}
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/device_check.log"
: >"$LOG"
say() { echo "device_check: $*" | tee -a "$LOG"; }

say "device=$DEVICE models=$MODELS examples=$EXAMPLES out=$OUT_DIR python=$PYTHON"
"$PYTHON" - "$DEVICE" <<'EOF' 2>&1 | tee -a "$LOG" "$OUT_DIR/environment.txt"
import importlib, sys
for module in ("torch", "torchvision", "pytest", "hypothesis"):
    try:
        print(f"{module} {importlib.import_module(module).__version__}")
    except ImportError as error:
        print(f"MISSING {module}: {error}")
import torch
print(f"cuda available: {torch.cuda.is_available()}", end="")
print(f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "")
if sys.argv[1] == "cuda" and not torch.cuda.is_available():
    sys.exit("device_check: --device cuda asked for, but CUDA is not available here")
EOF

if [ "$DRY_RUN" = 1 ]; then
    say "dry run: would run: pip install --no-deps -e . (install=$INSTALL)"
    say "dry run: would run: pytest --zoo-models='$MODELS' --zoo-device=$DEVICE --zoo-examples=$EXAMPLES (from an empty directory)"
    say "dry run: would run: the value checks on $DEVICE (autocast float16 on cuda, bfloat16 on cpu)"
    exit 0
fi

if [ "$INSTALL" = 1 ]; then
    say "installing the kit without dependencies"
    "$PYTHON" -m pip install --quiet --no-deps --no-build-isolation -e . 2>&1 | tee -a "$LOG" \
        || "$PYTHON" -m pip install --quiet --no-deps -e . 2>&1 | tee -a "$LOG"
fi

REPO=$PWD
RC=0
say "shipped suite"
(cd "$(mktemp -d)" && "$PYTHON" -m pytest -p no:cacheprovider -q -rfEs \
    --zoo-models="$MODELS" --zoo-device="$DEVICE" --zoo-examples="$EXAMPLES" \
    --junitxml="$OUT_DIR/suite.xml") 2>&1 | tee "$OUT_DIR/suite.txt" | tail -n 40 | tee -a "$LOG" || RC=1
grep -qE "[0-9]+ passed" "$OUT_DIR/suite.txt" || RC=1
grep -qE "[0-9]+ (failed|error)" "$OUT_DIR/suite.txt" && RC=1

say "value checks"
"$PYTHON" - "$DEVICE" "$MODELS" "$OUT_DIR/value_checks.json" <<'EOF' 2>&1 | tee -a "$LOG" || RC=1
import json, sys, time, traceback, warnings
import torch
from pytest_zoo.conformance import task_io as tasks
from pytest_zoo.models import building, freezing, heads
from pytest_zoo.zoo.families import find_family
from pytest_zoo.conformance.deployment import batch_equivalence, channels_last_equivalence, deployability
from pytest_zoo.conformance.deployment import precision_forward, state_dict_round_trip
from pytest_zoo.conformance.training import finite_outputs, full_backward, nonfinite_state, training_step

warnings.simplefilter("ignore")
device, names, path = torch.device(sys.argv[1]), sys.argv[2].split(","), sys.argv[3]
results, failed = [], 0


def norms(model):
    paths = heads.get_adapter(model).present_heads(model)
    return [k for k, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
            and not any(k == p or k.startswith(p + ".") for p in paths)]


for name in names:
    io = tasks.task_io(name)
    n = 3 if io.has_head else 0
    spec = find_family(name).inputs if find_family(name) else None
    side = max(spec.sizes(train=True)[0] if spec else 32, 64 if io.task == "detection" else 32)
    side = 128 if io.task == "optical_flow" else side
    frames = spec.frames[0] if spec and spec.frames else None
    def make(train, batch=2):
        return io.inputs(model, tasks.Example(batch, (side, side), frames, seed=0), n, device, train=train)
    def fresh():
        m = building.build_model(name, device=device)
        return heads.replace_head(m, n) if io.has_head else m
    torch.manual_seed(0)
    model = fresh()
    checks = {
        "finite eval": lambda: finite_outputs(model, make(False), train=False),
        "finite train": lambda: finite_outputs(model, make(True), train=True),
        "autocast": lambda: precision_forward(model, make(False)),
        "autocast train": lambda: precision_forward(model, make(True), train=True),
        "full backward": lambda: full_backward(model, make(True), io.score),
        "round trip": lambda: state_dict_round_trip(model, fresh, make(False)),
    }
    if io.task in ("classification", "segmentation", "video"):
        checks["batch equivalence"] = lambda: batch_equivalence(model, make(False, 3)[0][0])
        checks["channels_last"] = lambda: channels_last_equivalence(model, make(False))
        checks["compile"] = lambda: deployability(model, make(False, 1), "compile")
    if io.has_head:
        def step():
            heads.replace_head(model, n)
            freezing.freeze_backbone(model, norm_stats="freeze")
            return training_step(model, make(True), io.score, must_train=set(heads.head_parameter_names(model)),
                                 frozen_norm_modules=norms(model))
        checks["training step"] = step
        checks["finite parameters"] = lambda: nonfinite_state(model)
    for check, run in checks.items():
        start = time.perf_counter()
        try:
            report = run()
            ok, problems = report.ok or report.skipped is not None, list(report.problems)
        except Exception as error:
            ok, problems = False, [f"check crashed: {type(error).__name__}: {error}", traceback.format_exc()[-800:]]
        seconds = round(time.perf_counter() - start, 3)
        failed += not ok
        results.append({"model": name, "check": check, "ok": ok, "seconds": seconds, "problems": problems})
        print(f"{'ok  ' if ok else 'FAIL'} {name:42s} {check:18s} {seconds:7.2f}s {problems[0][:160] if problems else ''}")
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
with open(path, "w") as f:
    json.dump({"device": str(device), "torch": torch.__version__, "results": results}, f, indent=1)
print(f"value checks: {len(results) - failed} ok, {failed} failed; written to {path}")
sys.exit(1 if failed else 0)
EOF
say "done, rc=$RC; files in $OUT_DIR"
exit "$RC"

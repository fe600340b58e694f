#!/usr/bin/env bash
# A checkpoint that cannot be written because the disk is full. Two ways to fill it:
#   tmpfs  the checkpoint folder is a tmpfs (mounted in a private mount namespace, `unshare
#          --mount`) sized so that the step-2 checkpoint fits and the step-4 one does not: write()
#          fails with ENOSPC part-way through the step-4 shard. Exits 77 (CTest skip) when this
#          machine cannot mount (no root, no user namespaces); `fsize` then still runs.
#   fsize  RLIMIT_FSIZE (ulimit -f) below the shard size, SIGXFSZ ignored, for a run resumed
#          from the step-2 checkpoint: write() fails with EFBIG ("File too large").
# Either way: the run exits non-zero, its message names the checkpoint folder, the OS error and
# the intact previous checkpoint; only step-00000002 is a checkpoint (no step-00000004 folder); a
# half-written .step-00000004.partial holding a manifest (planted if the run cleaned its own up)
# is ignored: resume: auto continues from step 2 and chunkflow-export exports step 2 (both check
# the shards' sizes and CRC-32C against the manifest).
#   chunkflow_train_disk_full_test.sh tmpfs|fsize <chunkflow-train> <chunkflow-data> <chunkflow-export>
set -euo pipefail
mode="$1"
train="$2"
data_tool="$3"
export_tool="$4"
case "$mode" in tmpfs | fsize) ;; *) echo "usage: $0 tmpfs|fsize <train> <data> <export>" >&2; exit 2 ;; esac
fail() { echo "FAIL ($mode): $*" >&2; exit 1; }

if [ "$mode" = tmpfs ] && [ -z "${CHUNKFLOW_DISK_FULL_NAMESPACE:-}" ]; then
  # The mount must not outlive the test or be seen by anything else: rerun this script in a
  # private mount namespace, after checking that one can mount a tmpfs there.
  probe="$(mktemp -d)"
  if ! unshare --mount --propagation private sh -c "mount -t tmpfs -o size=64k tmpfs '$probe'" 2>"$probe.err"; then
    echo "SKIP: cannot mount a tmpfs in a private mount namespace here ($(tr '\n' ' ' <"$probe.err"));" \
         "the fsize variant covers the fault" >&2
    rm -rf "$probe" "$probe.err"
    exit 77
  fi
  rm -rf "$probe" "$probe.err"
  CHUNKFLOW_DISK_FULL_NAMESPACE=1 exec unshare --mount --propagation private bash "$0" "$@"
fi

work="$(mktemp -d)"
cleanup() {
  if mountpoint -q "$work/ckpt" 2>/dev/null; then umount "$work/ckpt" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

"$data_tool" synth --output "$work/data/synth" --sequences 300 --scale 0.05 --max-length 300 \
  --tail-fraction 0.05 --vocab-size 64 --quiet >/dev/null
printf 'run:\n  name: full\n' >"$work/run.yaml"
ckpt="$work/ckpt"
common=(--config "$work/run.yaml" --set data.path="$work/data/synth" --set model.vocab_size=64
        --set model.hidden_size=32 --set model.intermediate_size=48 --set model.num_hidden_layers=2
        --set model.num_attention_heads=4 --set model.num_key_value_heads=2 --set data.batch_tokens=400
        --set chunking.chunk_size=24 --set parallel.calibrate_costs=false --set logging.interval=1000
        --set logging.tensorboard=false --set run.output_dir="$work/runs" --set checkpoint.interval=2
        --set checkpoint.keep_last=5)

# The size of one checkpoint of this run, measured on the ordinary disk.
"$train" "${common[@]}" --set checkpoint.dir="$work/measure" --set run.steps=2 --set run.name=measure >"$work/measure.out" 2>&1 ||
  { cat "$work/measure.out"; fail "the measuring run failed"; }
shard="$work/measure/step-00000002/stage-00.safetensors"
[ -f "$shard" ] || fail "the measuring run wrote no $shard"
shard_bytes=$(stat -c %s "$shard")
checkpoint_kib=$(du -sk "$work/measure/step-00000002" | cut -f1)

if [ "$mode" = tmpfs ]; then
  # Room for one checkpoint and a half: the second fails part-way through its shard.
  mkdir -p "$ckpt"
  mount -t tmpfs -o size=$((checkpoint_kib * 3 / 2))k tmpfs "$ckpt"
  expected_error="No space left on device"
  status=0
  "$train" "${common[@]}" --set checkpoint.dir="$ckpt" --set run.steps=4 >"$work/full.out" 2>&1 || status=$?
else
  cp -r "$work/measure" "$ckpt"
  expected_error="File too large"
  status=0
  # Files may not grow past half a shard; SIGXFSZ ignored (inherited through exec), so write()
  # returns EFBIG instead of the signal killing the process. PMIx's shared-memory store (gds
  # ds21) would need larger files during MPI_Init; its hash store keeps that data in memory.
  (trap '' XFSZ; ulimit -f $((shard_bytes / 2048)); export PMIX_MCA_gds=hash; exec "$train" "${common[@]}" --set checkpoint.dir="$ckpt" \
    --set run.steps=4 --set checkpoint.resume=auto) >"$work/full.out" 2>&1 || status=$?
fi
echo "--- run with a full disk (exit $status):"
tail -n 3 "$work/full.out"
[ "$status" -ne 0 ] || fail "the run succeeded although its step-4 checkpoint could not be written"
[ "$status" -lt 128 ] || fail "the run died of signal $((status - 128)) instead of reporting the error"
grep -q "checkpoint $ckpt/step-00000004 (step 4) was not saved: .*$expected_error" "$work/full.out" ||
  fail "the message does not name the checkpoint $ckpt/step-00000004 and '$expected_error'"
grep -q "$ckpt/.step-00000004.partial/stage-00.safetensors" "$work/full.out" ||
  fail "the message does not name the file that could not be written"
grep -q "the previous checkpoint $ckpt/step-00000002 is intact" "$work/full.out" ||
  fail "the message does not name the intact previous checkpoint"

# Nothing but the step-2 checkpoint (and possibly a hidden .partial) is left.
left=$(ls -A "$ckpt" | grep -v -x -e step-00000002 -e .step-00000004.partial || true)
[ -z "$left" ] || fail "unexpected entries in $ckpt: $left"
# A crash just before the commit rename would leave a .partial with a manifest: plant one if the
# run removed its own, which resume and export must both ignore.
[ -f "$ckpt/step-00000002/manifest.pb" ] || fail "the step-2 checkpoint lost its manifest"
mkdir -p "$ckpt/.step-00000004.partial"
cp "$ckpt/step-00000002/manifest.pb" "$ckpt/.step-00000004.partial/manifest.pb"

"$train" "${common[@]}" --set checkpoint.dir="$ckpt" --set run.steps=3 --set checkpoint.interval=-1 \
  --set checkpoint.resume=auto >"$work/resumed.out" 2>&1 || { cat "$work/resumed.out"; fail "resume failed"; }
grep -q "resumed from $ckpt/step-00000002 at step 2" "$work/resumed.out" ||
  { cat "$work/resumed.out"; fail "did not resume from the step-2 checkpoint"; }
"$export_tool" --checkpoint "$ckpt" --output "$work/hf" >"$work/export.out" 2>&1 ||
  { cat "$work/export.out"; fail "chunkflow-export of the intact checkpoint failed"; }
grep -q "step-00000002" "$work/export.out" || { cat "$work/export.out"; fail "export did not use step-00000002"; }
[ -f "$work/hf/config.json" ] || fail "export wrote no config.json"
echo "PASS ($mode): '$expected_error' at step 4 reported with its paths; step 2 intact, resumed and exported"

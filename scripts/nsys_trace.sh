# Sourced by scripts/nsys_kernel_trace.sh and scripts/nsys_train_step.sh:
#   nsys_trace NAME WORK COMMAND [ARGS...]
# runs COMMAND under Nsight Systems (CUDA trace), its output in WORK/run.log, and leaves the trace
# as WORK/trace.sqlite; NAME prefixes its error messages. The nsys that comes with Nsight Compute
# (the GPU machine's) writes only the raw .qdstrm: its importer is in the host folder beside it
# and needs libdw.so.1, which that machine lacks (NSYS_LIBS: a folder holding it and its libelf,
# liblzma, libbz2 and libzstd, e.g. copied from a Debian machine's /usr/lib/x86_64-linux-gnu).

# The first of the paths given that is an executable file.
first_executable() {
  for f in "$@"; do
    [[ -x "$f" ]] && { echo "$f"; return; }
  done
  return 0
}

nsys_trace() {
  local name="$1" work="$2"
  shift 2
  local nsys_bin importer
  nsys_bin="$(command -v nsys || first_executable /usr/local/cuda/bin/nsys \
    /opt/nvidia/nsight-systems/*/bin/nsys /opt/nvidia/nsight-compute/*/host/target-linux-x64/nsys)"
  [[ -n "$nsys_bin" ]] || { echo "$name: no nsys on this machine" >&2; return 2; }
  "$nsys_bin" profile --trace cuda --force-overwrite true -o "$work/trace" "$@" \
    > "$work/run.log" 2>&1 || { tail -5 "$work/run.log"; return 1; }
  if [[ ! -f "$work/trace.nsys-rep" && -f "$work/trace.qdstrm" ]]; then
    importer="$(first_executable "$(dirname "$nsys_bin")"/../linux-desktop-*/QdstrmImporter)"
    [[ -n "$importer" ]] || { echo "$name: no QdstrmImporter beside $nsys_bin" >&2; return 2; }
    LD_LIBRARY_PATH="${NSYS_LIBS:+$NSYS_LIBS:}${LD_LIBRARY_PATH:-}" "$importer" \
      -i "$work/trace.qdstrm" > "$work/import.log" 2>&1 || { tail -3 "$work/import.log"; return 1; }
  fi
  "$nsys_bin" export --type sqlite --force-overwrite true --output "$work/trace.sqlite" \
    "$work/trace.nsys-rep" > "$work/export.log" 2>&1 || { tail -5 "$work/export.log"; return 1; }
}

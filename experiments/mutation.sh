#!/usr/bin/env bash
# Mutation testing of the suite with mutmut 3.8.1 (pip install '.[mutation]'); not part of CI.
# docs/testing.md, "Mutation testing", has the results and the surviving mutants judged equivalent.
#
#   experiments/mutation.sh                 # every module below
#   experiments/mutation.sh rules mesh      # some of them (names: the keys of SOURCE)
#
# Each module runs in its own copy of the working tree (tracked and untracked, not ignored, files) under
# $MUTATION_WORKDIR (default: a new temporary directory, printed), with a [tool.mutmut] section written into
# that copy's pyproject.toml: mutate that one file, against the in-process tests listed in TESTS (mutmut
# only learns which tests cover a function from tests that run in its own process; CLI subprocesses do not
# count). The repository itself is never written to. Per module it prints killed / total, and leaves
# mutmut's state in $MUTATION_WORKDIR/<module>: `cd` there and `mutmut results`, `mutmut show NAME`.
#
# Env: MUTATION_CHILDREN (default 1): mutants tested at once. MUTATION_NICE (default 10).
# MUTATION_RERUN=1 with the MUTATION_WORKDIR of an earlier run: keep each module's mutmut state, copy the
# current tests/ in, and test again only the mutants that were not killed (after adding tests for them).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
children=${MUTATION_CHILDREN:-1}
niceness=${MUTATION_NICE:-10}
workdir=${MUTATION_WORKDIR:-$(mktemp -d -t jaxdist-mutation.XXXXXX)}

declare -A SOURCE=(
  [config]=jaxdist/config.py
  [transforms]=jaxdist/data/transforms.py
  [pipeline]=jaxdist/data/pipeline.py
  [optim]=jaxdist/train/optim.py
  [checkpoint]=jaxdist/train/checkpoint.py
  [rules]=jaxdist/parallel/rules.py
  [mesh]=jaxdist/parallel/mesh.py
)
# The fast in-process tests that cover each module: pytest arguments, split at spaces (so no quoting). Tests
# that only train through the loop are deselected: they cover the module, but take seconds per mutant.
declare -A TESTS=(
  [config]="tests/test_config_validate.py tests/test_configs.py"
  [transforms]="tests/test_transforms.py"
  [pipeline]="tests/test_pipeline_input.py tests/test_data.py --deselect tests/test_data.py::test_one_train_step_on_mocked_cifar10"
  [optim]="tests/test_optim.py --deselect tests/test_optim.py::test_gradient_accumulation_matches_the_full_batch --deselect tests/test_optim.py::test_bfloat16_compute_keeps_float32_params"
  [checkpoint]="tests/test_checkpoint_units.py tests/test_checkpoint_faults.py::test_checksums_are_checked_and_a_checkpoint_without_them_loads_with_a_warning tests/test_checkpoint.py::test_retention_keeps_an_old_best_step_beside_the_latest_two tests/test_checkpoint.py::test_shape_mismatches_name_the_arrays"
  [rules]="tests/test_rules.py tests/test_sharding_specs.py"
  [mesh]="tests/test_mesh.py tests/test_sharding_specs.py"
)
# mutmut's time limit per mutant is (the covering tests' time + constant) x multiplier x 2 (mutmut's defaults:
# 1 s and 15). A checkpoint mutant that leaves an Orbax save hanging would otherwise hold a worker for
# minutes; the constant leaves room for what the estimate leaves out (forking, starting JAX's backend).
declare -A TIMEOUT_CONSTANT=([checkpoint]=10)
declare -A TIMEOUT_MULTIPLIER=([checkpoint]=3)
ORDER=(rules mesh optim transforms config pipeline checkpoint)

if (($#)); then modules=("$@"); else modules=("${ORDER[@]}"); fi
for name in "${modules[@]}"; do
  [[ -n ${SOURCE[$name]:-} ]] || { echo "unknown module '$name'; known: ${ORDER[*]}" >&2; exit 2; }
done
command -v mutmut >/dev/null || { echo "mutmut not found: pip install '.[mutation]'" >&2; exit 2; }
echo "mutation work directory: $workdir"

toml_list() {  # words -> a TOML array of strings
  local out="" word
  for word in "$@"; do out+="${out:+, }\"$word\""; done
  printf '[%s]' "$out"
}

summary=()
for name in "${modules[@]}"; do
  dir=$workdir/$name
  if [[ ${MUTATION_RERUN:-0} == 1 ]]; then
    [[ -f $dir/mutants/mutmut-stats.json ]] || { echo "MUTATION_RERUN: no earlier run in $dir" >&2; exit 2; }
    rm -rf "$dir/tests" && cp -r "$repo/tests" "$dir/tests"
    mapfile -t again < <(cd "$dir" && mutmut results | sed -n 's/^ *\(jaxdist[^:]*\): .*/\1/p')
    echo "== $name: again ${#again[@]} mutants not killed before"
    start=$SECONDS
    if ((${#again[@]})); then
      (cd "$dir" && nice -n "$niceness" mutmut run --max-children "$children" "${again[@]}") >"$dir/mutmut-rerun.log" 2>&1 \
        || { echo "mutmut run failed for $name; see $dir/mutmut-rerun.log" >&2; tail -30 "$dir/mutmut-rerun.log" >&2; exit 1; }
    fi
  else
    rm -rf "$dir"
    mkdir -p "$dir"
    # The working tree as it is now (uncommitted edits included), without ignored files.
    (cd "$repo" && git ls-files -z -co --exclude-standard \
      | while IFS= read -r -d '' f; do [[ -e $f ]] && printf '%s\0' "$f"; done \
      | tar --null -T - -cf -) | tar -xf - -C "$dir"
    # tests/conftest.py puts JAX's compile cache in REPO/.jax_cache, which is mutants/.jax_cache here: seed it.
    if [[ -d $repo/.jax_cache ]]; then mkdir -p "$dir/mutants" && cp -r "$repo/.jax_cache" "$dir/mutants/.jax_cache"; fi
    read -r -a tests <<<"${TESTS[$name]}"
    {
      echo
      echo "[tool.mutmut]"
      echo "source_paths = [\"jaxdist/\"]"
      echo "only_mutate = [\"${SOURCE[$name]}\"]"
      echo "pytest_add_cli_args_test_selection = $(toml_list "${tests[@]}")"
      echo "pytest_add_cli_args = $(toml_list -p no:cacheprovider -p no:xdist -o addopts=)"
      echo "also_copy = $(toml_list configs/ experiments/ docs/ deploy/ README.md)"
      # Forked straight from a process that has run JAX, a worker can deadlock on XLA's thread pools: fork
      # each mutant from a server that has only collected the tests (JAX imported, no backend started).
      echo "process_isolation = \"forkserver\""
      echo "forkserver_warmup = \"collect\""
      echo "use_git_change_detection = false"
      echo "timeout_constant = ${TIMEOUT_CONSTANT[$name]:-1}"
      echo "timeout_multiplier = ${TIMEOUT_MULTIPLIER[$name]:-15}"
    } >>"$dir/pyproject.toml"
    echo "== $name: ${SOURCE[$name]} against ${TESTS[$name]}"
    start=$SECONDS
    (cd "$dir" && nice -n "$niceness" mutmut run --max-children "$children") >"$dir/mutmut-run.log" 2>&1 \
      || { echo "mutmut run failed for $name; see $dir/mutmut-run.log" >&2; tail -30 "$dir/mutmut-run.log" >&2; exit 1; }
  fi
  (cd "$dir" && mutmut export-cicd-stats >/dev/null && mutmut results --all true >mutmut-results.txt)
  line=$(python3 - "$dir" "$name" "$((SECONDS - start))" <<'EOF'
import json, sys
d, name, secs = sys.argv[1:]
s = json.load(open(f"{d}/mutants/mutmut-cicd-stats.json"))
tested = s["total"] - s["no_tests"] - s["skipped"]
score = 100 * s["killed"] / tested if tested else 0.0
print(f"{name}: killed {s['killed']} / {s['total']} ({score:.1f}% of those with tests); survived {s['survived']}, "
      f"timeout {s['timeout']}, no tests {s['no_tests']}, suspicious {s['suspicious']}, segfault {s['segfault']}, "
      f"skipped {s['skipped']}; {secs} s")
EOF
)
  echo "$line"
  grep -E ': (survived|timeout|no tests|suspicious)' "$dir/mutmut-results.txt" || true
  summary+=("$line")
done

echo
echo "== summary (work directory $workdir)"
printf '%s\n' "${summary[@]}"

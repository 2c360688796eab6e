#!/usr/bin/env bash
# Mutation testing of src/fedtorch/algorithms/ with mutmut 3.x; prints the score per file.
#
# Usage:
#   scripts/mutation_testing.sh [REPO_ROOT]            # REPO_ROOT defaults to this checkout
#
# The tree under test (src/, tests/, docs/, pyproject.toml of REPO_ROOT, uncommitted edits included)
# is copied to a scratch folder, so the run neither writes into the checkout nor sees edits
# made while it runs. The files are mutated in two groups, each a separate mutmut run in its
# own sub-folder (its `mutants/`, `mutmut-run.log`):
#
#   rules/   one file per algorithm (fedavg.py ... staleness.py): each mutant is run against
#            the algorithm tests (RULES_TESTS below) that call the mutated function.
#   shared/  base.py, server_optimizers.py, registry.py, hparams.py: every test calls them,
#            so each mutant is run against a fast unit-level selection (SHARED_TESTS) instead
#            of the whole algorithm suite, which would take hours on 2 cores.
#
# mutmut stops a mutant's tests at the first failure. At the end the script writes the
# per-file table (score.txt) and the diffs of the mutants not killed (survivors.txt) into the
# scratch folder, and prints the table.
#
# Environment (all optional):
#   PYTHON            interpreter with fedtorch's dependencies and mutmut 3.x
#                     (default REPO_ROOT/.venv/bin/python; install: `pip install "mutmut>=3.8,<4"`)
#   MUTATION_WORKDIR  scratch folder (default ${TMPDIR:-/tmp}/fedtorch-mutation-<hash of REPO_ROOT>)
#   MUTATION_RESUME   1: keep MUTATION_WORKDIR's results and test only the mutants not yet tested
#                     (default 0: start afresh)
#   MUTATION_JOBS     mutants tested at once (default 2)
#   MUTATION_GROUPS   which groups to run (default "rules shared")
#   MUTATION_FILES    mutate only these files of src/fedtorch/algorithms/, by name, e.g.
#                     "scaffold.py base.py" (default: all); each goes to its own group
#                     (base.py, server_optimizers.py, registry.py, hparams.py: shared), and a
#                     group left with no file is skipped
#   MUTATION_REPORT   1: run nothing, only print the table of MUTATION_WORKDIR's results
#                     (e.g. after running the two groups in parallel with MUTATION_RESUME=1)
#
# The run checks that the tests import the mutated copy: a canary test asserts that
# `fedtorch.algorithms` is loaded from the group's mutants/src, and mutmut's own forced-fail
# check asserts that the tests fail when every mutant is switched on. 30 to 60 minutes of wall
# time on the (busy) 2-core development machine; see docs/testing.md.
set -euo pipefail

ROOT=$(cd "${1:-$(dirname "$0")/..}" && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
MUTMUT=$(dirname "$PYTHON")/mutmut
JOBS=${MUTATION_JOBS:-2}
GROUPS_TO_RUN=${MUTATION_GROUPS:-rules shared}
HASH=$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1)
WORK=${MUTATION_WORKDIR:-${TMPDIR:-/tmp}/fedtorch-mutation-$HASH}

ALG=src/fedtorch/algorithms
SHARED_FILES="$ALG/base.py $ALG/server_optimizers.py $ALG/registry.py $ALG/hparams.py"
# tests/test_mutants_*.py (written to kill the survivors of earlier runs) join both selections.
MUTANT_TESTS=$(cd "$ROOT" && ls tests/test_mutants_*.py 2>/dev/null | tr '\n' ' ' || true)
RULES_TESTS="tests/test_algorithms.py tests/test_rules_client.py tests/test_rules_drift.py \
tests/test_rules_server.py tests/test_server_optimizers.py tests/test_algorithm_matrix.py \
tests/test_degenerate.py tests/test_async.py tests/test_vectorised_convention.py tests/test_cli_errors.py \
tests/test_drift_weighting.py tests/test_momentum_corrections.py tests/test_deltasgd_perfedavg.py \
tests/test_defaults_attribution.py tests/test_hook_contract.py tests/test_executors.py $MUTANT_TESTS"
# The checkpoint-resume tests (60 % of the rules selection's time) compare a run with its own
# resumed copy, so they cannot see a change to an algorithm's rule. The CLI test that starts a
# new Python process imports the checkout's fedtorch, not the mutated copy.
RULES_KEYWORDS="not resume_from_checkpoint and not resume_after_a_crash and not real_process"
SHARED_TESTS="tests/test_server_optimizers.py tests/test_rules_client.py tests/test_degenerate.py \
tests/test_vectorised_convention.py tests/test_algorithms.py tests/test_cli_errors.py \
tests/test_rules_drift.py tests/test_async.py tests/test_drift_weighting.py tests/test_momentum_corrections.py \
tests/test_hook_contract.py tests/test_executors.py tests/test_defaults_attribution.py $MUTANT_TESTS"
# Left out of the shared selection: the 18 s CNN run through the CLI, and the CLI test that
# starts a new Python process (it would import the checkout's fedtorch, not the mutated copy).
SHARED_KEYWORDS="not cnn_cli and not real_process"

[[ -d $ROOT/$ALG ]] || { echo "error: $ROOT has no $ALG" >&2; exit 2; }
[[ -x $PYTHON ]] || { echo "error: PYTHON=$PYTHON is not an executable interpreter" >&2; exit 2; }
version=$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("mutmut"))' 2>/dev/null || true)
if [[ ! -x $MUTMUT || $version != 3.* ]]; then
    echo "error: mutmut 3.x not found next to $PYTHON; install it with: $PYTHON -m pip install 'mutmut>=3.8,<4'" >&2
    exit 2
fi
[[ $JOBS =~ ^[1-9][0-9]*$ ]] || { echo "error: MUTATION_JOBS=$JOBS must be a positive integer" >&2; exit 2; }
for group in $GROUPS_TO_RUN; do
    [[ $group == rules || $group == shared ]] || { echo "error: MUTATION_GROUPS has '$group'; use rules, shared or both" >&2; exit 2; }
done

# The files each group mutates: all of its files, or those of MUTATION_FILES.
RULES_ONLY="$ALG/*.py"
SHARED_ONLY=$SHARED_FILES
if [[ -n ${MUTATION_FILES:-} ]]; then
    RULES_ONLY="" SHARED_ONLY=""
    for f in $MUTATION_FILES; do
        [[ -f $ROOT/$ALG/$f && $f == *.py && $f != */* ]] || {
            echo "error: MUTATION_FILES has '$f'; name files of $ALG, e.g. scaffold.py" >&2; exit 2; }
        if [[ " $SHARED_FILES " == *" $ALG/$f "* ]]; then SHARED_ONLY+=" $ALG/$f"; else RULES_ONLY+=" $ALG/$f"; fi
    done
fi

REPORT_ONLY=${MUTATION_REPORT:-0}
[[ ${MUTATION_RESUME:-0} == 1 || $REPORT_ONLY == 1 ]] || rm -rf "$WORK"
mkdir -p "$WORK"

# run_group NAME ONLY_MUTATE DO_NOT_MUTATE TESTS KEYWORDS
run_group() {
    local name=$1 only=$2 skip=$3 tests=$4 keywords=$5 dir=$WORK/$1
    mkdir -p "$dir"
    # A fresh copy of the tree under test (no __pycache__); mutmut's cache is mutants/.
    rm -rf "$dir/src" "$dir/tests"
    # docs/ too: tests/test_defaults_attribution.py reads docs/algorithms.md.
    rm -rf "$dir/docs"
    tar -C "$ROOT" --exclude=__pycache__ -cf - src tests docs pyproject.toml | tar -C "$dir" -xf -
    # Canary: fails the clean run (and so stops mutmut) if the tests import another fedtorch.
    cat > "$dir/tests/test_zz_mutation_canary.py" <<'EOF'
"""Written by scripts/mutation_testing.sh: the tests must import the mutated copy."""
import os

import fedtorch.algorithms


def test_the_mutated_copy_of_fedtorch_is_imported():
    path = os.path.realpath(fedtorch.algorithms.__file__)
    assert os.sep + "mutants" + os.sep in path, f"tests import {path}, not mutants/src"
EOF
    # mutmut's settings go into the copy's pyproject.toml (a [tool.mutmut] table there is replaced).
    "$PYTHON" - "$dir/pyproject.toml" "$only" "$skip" "tests/test_zz_mutation_canary.py $tests" "$keywords" <<'EOF'
import json, re, sys
path, only, skip, tests, keywords = sys.argv[1], *(a.split() for a in sys.argv[2:5]), sys.argv[5]
text = re.sub(r"(?ms)^\[tool\.mutmut\]\n.*?(?=^\[|\Z)", "", open(path).read())
text += "\n[tool.mutmut]\n" + "\n".join([
    'source_paths = ["src"]',  # all of src is copied, so the mutated package is whole
    'also_copy = ["docs"]',  # next to mutants/tests, for the tests that read the docs
    f"only_mutate = {json.dumps(only)}",
    f"do_not_mutate = {json.dumps(skip)}",
    f"pytest_add_cli_args_test_selection = {json.dumps(tests)}",
    f"pytest_add_cli_args = {json.dumps(['-p', 'no:cacheprovider', '-k', keywords])}",
]) + "\n"
open(path, "w").write(text)
EOF
    echo "mutation testing: group $name in $dir ($JOBS jobs)"
    # PYTHONPATH is cleared: mutmut puts mutants/src first on sys.path; the canary checks it.
    local status=0
    (cd "$dir" && env -u PYTHONPATH OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 10 \
        "$MUTMUT" run --max-children "$JOBS" > mutmut-run.log 2>&1) || status=$?
    # mutmut redraws its progress line with carriage returns; show the last state.
    tr '\r' '\n' < "$dir/mutmut-run.log" | grep -v '^[[:space:]]*$' | tail -n 2
    if [[ $status -ne 0 ]]; then
        echo "error: mutmut exited with $status in group $name; full log: $dir/mutmut-run.log" >&2
        exit "$status"
    fi
}

RAN_GROUPS=""
for group in $GROUPS_TO_RUN; do
    case $group in
        rules) only=$RULES_ONLY ;;
        shared) only=$SHARED_ONLY ;;
    esac
    [[ -n ${only// /} ]] || { echo "mutation testing: group $group has no file of MUTATION_FILES; skipped"; continue; }
    RAN_GROUPS+=" $group"
    [[ $REPORT_ONLY == 1 ]] && continue
    case $group in
        rules) run_group rules "$only" "$SHARED_FILES" "$RULES_TESTS" "$RULES_KEYWORDS" ;;
        shared) run_group shared "$only" "" "$SHARED_TESTS" "$SHARED_KEYWORDS" ;;
    esac
done

cd "$WORK"
"$PYTHON" - $RAN_GROUPS <<'EOF'
import os
import sys
from collections import Counter
from pathlib import Path

from mutmut.configuration import reset_config
from mutmut.mutation.data import SourceFileMutationData
from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.stats import status_by_exit_code
from mutmut.utils.file_utils import walk_mutatable_files

cols = ["killed", "survived", "timeout", "no tests", "suspicious", "segfault", "not checked"]
rows, survivors, total = [], [], Counter()
work = Path.cwd()
for group in sys.argv[1:]:
    os.chdir(work / group)  # mutmut's paths and settings are the group folder's
    reset_config()
    for path in sorted(walk_mutatable_files()):
        data = SourceFileMutationData(path=path)
        data.load()
        if not data.exit_code_by_key:
            continue
        count = Counter(status_by_exit_code[code] for code in data.exit_code_by_key.values())
        rows.append((f"{group}: {path.name}", count, len(data.exit_code_by_key)))
        total.update(count)
        survivors += [(group, str(path), name, status_by_exit_code[code], get_diff_for_mutant(name, path=path))
                      for name, code in sorted(data.exit_code_by_key.items())
                      if status_by_exit_code[code] not in ("killed", "timeout")]
os.chdir(work)


def score(count, n):
    tested = n - count["skipped"]  # mutmut's own formula: (killed + timeout) / (total - skipped)
    return 100.0 * (count["killed"] + count["timeout"]) / tested if tested else 0.0


width = max([len(r[0]) for r in rows] + [5])
lines = [f"{'file':<{width}} " + " ".join(f"{c:>11}" for c in cols) + f" {'total':>6} {'score':>7}"]
for name, count, n in rows + [("TOTAL", total, sum(r[2] for r in rows))]:
    lines.append(f"{name:<{width}} " + " ".join(f"{count[c]:>11}" for c in cols) + f" {n:>6} {score(count, n):>6.1f}%")
Path("score.txt").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
with open("survivors.txt", "w") as out:
    for group, path, name, status, diff in survivors:
        out.write(f"# [{group}] {name}: {status}\n{diff}\n\n")
print(f"\n{len(survivors)} mutants not killed; their diffs: {work / 'survivors.txt'}")
EOF

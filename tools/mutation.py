"""Mutation testing, one module at a time, with mutmut.

Each module below names the files to mutate, the functions in them that results rest on, and the
tests that exercise them. A module runs in its own folder, ``mutants/<module>/``: mutmut reads
its settings from the ``pyproject.toml`` of the folder it runs in and forgets every cached
verdict when the test selection changes, so one shared folder would throw away the other
modules' results on every run. The shared settings live in ``[tool.mutmut]`` of the project's
``pyproject.toml``; this script adds the module's files and tests to a copy of it.

    python tools/mutation.py                 # every module, one after another
    python tools/mutation.py evaluate store-check  # only these
    python tools/mutation.py --report        # the table of the last runs, nothing run

Each run writes ``mutants/<module>/score.json`` (counts, survivors, wall time). A survivor is
shown with ``cd mutants/<module> && ../../.venv/bin/mutmut show <name>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mutmut.stats import status_by_exit_code

if sys.version_info >= (3, 11):
    from tomllib import loads as toml_loads
else:  # mutmut depends on toml before Python 3.11
    from toml import loads as toml_loads

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("agent", "envs", "policies", "train")


@dataclass(frozen=True)
class Module:
    """files: sources to mutate; functions: mutmut's names of the functions to mutate in them
    (``x_name`` for a function, ``xǁClassǁmethod`` for a method, globs allowed); tests: the
    test files (or ids) that exercise them."""

    files: tuple[str, ...]
    functions: tuple[str, ...]
    tests: tuple[str, ...]


MODULES: dict[str, Module] = {
    # Success rates, their 95% intervals, the swapped/blank instruction modes, the Crafter score.
    "evaluate": Module(
        files=("agent/evaluate.py",),
        functions=(
            "x_wilson_interval",
            "x_swapped_instruction",
            "x_run_episode",
            "x_crafter_score",
            "x_summarize",
            "x__open_ended_score",
            "x_sensitivity",
        ),
        # The mode test through a real policy (5 s a run) is left out: the scripted-agent tests
        # check the same instructions in well under a second.
        tests=(
            "tests/agent/test_evaluate_statistics.py",
            "tests/agent/test_strength_evaluate.py::test_wilson_interval_known_values",
            "tests/agent/test_strength_evaluate.py::test_swapped_instruction_names_another_evaluated_task",
            "tests/agent/test_strength_evaluate.py::test_sensitivity_reports_the_gap_on_the_same_seeds",
            "tests/agent/test_agent.py::test_crafter_score_matches_the_published_formula",
            # Plan rows, open-ended counts and an interrupted sensitivity run through a real
            # policy (2-3 s each); pytest's -x stops a mutant's run at its first failing test.
            "tests/agent/test_plan_agent.py::test_eval_with_a_plan_advances_on_the_budget_and_reports_it",
            "tests/agent/test_open_ended_eval.py::test_stats_jsonl_gives_back_the_score_eval_reports",
            "tests/reliability/test_eval_interrupt.py::test_interrupted_sensitivity_keeps_the_finished_modes",
        ),
    ),
    # Which frames a step sees (causal, window, padding) and the ring that holds them for steps.
    "fusion": Module(
        files=("policies/fusion/base.py",),
        functions=("x_visibility", "x_gather_steps", "xǁHistoryRingǁ*", "xǁFusionǁ*"),
        tests=(
            "tests/policies/test_visibility.py",
            "tests/policies/test_query_subset.py",
            "tests/policies/test_policy.py::test_visibility_rule",
            # Every fusion's prefill and per-row reset against stepping (3 s in all).
            "tests/policies/test_policy.py::test_prefill_equals_stepping",
            "tests/policies/test_policy.py::test_reset_rows_starts_a_fresh_episode_in_those_rows_only",
        ),
    ),
    # The BC loop: the masked loss and accuracy, the learning-rate schedule, the dataset check
    # before step 1, the gradient step, and checkpoint/resume (what a checkpoint holds, how a run
    # continues from it, the sampler it continues from).
    "bc": Module(
        files=("train/bc.py", "train/batch.py", "train/checkpoint.py", "train/data.py"),
        functions=(
            # train/bc.py
            "x_lr_lambda",
            "x_check_dataset",
            "x__accuracies",
            "xǁBCTrainerǁ_gradient_step",
            # train/batch.py
            "x_bc_loss",
            # train/checkpoint.py
            "x_save_bc_checkpoint",
            "x_checkpoint_step",
            "x_last_good_checkpoint",
            "x_recorded_count",
            "x_finished_run",
            "x_apply_resumed_settings",
            "x_resume_training",
            # train/data.py
            "xǁResumableSamplerǁ__iter__",
        ),
        # In-process runs on a synthetic 16x16 dataset (a run takes about a second). test_bc.py's
        # tests read configs/tiny.yaml, which mutmut's copy of the tree does not hold, or run the
        # CLI in a subprocess.
        tests=("tests/train/test_schedule.py", "tests/train/test_bc_loop_contract.py"),
    ),
    # The one episode loop: who acts, what runs, the return, success, the step budget.
    "episodes": Module(
        files=("envs/episodes.py",),
        functions=("x_task_options", "x_play_episode"),
        tests=("tests/envs/test_episodes.py", "tests/envs/test_episode_loop.py"),
    ),
    # DAgger, in three parts that each run to the end in about 20 minutes on two shared cores
    # (the whole scope, 637 mutants, needs about an hour). train/config.py
    # (DaggerConfig.beta_for) is not mutated: mutmut's copy of it fails to import (the stats run
    # stops at collection). test_dagger.py's two tests are slow (left out); these run DAgger
    # in-process on the corridor of tests/support/slip_env.py (about 6 s for a two-round run).
    # A mixture episode and its expert labels, a round's jobs, episodes and statistics.
    "dagger-rollout": Module(
        files=("train/dagger_rollout.py",),
        functions=("x_run_dagger_episode", "x_round_jobs", "x_round_entries", "x_round_statistics"),
        tests=("tests/train/test_dagger_contract.py",),
    ),
    # The rounds: the beta schedule's rounds, aggregation into the dataset, each round's record.
    "dagger-rounds": Module(
        files=("train/dagger.py",),
        functions=("xǁ_Roundsǁzero", "xǁ_Roundsǁnext", "xǁ_Roundsǁfinish"),
        tests=("tests/train/test_dagger_contract.py",),
    ),
    # The run: the copy of the demonstrations, fine-tuning, the start and resume, the loop.
    "dagger-run": Module(
        files=("train/dagger.py",),
        functions=("x__copy_demonstrations", "x__fine_tune", "x__start", "x_run_dagger"),
        tests=("tests/train/test_dagger_contract.py",),
    ),
    # The dataset store, in three parts that each run to the end (the whole scope, 985 mutants,
    # needs about two hours). The CLI tests of tests/reliability/test_dataset_store.py run
    # `data check` in a subprocess and cannot see a mutant; test_dataset_layout.py's upgrade
    # tests are left out.
    # The integrity checks: `data check`, the quick look (`unreadable`), each member's shape,
    # dtype and storage, the index validation line by line.
    "store-check": Module(
        files=("envs/data/store.py", "envs/data/format.py"),
        functions=(
            # envs/data/store.py
            "xǁDatasetǁcheck",
            "xǁDatasetǁ_check_episode",
            "xǁDatasetǁunreadable",
            "xǁDatasetǁ_recorded_bytes",
            "xǁDatasetǁ_regular_file",
            "xǁDatasetǁ_expected",
            "xǁDatasetǁ_member",
            # envs/data/format.py
            "x__check_line",
            "x__check_entry",
            "x__parse_line",
            "x_check_episode_file",
            "x_committed_length",
        ),
        tests=(
            "tests/envs/test_store_contract.py",
            "tests/envs/test_store_integrity_contract.py",
            "tests/envs/test_dataset.py",
        ),
    ),
    # Reading: an episode, its rows, images and chunks (what training sees).
    "store-read": Module(
        files=("envs/data/store.py",),
        functions=("xǁDatasetǁepisode", "xǁDatasetǁ_rows", "xǁDatasetǁimages", "xǁDatasetǁchunk"),
        tests=(
            "tests/envs/test_store_contract.py",
            "tests/envs/test_store_integrity_contract.py",
            "tests/envs/test_dataset.py",
        ),
    ),
    # The index: the lines the writer commits with an episode and how they are read back.
    "store-index": Module(
        files=("envs/data/format.py", "envs/data/writer.py"),
        functions=("x_index_entries", "x__plain_entry", "xǁDatasetWriterǁadd"),
        tests=(
            "tests/envs/test_store_contract.py",
            "tests/envs/test_store_integrity_contract.py",
            "tests/envs/test_dataset.py",
        ),
    ),
    # Instruction plans: steps, the rules that advance them, the loop.
    "plan": Module(
        files=("agent/plan.py",),
        functions=("*",),
        tests=(
            "tests/agent/test_plan.py",
            "tests/agent/test_plan_files.py",
            "tests/agent/test_plan_rules.py",
        ),
    ),
}


def _toml_value(value: object) -> str:
    # Strings, numbers, booleans and lists of them: JSON spells them as TOML does.
    return json.dumps(value, ensure_ascii=False)


def module_pyproject(module: Module) -> str:
    """The project's pyproject.toml with ``[tool.mutmut]`` narrowed to ``module``."""
    text = (REPO / "pyproject.toml").read_text()
    settings = dict(toml_loads(text)["tool"]["mutmut"])
    settings["only_mutate"] = list(module.files)
    settings["pytest_add_cli_args_test_selection"] = [t for t in module.tests if _test_exists(t)]
    section = "[tool.mutmut]\n" + "".join(f"{key} = {_toml_value(v)}\n" for key, v in settings.items())
    # The section runs from its header to the next table header (or the end of the file).
    return re.sub(r"(?ms)^\[tool\.mutmut\]\n.*?(?=^\[|\Z)", lambda _: section + "\n", text)


def _test_exists(test: str) -> bool:
    return (REPO / test.split("::")[0]).exists()


def mutant_globs(module: Module) -> list[str]:
    names = []
    for file in module.files:
        dotted = file.removesuffix(".py").replace("/", ".")
        names += [f"{dotted}.{function}__mutmut_*" for function in module.functions]
    return names


def scope(module: Module) -> dict[str, list[str]]:
    """What a module's verdicts depend on besides the code: the mutated files and functions and the
    test selection (the shared ``[tool.mutmut]`` settings with them)."""
    settings = toml_loads((REPO / "pyproject.toml").read_text())["tool"]["mutmut"]
    return {
        "files": list(module.files),
        "functions": list(module.functions),
        "tests": [t for t in module.tests if _test_exists(t)],
        "settings": [f"{key} = {_toml_value(value)}" for key, value in sorted(settings.items())],
    }


def prepare(name: str, module: Module) -> Path:
    """``mutants/<name>/``: links to the packages and tests, and the module's pyproject.toml.

    A folder last run with another scope is wiped first. mutmut regenerates a file's mutants only
    when the source is newer than its copy, so a file that was copied unmutated (outside the
    scope) stays unmutated after it joins the scope, and the test map recorded for the old
    selection is reused: its mutants then read as "no tests" or are tested against the wrong
    tests. ``scope.json`` records the scope the folder's copy, test map and verdicts belong to.
    """
    folder = REPO / "mutants" / name
    wanted = scope(module)
    recorded = folder / "scope.json"
    if folder.exists() and (not recorded.exists() or json.loads(recorded.read_text()) != wanted):
        print(f"{name}: the scope changed since the last run; starting from a clean mutants/{name}/")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    recorded.write_text(json.dumps(wanted, indent=2, ensure_ascii=False) + "\n")
    for entry in (*PACKAGES, "tests"):
        link = folder / entry
        if not link.is_symlink():
            link.symlink_to(Path("..", "..", entry))
    (folder / "pyproject.toml").write_text(module_pyproject(module))
    return folder


def score(name: str, module: Module) -> dict[str, object]:
    """Verdicts of the module's mutants, read from mutmut's per-file records."""
    folder = REPO / "mutants" / name
    patterns = [re.compile(re.escape(g).replace(r"\*", ".*") + "$") for g in mutant_globs(module)]
    counts: dict[str, int] = {}
    survivors: list[str] = []
    for file in module.files:
        meta = folder / "mutants" / f"{file}.meta"
        if not meta.exists():
            continue
        for key, exit_code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if not any(p.match(key) for p in patterns):
                continue
            status = status_by_exit_code[exit_code]
            counts[status] = counts.get(status, 0) + 1
            if status == "survived":
                survivors.append(key)
    total = sum(counts.values())
    killed = counts.get("killed", 0)
    return {
        "module": name,
        "killed": killed,
        "survived": counts.get("survived", 0),
        "timeout": counts.get("timeout", 0),
        "other": {k: v for k, v in counts.items() if k not in ("killed", "survived", "timeout")},
        "total": total,
        "killed_percent": round(100 * killed / total, 1) if total else None,
        "survivors": sorted(survivors),
    }


def run(name: str, module: Module, max_children: int) -> dict[str, object]:
    folder = prepare(name, module)
    (folder / "score.json").unlink(missing_ok=True)  # an interrupted run leaves no stale score
    mutmut = Path(sys.executable).parent / "mutmut"
    environment = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    started = time.monotonic()
    subprocess.run(
        [str(mutmut), "run", "--max-children", str(max_children), *mutant_globs(module)],
        cwd=folder,
        env=environment,
        check=True,
    )
    result = score(name, module)
    result["wall_seconds"] = round(time.monotonic() - started)
    (folder / "score.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def table(results: list[dict[str, object]]) -> str:
    lines = ["| module | killed | survived | timeout | other | total | killed % | wall |"]
    lines.append("|---|---|---|---|---|---|---|---|")
    for r in results:
        other = sum(r["other"].values()) if r["other"] else 0  # type: ignore[union-attr]
        wall = f"{r.get('wall_seconds', 0) // 60} min {r.get('wall_seconds', 0) % 60} s"  # type: ignore[operator]
        lines.append(
            f"| {r['module']} | {r['killed']} | {r['survived']} | {r['timeout']} | {other} | {r['total']} "
            f"| {r['killed_percent']} | {wall} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE", help="any of: " + ", ".join(MODULES))
    parser.add_argument("--max-children", type=int, default=1, help="mutants tested at once (one per core)")
    parser.add_argument("--report", action="store_true", help="print the last runs' table; run nothing")
    parser.add_argument(
        "--tests",
        nargs="+",
        help="run one module with these tests instead of its own (e.g. the tests before a change)",
    )
    args = parser.parse_args()
    names = args.modules or list(MODULES)
    unknown = [name for name in names if name not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {unknown}; expected any of {list(MODULES)}")
    if args.tests:
        if len(names) != 1:
            parser.error("--tests needs exactly one module")
        MODULES[names[0]] = dataclasses.replace(MODULES[names[0]], tests=tuple(args.tests))
    results = []
    for name in names:
        if args.report:
            saved = REPO / "mutants" / name / "score.json"
            if saved.exists():
                results.append(json.loads(saved.read_text()))
            continue
        result = run(name, MODULES[name], args.max_children)
        results.append(result)
        print(f"{name}: survivors {result['survivors']}", flush=True)
    print(table(results))


if __name__ == "__main__":
    main()

"""Bad-input corpus: every case runs the real CLI entry point in-process and must fail cleanly.

Each case writes its files into a fresh directory (the working directory of the run), calls
``robustsweep.cli.main(argv)`` and asserts: exit code 2, exactly one non-empty line on stderr,
no traceback anywhere, and the field or file at fault named in that line. No case trains or
starts Ray: every one fails in argument parsing, job loading or the pre-flight.

Add a case: append ``Case(name, files, argv, expect)`` to the list of its class below.
"""

from __future__ import annotations

import gzip
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from robustsweep.cli import main


@dataclass(frozen=True)
class Case:
    name: str
    files: dict[str, str | bytes]  # relative path -> content (a str ending in / is a directory)
    argv: list[str]
    expect: str  # substring of the error line: the field, flag or file at fault
    env: dict[str, str] = field(default_factory=dict)


JOB = "job.yaml"
OFFLINE = "tracking: {enabled: false}\n"


def job(text: str, extra: dict[str, str | bytes] | None = None, cmd: str = "validate",
        flags: tuple[str, ...] = ()) -> tuple[dict[str, str | bytes], list[str]]:
    """Files and argv for ``robustsweep <cmd> job.yaml`` with ``text`` as the job."""
    return {JOB: text, **(extra or {})}, [cmd, JOB, *flags]


def case(name: str, text: str, expect: str, extra: dict[str, str | bytes] | None = None,
         cmd: str = "validate", flags: tuple[str, ...] = ()) -> Case:
    files, argv = job(text, extra, cmd, flags)
    return Case(name, files, argv, expect)


BILLION_LAUGHS = "".join(
    ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n']
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9)]
)
CSV_JOB = ("data: {source: 'file:data.csv', text_fields: [text], label_field: label}\n" + OFFLINE)
JSONL_JOB = ("data: {source: 'file:data.jsonl', text_fields: [text], label_field: label}\n"
             + OFFLINE)
GOOD_CSV = "text,label\n" + "".join(f"row {i},{i % 2}\n" for i in range(20))
SWEEP = "sweep: {methods: [pgd]}\n"


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _truncated_gzip() -> bytes:
    return gzip.compress(GOOD_CSV.encode() * 50)[:60]


YAML_EDGE = [
    case("yaml_syntax_error", "train: [1, 2\n", JOB),
    case("yaml_not_utf8", b"name: caf\xe9\n", "not UTF-8"),  # type: ignore[arg-type]
    case("yaml_duplicate_section", "train: {epochs: 1}\ntrain: {epochs: 2}\n", "duplicate key 'train'"),
    case("yaml_duplicate_nested_key", "train:\n  epochs: 1\n  epochs: 2\n", "duplicate key 'epochs'"),
    case("yaml_empty_file", "", "empty job file"),
    case("yaml_comment_only", "# nothing to see\n\n", "empty job file"),
    case("yaml_billion_laughs", BILLION_LAUGHS, "alias bomb"),
    case("yaml_recursive_alias", "data: &d {ood: [*d]}\n", "recursive alias"),
    case("yaml_python_object_tag", "name: !!python/object/apply:os.system [ls]\n", "python/object"),
    case("yaml_too_large", "#" * ((1 << 20) + 16), "larger than"),
    case("yaml_top_level_list", "- train\n- eval\n", "mapping"),
    case("yaml_nul_character", "name: a\x00b\n", "unacceptable character"),
    case("yaml_deep_nesting", "a: " + "[" * 300 + "]" * 300 + "\n", JOB),
    case("yaml_unhashable_key", "? [a, b]\n: 1\n", JOB),
    Case("job_file_missing", {}, ["validate", "nope.yaml"], "no such job file"),
    Case("job_file_is_directory", {"jobdir/": ""}, ["validate", "jobdir"], "not a file"),
]

SCHEMA = [
    case("unknown_key", "train: {epoch: 3}\n", "train.epoch"),
    case("bool_for_int", "train: {epochs: true}\n", "train.epochs"),
    case("bool_for_float", "train: {lr: yes}\n", "train.lr"),
    case("nan_learning_rate", "train: {lr: .nan}\n", "train.lr"),
    case("inf_weight_decay", "train: {weight_decay: .inf}\n", "train.weight_decay"),
    case("adam_beta_one", "train: {adam_betas: [0.9, 1.0]}\n", "train.adam_betas"),
    case("adam_beta_bool", "train: {adam_betas: [true, 0.9]}\n", "train.adam_betas"),
    case("negative_seed", "seed: -1\n", "seed"),
    case("negative_split_seed", "data: {split_seed: -3}\n", "data.split_seed"),
    case("negative_sweep_seed", "sweep: {seeds: [1, -1]}\n", "sweep.seeds.1"),
    case("zero_trial_resource", "sweep: {trial_resources: {trial_driver: 0}}\n",
         "sweep.trial_resources.trial_driver"),
    case("bool_cpus", "scaling: {cpus_per_worker: true}\n", "scaling.cpus_per_worker"),
    case("batch_not_divisible", "train: {batch_size: 33}\nscaling: {num_workers: 2}\n",
         "train.batch_size"),
    case("name_parent_dir", "name: '..'\n", "name"),
    case("name_with_dotdot", "name: a..b\n", "name"),
    case("name_with_slash", "name: a/b\n", "name"),
    case("output_dir_root", "output_dir: /\n", "output_dir"),
    case("output_dir_etc", "output_dir: /etc\n", "output_dir"),
    case("output_dir_home", "output_dir: '~'\n", "output_dir"),
    case("output_dir_proc_child", "output_dir: /proc/self\n", "output_dir"),
    case("ood_duplicate_names", "data:\n  ood:\n    - {name: x, source: 'builtin:imdb'}\n"
         "    - {name: x, source: 'builtin:imdb'}\n", "data.ood"),
    case("ood_name_slash", "data: {ood: [{name: a/b, source: 'builtin:imdb'}]}\n", "data.ood.0.name"),
    case("ood_name_dots", "data: {ood: [{name: '..', source: 'builtin:imdb'}]}\n", "data.ood.0.name"),
    case("anomaly_duplicate_names", "eval:\n  anomaly:\n    - {name: n, source: 'builtin:rt_plots'}\n"
         "    - {name: n, source: 'builtin:news_headlines'}\n", "eval.anomaly"),
    case("one_label_name", "data: {label_names: [only]}\n", "data.label_names"),
    case("repeated_label_names", "data: {label_names: [a, a]}\n", "data.label_names"),
    case("unknown_method", "method: {name: nope}\n", "method"),
    case("knob_bool", "method: {name: pgd, knobs: {adv_lr: true}}\n", "adv_lr"),
    case("knob_nan", "method: {name: pgd, knobs: {adv_lr: .nan}}\n", "adv_lr"),
    case("attacks_repeat", "eval: {attacks: [pwws, pwws]}\n", "eval.attacks"),
    case("empty_experiment", "tracking: {experiment: ''}\n", "tracking.experiment"),
]

PREFLIGHT = [
    case("unknown_attack", "eval: {attacks: [nope]}\n", "eval.attacks.0"),
    case("unknown_proxy_attack", "eval: {proxy_attack: nope}\n", "eval.proxy_attack"),
    case("attack_profile_file_unknown_key", "eval: {attacks: [file:p.yaml]}\n", "p.yaml",
         {"p.yaml": "name: x\nrecipe: pwws\nbudget: 3\n"}),
    case("attack_profile_file_missing", "eval: {attacks: [file:gone.yaml]}\n", "gone.yaml"),
    case("attack_profile_unknown_recipe", "eval: {attacks: [file:p.yaml]}\n", "p.yaml",
         {"p.yaml": "name: x\nrecipe: nope\n"}),
    case("data_unknown_builtin", "data: {source: 'builtin:nope'}\n", "data.source"),
    case("data_unknown_scheme", "data: {source: 's3://bucket/x.csv'}\n", "data.source"),
    case("data_file_missing", "data: {source: 'file:gone.csv'}\n", "gone.csv"),
    case("data_unlabeled_training", "data: {source: 'builtin:news_headlines'}\n", "data.source"),
    case("ood_unknown_builtin", "data: {ood: [{name: o, source: 'builtin:nope'}]}\n",
         "data.ood.0.source"),
    case("ood_unlabeled_set", "data: {ood: [{name: o, source: 'builtin:rt_plots'}]}\n",
         "data.ood.0.source"),
    case("anomaly_file_missing", "eval: {anomaly: [{name: a, source: 'file:gone.jsonl'}]}\n",
         "eval.anomaly.0.source"),
    case("eval_split_file_missing", CSV_JOB.replace("label_field: label", "label_field: label, "
         "eval_split: dev.csv"), "data.eval_split", {"data.csv": GOOD_CSV}),
    case("model_unknown_builtin", "model: {source: 'builtin:nope'}\n", "model.source"),
    case("model_dir_missing", "model: {source: ./no-model}\n", "model.source"),
    case("model_dir_without_config", "model: {source: ./m}\n", "model.source", {"m/": ""}),
    case("model_bad_hub_id", "model: {source: 'hf:'}\n", "model.source"),
    case("tracking_unknown_scheme", "tracking: {tracking_uri: 'ftp://x/y'}\n",
         "tracking.tracking_uri"),
    case("tracking_bad_port", "tracking: {tracking_uri: 'http://localhost:99999'}\n",
         "tracking.tracking_uri"),
    case("tracking_unreachable", "tracking: {tracking_uri: 'http://127.0.0.1:1'}\n",
         "tracking.tracking_uri"),
    case("cluster_address_no_port", "cluster: {address: nohost}\n", "cluster.address"),
    case("cluster_address_bad_port", "cluster: {address: '10.0.0.1:70000'}\n", "cluster.address"),
    case("cluster_address_bad_host", "cluster: {address: 'bad_host!:6379'}\n", "cluster.address"),
    case("node_ip_invalid", "cluster: {node_ip_address: 300.1.1.1}\n", "cluster.node_ip_address"),
    case("storage_not_a_url", SWEEP.replace("}", ", storage: not-a-url}"), "sweep.storage"),
    case("storage_unknown_database", SWEEP.replace("}", ", storage: 'mongodb://h/db'}"),
         "sweep.storage"),
    case("storage_unknown_driver", SWEEP.replace("}", ", storage: 'postgresql+nosuch://h/db'}"),
         "sweep.storage"),
    case("storage_driver_not_installed", SWEEP.replace("}", ", storage: 'mysql://u:pw@h/db'}"),
         "sweep.storage"),
    case("objective_attack_not_run", "sweep:\n  objectives: [{metric: robust_accuracy/pwws}]\n",
         "sweep.objectives.0.metric"),
    case("objective_unknown_ood_set", "sweep:\n  objectives: [{metric: ood_accuracy/nope}]\n",
         "sweep.objectives.0.metric"),
    case("objective_proxy_without_proxy",
         "eval: {attacks: [deepwordbug]}\nsweep:\n  objectives: "
         "[{metric: proxy_robust_accuracy/deepwordbug}]\n", "sweep.objectives.0.metric"),
    case("objective_typo", "sweep:\n  objectives: [{metric: clean_acuracy}]\n",
         "sweep.objectives.0.metric"),
    case("rank_by_unknown", "sweep: {rank_by: robust_accuracy/pwws}\n", "sweep.rank_by"),
    case("rank_min_unknown", "sweep: {rank_min: {ood_accuracy/x: 0.5}}\n", "sweep.rank_min"),
    case("asha_on_final_only_metric",
         "train: {epochs: 3}\neval: {attacks: [deepwordbug]}\nsweep:\n  asha: {enabled: true, "
         "metric: robust_accuracy/deepwordbug}\n", "sweep.asha.metric"),
    case("asha_grace_not_below_epochs", "train: {epochs: 1}\nsweep: {asha: {enabled: true}}\n",
         "sweep.asha.grace_period"),
    case("space_dir_missing", SWEEP.replace("}", ", space_dir: ./spaces}"), "sweep.space_dir"),
    case("space_override_log_with_step", "sweep:\n  methods: [pgd]\n  spaces: {pgd: {adv_lr: "
         "{type: float, low: 0.01, high: 0.1, log: true, step: 0.01}}}\n", "spaces.pgd.adv_lr"),
    case("space_override_int_fraction", "sweep:\n  methods: [pgd]\n  spaces: {pgd: {adv_steps: "
         "{type: int, low: 1.5, high: 3}}}\n", "spaces.pgd.adv_steps"),
    case("space_override_bool_bound", "sweep:\n  methods: [pgd]\n  spaces: {pgd: {adv_lr: "
         "{type: float, low: true, high: 0.1}}}\n", "spaces.pgd.adv_lr"),
    case("space_override_unknown_knob", "sweep:\n  methods: [pgd]\n  spaces: {pgd: {nope: 1}}\n",
         "spaces.pgd.nope"),
    case("train_space_unknown_setting", "sweep:\n  train_space: {epoch: {type: int, low: 1, "
         "high: 2}}\n", "train_space.epoch"),
    case("space_file_duplicate_key", SWEEP.replace("}", ", space_dir: sp}"), "pgd.yaml",
         {"sp/pgd.yaml": "method: pgd\nknobs: {}\nknobs: {}\n"}),
    case("space_file_log_with_step", SWEEP.replace("}", ", space_dir: sp}"), "pgd.yaml",
         {"sp/pgd.yaml": "method: pgd\nknobs:\n  adv_lr: {type: float, low: 0.01, high: 0.1, "
          "log: true, step: 0.01}\n"}),
    case("space_file_unknown_knob", SWEEP.replace("}", ", space_dir: sp}"), "pgd.yaml",
         {"sp/pgd.yaml": "method: pgd\nknobs:\n  nope: {type: float, low: 0.1, high: 0.2}\n"}),
    case("space_file_empty", SWEEP.replace("}", ", space_dir: sp}"), "pgd.yaml",
         {"sp/pgd.yaml": "# empty\n"}),
    case("space_file_missing", SWEEP.replace("}", ", space_dir: sp}"), "pgd.yaml",
         {"sp/": ""}),
    case("space_file_not_utf8", SWEEP.replace("}", ", space_dir: sp}"), "pgd.yaml",
         {"sp/pgd.yaml": b"method: pgd\nknobs: {}\n# \xff\n"}),
]

DATA_FILES = [
    case("data_corrupt_gzip", CSV_JOB.replace("data.csv", "data.csv.gz"), "data.csv.gz",
         {"data.csv.gz": b"this is not gzip at all"}),
    case("data_truncated_gzip", CSV_JOB.replace("data.csv", "data.csv.gz"), "data.csv.gz",
         {"data.csv.gz": _truncated_gzip()}),
    case("data_corrupt_bz2", CSV_JOB.replace("data.csv", "data.csv.bz2"), "data.csv.bz2",
         {"data.csv.bz2": b"BZh9 broken"}),
    case("data_mixed_label_types", JSONL_JOB, "mixes",
         {"data.jsonl": _jsonl([{"text": "a", "label": 0}, {"text": "b", "label": 1},
                                {"text": "c", "label": "pos"}])}),
    case("data_label_far_out_of_range", CSV_JOB, "1000000",
         {"data.csv": "text,label\na,0\nb,1\nc,1000000\n"}),
    case("data_fractional_label", CSV_JOB, "0.5", {"data.csv": "text,label\na,0\nb,1\nc,0.5\n"}),
    case("data_no_usable_rows", CSV_JOB.replace("label_field: label", "label_field: label, "
         "label_names: [neg, pos]"), "no usable rows",
         {"data.csv": "text,label\na,maybe\nb,unsure\n"}),
    case("data_missing_text_column", CSV_JOB.replace("text_fields: [text]",
         "text_fields: [sentence]"), "missing column", {"data.csv": GOOD_CSV}),
    case("data_unsupported_format", CSV_JOB.replace("data.csv", "data.xlsx"), "unsupported format",
         {"data.xlsx": b"PK\x03\x04"}),
    case("data_empty_file", CSV_JOB, "data.csv", {"data.csv": ""}),
    case("data_binary_csv", CSV_JOB, "data.csv", {"data.csv": b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x00"}),
    case("data_label_column_is_text", CSV_JOB, "looks like a text column",
         {"data.csv": "text,label\n" + "".join(f"t{i},word{i}\n" for i in range(60))}),
    case("data_broken_jsonl", JSONL_JOB, "data.jsonl", {"data.jsonl": '{"text": "a", "label": 0}\n{'}),
    case("data_source_is_directory", CSV_JOB, "not a file", {"data.csv/": ""}),
    case("data_only_negative_labels", CSV_JOB, "negative", {"data.csv": "text,label\na,-1\nb,-1\n"}),
    case("ood_file_missing_column", CSV_JOB.replace("label_field: label}", "label_field: label, "
         "ood: [{name: o, source: 'file:ood.csv'}]}"), "ood.csv",
         {"data.csv": GOOD_CSV, "ood.csv": "body,label\nx,0\n"}),
]

TRIAL_JSON = json.dumps({"job": {"name": "t"}, "mlflow_run_id": None})
TRUST_JSON = json.dumps({"job": {"name": "t", "model": {"source": "hf:org/custom",
                                                           "trust_remote_code": True}}})
MANIFEST = {"version": 1, "job": {"name": "s", "model": {"source": "hf:org/custom",
                                                          "trust_remote_code": True},
                                  "sweep": {"methods": ["vanilla"]}},
            "study": {}, "tracking": {}, "trials": {}, "num_samples": 1}

CLI_FLAGS = [
    Case("cli_unknown_command", {}, ["nope"], "invalid choice"),
    Case("cli_validate_without_job", {}, ["validate"], "job"),
    Case("cli_unknown_flag", {JOB: OFFLINE}, ["validate", JOB, "--frobnicate"], "--frobnicate"),
    case("set_empty_segment", OFFLINE, "--set", flags=("--set", "train..epochs=1")),
    case("set_trailing_dot", OFFLINE, "--set", flags=("--set", "train.=1")),
    case("set_without_equals", OFFLINE, "--set", flags=("--set", "train.epochs")),
    case("set_empty_key", OFFLINE, "--set", flags=("--set", "=1")),
    case("set_into_a_value", "train: {epochs: 1}\n" + OFFLINE, "--set",
         flags=("--set", "train.epochs.x=1")),
    case("set_duplicate_key_in_value", OFFLINE, "duplicate key",
         flags=("--set", "train={epochs: 1, epochs: 2}")),
    case("set_bool_for_number", OFFLINE, "train.epochs", flags=("--set", "train.epochs=true")),
    case("train_negative_max_failures", OFFLINE, "--max-failures", cmd="train",
         flags=("--max-failures", "-1")),
    case("train_preflight_before_ray", "eval: {attacks: [nope]}\n" + OFFLINE, "eval.attacks.0",
         cmd="train"),
    case("train_resume_without_trial", "output_dir: out\n" + OFFLINE, "--resume", cmd="train",
         flags=("--resume",)),
    Case("eval_zero_examples", {}, ["eval", "--run", "x", "--num-examples", "0"], "--num-examples"),
    Case("eval_nan_timeout", {}, ["eval", "--run", "x", "--timeout", "nan"], "--timeout"),
    Case("eval_bad_workers", {}, ["eval", "--run", "x", "--workers", "many"], "--workers"),
    Case("eval_unknown_attack", {}, ["eval", "--run", "x", "--attack", "nope"], "--attack"),
    Case("eval_attack_twice", {}, ["eval", "--run", "x", "--attack", "pwws", "--attack", "pwws"],
         "--attack"),
    Case("eval_out_system_dir", {}, ["eval", "--run", "x", "--out", "/etc"], "--out"),
    Case("eval_run_not_found", {}, ["eval", "--run", "no-such-run"], "no-such-run"),
    Case("eval_run_dir_without_record", {"plain/": ""}, ["eval", "--run", "plain"], "trial.json"),
    Case("eval_run_foreign_trial_json", {"t/trial.json": '["not", "ours"]', "t/state.pt": b""},
         ["eval", "--run", "t"], "not a robustsweep trial record"),
    Case("eval_run_invalid_job", {"t/trial.json": json.dumps({"job": {"train": {"epoch": 1}}}),
                                  "t/state.pt": b""}, ["eval", "--run", "t"], "train.epoch"),
    Case("eval_run_remote_code_needs_flag", {"t/trial.json": TRUST_JSON, "t/state.pt": b""},
         ["eval", "--run", "t"], "--trust-remote-code"),
    Case("sweep_without_job", {}, ["sweep"], "job YAML"),
    case("sweep_job_without_sweep_section", OFFLINE, "sweep", cmd="sweep"),
    case("sweep_retry_failed_without_resume", OFFLINE + SWEEP, "--retry-failed", cmd="sweep",
         flags=("--retry-failed",)),
    case("sweep_bad_address_flag", OFFLINE + SWEEP, "cluster.address", cmd="sweep",
         flags=("--address", "not an address")),
    case("sweep_preflight_before_ray", OFFLINE + "sweep:\n  objectives: [{metric: nope}]\n",
         "sweep.objectives.0.metric", cmd="sweep"),
    Case("sweep_resume_missing_dir", {}, ["sweep", "--resume", "gone"], "gone"),
    Case("sweep_resume_without_manifest", {"s/": ""}, ["sweep", "--resume", "s"],
         "not a sweep directory"),
    Case("sweep_resume_foreign_manifest", {"s/manifest.json": json.dumps({"version": 1})},
         ["sweep", "--resume", "s"], "not a robustsweep sweep manifest"),
    Case("sweep_resume_remote_code_needs_flag", {"s/manifest.json": json.dumps(MANIFEST)},
         ["sweep", "--resume", "s"], "--trust-remote-code"),
    Case("sweep_resume_bad_address", {"s/manifest.json": json.dumps(MANIFEST)},
         ["sweep", "--resume", "s", "--address", "300.1.1.1:6379", "--trust-remote-code"],
         "--address"),
    Case("sweep_resume_with_job", {JOB: OFFLINE}, ["sweep", JOB, "--resume", "s"], "--resume"),
]

CASES = YAML_EDGE + SCHEMA + PREFLIGHT + DATA_FILES + CLI_FLAGS


def _write(root: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        path = root / rel
        if rel.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def test_corpus_is_large_and_unique() -> None:
    names = [c.name for c in CASES]
    assert len(names) == len(set(names))
    assert len(CASES) >= 60


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input_fails_in_one_line(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path, case.files)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    started = time.monotonic()
    try:
        code = main(case.argv)
    except SystemExit as exc:  # argparse exits itself
        code = exc.code
    elapsed = time.monotonic() - started
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit {code}; stderr: {err!r}"
    assert "Traceback" not in out + err
    assert len(lines) == 1, f"expected one stderr line, got {lines!r}"
    assert lines[0].startswith("error: ")
    assert case.expect in lines[0], lines[0]
    assert len(lines[0]) < 1000
    assert elapsed < 30, f"took {elapsed:.1f} s"

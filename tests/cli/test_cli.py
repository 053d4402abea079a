"""The command line as a user meets it: one clear line for mistakes, non-zero exit.

The commands run in-process (the ``cli`` fixture: ``main`` as the entry point calls it);
the first two tests start ``python -m lavislike`` itself, so the installed entry point is
checked to list the zoo and to print a mistake as one line (no import-time noise)."""
import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def lavislike_process(*args, env=None, cwd=None):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "lavislike", *args], capture_output=True, text=True, env=full_env, cwd=cwd or REPO,
        timeout=300,
    )


def test_zoo_lists_every_kind():
    out = lavislike_process("zoo")
    assert out.returncode == 0, out.stderr
    for section in ("models", "image_encoders", "llms", "datasets", "tasks", "processors"):
        assert section in out.stdout
    assert "blip2_opt" in out.stdout and "pretrain_opt2.7b" in out.stdout
    assert "eva_clip_g" in out.stdout and "coco_caption" in out.stdout


def test_the_command_prints_a_mistake_as_one_line_and_exits_2():
    out = lavislike_process("config", "model.arch=blip2_otp")
    assert out.returncode == 2
    lines = [l for l in out.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, out.stderr
    assert "Did you mean 'blip2_opt'?" in lines[0] and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "args, expected",
    [
        (["config", "model.arch=blip2_otp"], "Did you mean 'blip2_opt'?"),
        (["config", "model.arch=blip2", "model.qformer.num_query_tokn=3"], "num_query_token"),
        (["config", "model.arch=blip2", "model.model_type=pretrian"], "Did you mean 'pretrain'?"),
        (["config", "--cfg-path", "no/such/file.yaml"], "config file not found"),
        (["config", "run.task=captionin"], "Did you mean 'captioning'?"),
        (["zoo", "modles"], "Did you mean 'models'?"),
    ],
)
def test_mistakes_are_one_line_and_exit_2(args, expected, cli):
    out = cli(*args, cwd=REPO)
    assert out.returncode == 2
    lines = [l for l in out.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, out.stderr
    assert expected in lines[0] and "Traceback" not in out.stderr


def test_config_prints_the_resolved_config_with_options(tmp_path, cli):
    exp = tmp_path / "exp.yaml"
    exp.write_text(textwrap.dedent("""
        model: {arch: blip2, model_type: pretrain}
        run: {task: image_text_pretrain}
    """))
    out = cli("config", "--cfg-path", str(exp), "--options", "model.model_type=coco", "run.init_lr=3e-5")
    assert out.returncode == 0, out.stderr
    assert "model_type: coco" in out.stdout and "init_lr: 3.0e-05" in out.stdout


def test_make_synthetic_writes_the_corpus_under_the_cache(tmp_path, cli):
    out = cli("make-synthetic", "--n-train", "6", "--n-val", "2", "--n-test", "2", "--image-size", "32",
              env={"LAVISLIKE_CACHE": str(tmp_path)}, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "synthetic" / "manifest.json").is_file()
    assert (tmp_path / "synthetic" / "annotations" / "caption_val_gt.json").is_file()


def test_download_has_its_own_help_and_suggests_names(cli):
    out = cli("download", "--help", cwd=REPO)
    assert out.returncode == 0 and "--splits" in out.stdout
    out = cli("download", "coco_captio")
    assert out.returncode == 2 and "Did you mean 'coco_caption'?" in out.stderr


@pytest.mark.parametrize(
    "yaml_text, args, expected",
    [
        # mistakes inside an experiment YAML name the file and the near match
        ("model: {arch: blip2, model_type: tiny}\nrun: {task: retrieval, k_tset: 4}\n", [], "k_test"),
        ("model: {arch: blip2, model_type: tiny, qformer: {num_hiden_layers: 2}}\n", [], "num_hidden_layers"),
        ("model: {arch: blip2, image_encoder: {name: eva_clip_gg}}\n", [], "Did you mean 'eva_clip_g'?"),
        ("datasets: {coco_captoin: {}}\n", [], "Did you mean 'coco_caption'?"),
        ("datasets: {coco_caption: {vis_procesor: {}}}\n", [], "vis_processor"),
        ("runn: {task: retrieval}\n", [], "Did you mean 'run'?"),
        ("run: {runner: runner_itr}\n", [], "Did you mean 'runner_iter'?"),
        ("run: {max_epoch: many}\n", [], "max_epoch"),
        # and on the command line, for train as for config
        ("model: {arch: blip2, model_type: tiny}\n", ["run.lr_shed=constant_lr"], "command line"),
        ("model: {arch: blip2, model_type: tiny}\n", ["model.llm_proj=1", "--options", "run.seed=1"], "llm_proj"),
        ("model: {arch: blip2, model_type: tiny}\n", ["run.init_lr"], "key.path=value"),
    ],
)
@pytest.mark.parametrize("command", ["config", "train"])
def test_mistakes_in_yaml_and_overrides_are_one_line(tmp_path, command, yaml_text, args, expected, cli):
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml_text)
    out = cli(command, "--cfg-path", str(exp), *args, env={"LAVISLIKE_CACHE": str(tmp_path)}, cwd=REPO)
    assert out.returncode == 2, out.stderr
    lines = [l for l in out.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert expected in lines[0]
    if not args or "command line" not in expected:
        assert ("exp.yaml" in lines[0]) == (not args), lines[0]  # names where the mistake is
    assert not (tmp_path / "output").exists()  # nothing started


def test_train_with_missing_data_is_one_line(tmp_path, cli):
    exp = tmp_path / "exp.yaml"
    exp.write_text("model: {arch: blip2, model_type: tiny, load_pretrained: false}\n"
                   "datasets: {coco_caption: {}}\nrun: {device: cpu, output_dir: " + str(tmp_path / "o") + "}\n")
    out = cli("train", "--cfg-path", str(exp), env={"LAVISLIKE_CACHE": str(tmp_path)}, cwd=REPO)
    assert out.returncode == 2
    lines = [l for l in out.stderr.splitlines() if l.strip() and "INFO" not in l and "WARNING" not in l]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "coco_caption" in lines[0] and "lavislike download coco_caption" in lines[0]

"""A command-line override whose value is no YAML (a dict typed by hand) is one line naming it."""
from pathlib import Path

import pytest

from lavislike.config import load_config
from lavislike.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
CFG = REPO / "projects/blip2/eval/ret_coco_eval.yaml"
BAD = "model.qformer={num_query_token: 4: 5}"


def test_bad_yaml_value_names_the_override():
    with pytest.raises(ConfigError, match=r"override 'model\.qformer=\{num_query_token: 4: 5\}': the value is not valid YAML"):
        load_config(CFG, ["run.k_test=4", BAD])


def test_cli_prints_one_line_exit_2(cli):
    res = cli("config", "--cfg-path", str(CFG), BAD, cwd=REPO)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().count("\n") == 0 and "model.qformer" in res.stderr

"""The commands that create what the ``projects/blip2_tiny`` configs read.

Registered with :func:`lavislike.common.paths.register_missing_hint`, so a missing
prerequisite of a tiny project fails as one line that says what to run, e.g.::

    model.llm.path: /root/.cache/lavislike_demo/opt_tiny not found; create it with:
    python -m lavislike_demo prepare
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from lavislike.common.paths import cache_dir, register_missing_hint

PREPARE = "python -m lavislike_demo prepare"

# entries of $LAVISLIKE_CACHE/demo made by something other than plain `prepare`
CACHE_COMMANDS = {"t5_tiny": "python -m lavislike_demo prepare t5"}

# the tiny training runs, by the last two folders of their run.output_dir
RUN_COMMANDS = {
    ("blip2_tiny", "pretrain_stage1"): (
        "python -m lavislike_demo prepare stage1 (or: bash run_scripts/pretrain_stage1.sh "
        "projects/blip2_tiny/train/pretrain_stage1.yaml)"
    ),
    ("blip2_tiny", "pretrain_stage2"): (
        "bash run_scripts/pretrain_stage2.sh projects/blip2_tiny/train/pretrain_stage2.yaml"
    ),
    ("blip2_tiny", "pretrain_stage2_t5"): (
        "bash run_scripts/pretrain_stage2_t5.sh projects/blip2_tiny/train/pretrain_stage2_t5.yaml"
    ),
}


@register_missing_hint
def demo_command(path: Path) -> Optional[str]:
    """The command creating ``path`` when it is a demo cache entry or a tiny run's output."""
    demo = (cache_dir() / "demo").expanduser().resolve()
    if path.is_relative_to(demo):
        entry = path.relative_to(demo).parts[:1]
        return CACHE_COMMANDS.get(entry[0], PREPARE) if entry else PREPARE
    for folder in (path.parent, path):  # a run's weights file, or the run folder itself
        command = RUN_COMMANDS.get(tuple(folder.parts[-2:]))
        if command:
            return command
    return None

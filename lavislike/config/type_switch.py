"""What an experiment YAML's ``model:`` section keeps when the command line switches the model.

``lavislike train --cfg-path projects/blip2/train/pretrain_stage2.yaml
model.model_type=pretrain_opt6.7b`` asks for OPT-6.7B, but the experiment YAML spells out
its type's parts (``llm.path: facebook/opt-2.7b``, the ViT-g block) and would win the merge.
On a switch of ``model.model_type`` or ``model.arch`` on the command line the experiment's
model section is therefore re-based onto the new type:

* what the model *is* follows the new type: each part's component and every other key of
  its block that is not listed below (sizes, ``pretrained``, ``llm.path``, ``hf_config``,
  ``load_weights``, tokenizers), the Q-Former's shape and ``init_from``, the model's weights
  (``pretrained``, ``finetuned``, ``hf_hub_id``), ``tokenizer``, ``embed_dim`` ...;
* how it is trained or run (``KEPT_ON_SWITCH``: ``freeze``, ``image_size``,
  ``precision``, ``dtype``, ``prompt``, ``max_txt_len``, ``load_pretrained`` ...) stays as
  the experiment set it, when it differs from the old type's default and the new type
  uses the same component for that part (a ViT-g's 490 px were not chosen for a ViT-L);
* keys that merely restate the old type's defaults are dropped silently, the others that
  are dropped are named in one warning;
* the command line's own keys are merged last, as always, so ``model.llm.path=...`` next
  to ``model.model_type=...`` still wins.

This is what a LAVIS user gets there: LAVIS experiment YAMLs carry only recipe keys
(``freeze_vit``, ``image_size``), so switching ``model_type`` swaps the weights and keeps them.
"""
from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf

logger = logging.getLogger("lavislike")

# Keys of the model section (``""``) and of its blocks that describe how the model is
# trained or run rather than which weights it holds. Everything else follows the type.
KEPT_ON_SWITCH: dict[str, frozenset[str]] = {
    "": frozenset({
        "load_pretrained", "load_finetuned", "prompt", "vqa_prompt", "max_txt_len", "prefix_lm_min_words",
        "qformer_text_input", "qformer_text_from", "temp", "label_smoothing",
    }),
    "image_encoder": frozenset({"image_size", "precision", "freeze", "use_grad_checkpoint", "drop_path_rate"}),
    "llm": frozenset({"dtype", "freeze", "attn_implementation"}),
    "qformer": frozenset({"gradient_checkpointing", "hidden_dropout_prob", "attention_probs_dropout_prob"}),
}
PART_KEYS = ("image_encoder", "llm")  # blocks whose ``name`` picks a registry entry


_MISSING = object()


def rebase_experiment(exp: DictConfig, old: DictConfig, new: DictConfig, source: str,
                      switch: str) -> DictConfig:
    """The experiment's ``model`` layer re-based from type ``old`` onto type ``new``.

    Args:
        exp: the experiment YAML's model section without ``arch`` / ``model_type``.
        old: the resolved model section of the type the experiment names.
        new: the resolved model section of the type the command line names.
        source: the experiment YAML, named in the warning.
        switch: what the command line switched, e.g. ``model.model_type pretrain -> pretrain_vitL``.
    """
    exp_d, old_d, new_d = (OmegaConf.to_container(c, resolve=False) for c in (exp, old, new))
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    for key, value in exp_d.items():
        if (key in PART_KEYS or key == "qformer") and isinstance(value, dict):
            old_block, new_block = old_d.get(key) or {}, new_d.get(key)
            same = key == "qformer" or (
                new_block is not None and value.get("name", old_block.get("name")) == new_block.get("name")
            )
            block = {}
            for sub, v in value.items():
                if v == old_block.get(sub, _MISSING):
                    continue  # restates the old type
                if same and sub in KEPT_ON_SWITCH[key] and sub in new_block:
                    block[sub] = v
                else:
                    dropped.append(f"{key}.{sub}")
            if block:
                kept[key] = {**({"name": new_block["name"]} if key in PART_KEYS else {}), **block}
        elif value != old_d.get(key, _MISSING):
            if key in KEPT_ON_SWITCH[""] and key in new_d:
                kept[key] = value
            else:
                dropped.append(key)
    if dropped:
        logger.warning(
            "%s on the command line: the new type's own values replace %s's model.%s (set them on "
            "the command line to keep them)", switch, source, ", model.".join(dropped))
    return OmegaConf.create(kept)

"""The end-to-end demo (``python -m lavislike_demo``; ``bash run_scripts/demo.sh``).

BLIP-2 at CPU size on the synthetic corpus, through the real framework: frozen unimodal
models prepared offline (:mod:`~lavislike_demo.text_lm`, :mod:`~lavislike_demo.vision`),
stage 1 and stage 2 from the ``projects/blip2_tiny`` configs, zero-shot evaluation by the
registered tasks, every number next to its baselines (:mod:`~lavislike_demo.baselines`).
"""

"""Caption generation: lavislike ``blip2_opt.generate`` vs ``Blip2ForConditionalGeneration.generate``.

Greedy and beam search (5 beams), the same ``max_new_tokens`` and stop token (``"\\n"``,
as BLIP-2's OPT captioners use), no prompt. Parity: the generated token ids must be
identical (the reported difference is the number of differing tokens), so beams run with
``beam_search="transformers"``. One more row times the default, LAVIS's rules
(transformers 4.33's length normalisation and stopping test; its ids are checked against
a transcription of 4.33's loops in ``tests/models/test_llm_beam_search.py``, and here
only their count of differing tokens is shown).

Run: ``.venv/bin/python bench/generate.py [--size small|base] [--threads N]``
"""
from __future__ import annotations

import torch

import common
from common import Row
from stage2_step import hf_batch, load_pair


def run(args) -> list[Row]:
    common.header("generation", args)
    s = args.sizes
    hf, ours, tok = load_pair(args)
    bs, new = s["gen_batch"], s["max_new_tokens"]
    pixels = common.images(bs, s["vision"]["image_size"], args.seed + 1)
    ids, mask = hf_batch(hf, tok, [""] * bs, suffix="", side="left")
    eos = tok("\n", add_special_tokens=False).input_ids[-1]

    def ours_ids(beams, rule="transformers"):
        def go():
            soft = ours.soft_prompt(pixels)
            gen = ours.llm.generation_kwargs(num_beams=beams, max_length=new, min_length=1)
            return ours.llm.generate_ids(soft, [""] * bs, beam_search=rule, **gen)
        return go

    def ours_captions(beams, rule="transformers"):
        return lambda: ours.generate({"image": pixels}, num_beams=beams, max_length=new, min_length=1,
                                     beam_search=rule)

    def ref_ids(beams):
        with torch.no_grad():
            return hf.generate(pixel_values=pixels, input_ids=ids, attention_mask=mask, num_beams=beams,
                               max_new_tokens=new, min_new_tokens=1, eos_token_id=eos,
                               pad_token_id=tok.pad_token_id)[:, ids.shape[1]:]

    def ref_captions(beams):
        return lambda: tok.batch_decode(ref_ids(beams), skip_special_tokens=True)

    rows, expected = [], {}
    for beams in (1, 5):
        with torch.no_grad():
            got = ours_ids(beams)()
        expected[beams] = ref_ids(beams)
        if got.shape != expected[beams].shape:
            raise SystemExit(f"parity check failed: generated shapes {tuple(got.shape)} vs "
                             f"{tuple(expected[beams].shape)}")
        differing = float((got != expected[beams]).sum())
        name = "greedy" if beams == 1 else f"beam-{beams}"
        common.check_parity(f"{name} token ids (differing tokens)", differing, 0.0)
        if ours_captions(beams)() != [t.strip() for t in ref_captions(beams)()]:
            raise SystemExit(f"parity check failed: {name} captions differ")
        t_ours, t_ref = common.time_pair(ours_captions(beams), ref_captions(beams), args.repeats, args.warmup)
        rows.append(Row(f"generate {name} ({new} new tokens)", t_ours, t_ref, differing,
                        f"{bs} images, {got.shape[1]} tokens out"))
    with torch.no_grad():
        got = ours_ids(5, "lavis")()
    n = min(got.shape[1], expected[5].shape[1])
    differing = float((got[:, :n] != expected[5][:, :n]).sum()) + abs(got.shape[1] - expected[5].shape[1]) * bs
    t_ours, t_ref = common.time_pair(ours_captions(5, "lavis"), ref_captions(5), args.repeats, args.warmup)
    rows.append(Row("generate beam-5, LAVIS (default)", t_ours, t_ref, differing,
                    "parity = tokens differing from transformers' rules (expected where lengths differ)"))
    wrap = common.recommended(ours)  # bf16 ViT + OPT, bf16 autocast (reference: fp32)
    for beams in (1, 5):
        with torch.no_grad():
            got = wrap(ours_ids(beams))()
        ref = expected[beams]
        n = min(got.shape[1], ref.shape[1])
        differing = float((got[:, :n] != ref[:, :n]).sum()) + abs(got.shape[1] - ref.shape[1]) * bs
        t_ours, t_ref = common.time_pair(wrap(ours_captions(beams)), ref_captions(beams), args.repeats, args.warmup)
        name = "greedy" if beams == 1 else f"beam-{beams}"
        rows.append(Row(f"generate {name}, recommended CPU cfg", t_ours, t_ref, differing,
                        "bf16 frozen + autocast; parity = tokens differing from fp32", goal=0.85))
    return rows


if __name__ == "__main__":
    common.main_wrapper(run, __doc__)

"""lavislike.models.llms: frozen LLM adapters (registered in :data:`lavislike.registry.LLMS`).

* ``causal_lm`` - decoder-only models through ``AutoModelForCausalLM`` (OPT, LLaMA, ...).
* ``seq2seq_lm`` - encoder-decoder models through ``AutoModelForSeq2SeqLM`` (FlanT5, ...).
"""
from lavislike.models.llms.base import LLMAdapter, LLMConfig
from lavislike.models.llms.causal_lm import CausalLM, CausalLMConfig
from lavislike.models.llms.seq2seq_lm import Seq2SeqLM, Seq2SeqLMConfig

__all__ = ["LLMAdapter", "LLMConfig", "CausalLM", "CausalLMConfig", "Seq2SeqLM", "Seq2SeqLMConfig"]

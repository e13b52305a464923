"""Hugging Face interop: import and export T5 (1.0, 1.1, mT5), GPT-2 and LLaMA checkpoints.

Owns the mapping between HF tensors and the t5x_like params tree and the
layout of a converted MODEL_DIR. Does not own the model (`model/`), the
checkpoint format (`training/checkpoints/`) or the `t5x-like convert`
command (`cli/convert.py`). Needs `safetensors` (and torch for
`pytorch_model.bin`, transformers for the GPT-2 tokenizer): the `hf` extra.

    common.py    files, tensor shape checks, params-tree checks, MODEL_DIR layout
    hf_t5.py     T5ForConditionalGeneration <-> encoder_decoder
    hf_gpt2.py   GPT2LMHeadModel <-> decoder_only, GPT-2 BPE vocabulary
    hf_llama.py  LlamaForCausalLM <-> decoder_only (RoPE, SwiGLU, RMSNorm, grouped-query attention)
    convert.py   from_hf_dir / to_hf_dir / import_hf / export_hf

See docs/interop.md.
"""
from t5x_like.interop.common import ConversionError
from t5x_like.interop.convert import export_hf, from_hf_dir, import_hf, load_vocabulary, to_hf_dir

__all__ = ["ConversionError", "export_hf", "from_hf_dir", "import_hf", "load_vocabulary", "to_hf_dir"]

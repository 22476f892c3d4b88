"""Writing GGUF files for tests and scripts: the one finishing sequence of ``gguf.GGUFWriter``."""

from __future__ import annotations


def finish(writer) -> None:
    """Write a ``gguf.GGUFWriter``'s header, metadata and tensors, then close it."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def add_shape(writer, *, dim: int, layers: int, ffn: int, heads: int, kv_heads: int, head_dim: int, vocab: int,
              eps: float, rope_base: float, context: int = 2048) -> None:
    """The hyper-parameters every llama-like test model writes (llama.cpp reads them to build the graph)."""
    writer.add_context_length(context)
    writer.add_embedding_length(dim)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(eps)
    writer.add_vocab_size(vocab)
    writer.add_rope_freq_base(rope_base)

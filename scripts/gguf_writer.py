"""Writing GGUF files for tests and scripts: the one finishing sequence of ``gguf.GGUFWriter``."""

from __future__ import annotations


def finish(writer) -> None:
    """Write a ``gguf.GGUFWriter``'s header, metadata and tensors, then close it."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

"""mlxgen: local text generation you can see into.

One shared generation loop (``mlxgen.loop``) drives every backend; backends
(``mlxgen.backends``) only run forward passes and own their KV cache.
Importing this package is cheap: no backend library is imported here.
"""

__version__ = "0.1.0"

from mlxgen.errors import MlxgenError  # noqa: E402

__all__ = ["MlxgenError", "__version__"]

"""User-facing errors: each one becomes a one-line message and a non-zero exit."""

import os


class MlxgenError(Exception):
    """A problem the user can fix (bad config, missing model, bad input)."""

    exit_code = 1


class ConfigError(MlxgenError):
    """The config file or a flag has a bad key or value."""

    exit_code = 2


class BackendUnavailable(MlxgenError):
    """A backend was asked for but its package is not installed."""


class ModelError(MlxgenError):
    """A model or tokenizer file cannot be found, fetched or read."""


class PromptError(MlxgenError):
    """The prompt cannot be run (empty, too long for the context, not UTF-8)."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type's name if it has none): for one-line errors."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class RankLost(MlxgenError):
    """A rank of a distributed run went away (killed, crashed, its machine unreachable): every rank stops."""

    exit_code = 75  # EX_TEMPFAIL: nothing wrong with the input; start the ranks again


COLLECTIVE_ERRORS = ("[ring]", "[jaccl]", "[mpi]", "[mlxgen]")  # how MLX's distributed backends start their errors


def rank_lost(e: BaseException) -> "RankLost | None":
    """MLX's error when another rank goes away (``[ring] connection to a peer was lost``), as one line."""
    text = first_line(e)
    if isinstance(e, RuntimeError) and text.startswith(COLLECTIVE_ERRORS):
        return RankLost(f"rank {os.environ.get('MLX_RANK', '0')}: lost the connection to another rank ({text}); "
                        f"every rank stops")
    return None

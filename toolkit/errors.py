"""User-facing errors: each one becomes a one-line message and a non-zero exit."""


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

"""Typed errors of the model tooling.

Every expected failure (bad flags, unsupported checkpoint, missing tensor, …) raises a
subclass of ModelToolError; the CLI entry points turn it into one `error: …` line and
exit status 2, so callers (scripts, the Rust tests) can tell a user error from a crash."""


class ModelToolError(Exception):
    """Base class: a failure with a message meant for the user."""


class UsageError(ModelToolError):
    """Flags or arguments that do not make sense together."""


class CheckpointError(ModelToolError):
    """A Hugging Face checkpoint folder is missing files, tensors or config fields."""


class UnsupportedModelError(ModelToolError):
    """The checkpoint's architecture or a config option is not supported."""


class ImportedModelError(ModelToolError):
    """An imported model folder (manifest + blocks) is missing or inconsistent."""

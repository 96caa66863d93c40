"""The runtime runs on trio: a clear error when it is awaited from anywhere else."""

from __future__ import annotations

import trio

from .._base._errors import ConfigError


def require_trio(name: str) -> None:
    """Raise :class:`ConfigError` unless called from a trio task.

    Awaited from asyncio, trio's own calls would fail later with an obscure
    ``AttributeError``; this says how to run ``name`` instead.
    """
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        raise ConfigError(
            f"{name} runs on trio, and was awaited outside trio (from asyncio?). Run it with "
            f"trio.run: trio.run(functools.partial({name}, ...)). From an asyncio application, "
            f"run it in a worker thread with its own trio loop: await asyncio.to_thread("
            f"trio.run, functools.partial({name}, ...)), or host asyncio on trio with "
            "trio-asyncio. See the guide: Embedding in an asyncio application."
        ) from None

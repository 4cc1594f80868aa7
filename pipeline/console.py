"""The stderr console that stages and commands print to, and the one-line form of an error they share."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

console = Console(stderr=True)


def print_error(err: Exception) -> None:
    """`error: MESSAGE` on stderr, the message printed as written (no markup, no traceback)."""
    console.print(f"[bold red]error[/]: {escape(str(err))}", soft_wrap=True)

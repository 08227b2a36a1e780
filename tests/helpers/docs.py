"""The RFCs as tests read them: one document's text with every run of whitespace made one
space, so a sentence is found whatever the line breaks."""

from __future__ import annotations

from pathlib import Path

RFC_DIR = Path(__file__).resolve().parent.parent.parent / "docs" / "RFC"


def rfc_text(prefix: str) -> str:
    """The text of the RFC whose file name starts with ``prefix`` (``"0002"``)."""
    [path] = RFC_DIR.glob(f"{prefix}-*.md")
    return " ".join(path.read_text().split())

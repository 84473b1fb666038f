"""The caption of a catalog entry, shared by the datasets and the attribute miner (no heavy
imports: the command-line tools use it too)."""


def entry_text(entry: dict) -> str:
    """title + ". " + description (the description is optional, e.g. Fashion200k)."""
    parts = (str(entry.get(key) or "").strip() for key in ("title", "description"))
    return ". ".join(part for part in parts if part)

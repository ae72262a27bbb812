"""Write docs/configuration.md from the config dataclasses: ``python scripts/config_reference.py``."""

from pathlib import Path

from gossip.config import reference_markdown

if __name__ == "__main__":
    target = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    target.parent.mkdir(exist_ok=True)
    target.write_text(reference_markdown())
    print(f"wrote {target}")

"""The repository root, for tests that read files of the repository (docs, infra, pyproject)."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

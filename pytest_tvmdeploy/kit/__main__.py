"""``python -m pytest_tvmdeploy.kit [pytest options]`` (also the ``tvmdeploy-kit`` command)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    import pytest

    return int(pytest.main(["--pyargs", "pytest_tvmdeploy.kit", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    sys.exit(main())

"""``python -m pytest_tvmdeploy.kit [pytest options]`` (also the ``tvmdeploy-kit`` command)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    import pytest

    args = list(sys.argv[1:] if argv is None else argv)
    if not any(arg.startswith("--tvm-coverage") for arg in args):
        args.append("--tvm-coverage=on")  # the kit's run says which operators it exercised
    return int(pytest.main(["--pyargs", "pytest_tvmdeploy.kit", *args]))


if __name__ == "__main__":
    sys.exit(main())

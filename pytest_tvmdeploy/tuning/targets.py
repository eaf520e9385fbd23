"""Which target to tune for, and which stored records belong to a target.

MetaSchedule refuses a CPU target without ``num-cores`` (it sizes parallel loops with it), so a
target that does not say is tuned with this machine's physical core count. Its records are still
used for the target as written: a record matches when its target equals the requested one, with
``num-cores`` ignored unless the requested target names it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pytest_tvmdeploy.targets import TargetSpec, parse_target

if TYPE_CHECKING:
    import tvm

CORES_KEY = "num-cores"


def tuning_target(spec: TargetSpec) -> tvm.target.Target:
    """The target MetaSchedule tunes for: ``spec``, with ``num-cores`` filled in for CPUs
    (raises :class:`~pytest_tvmdeploy.errors.TargetError` if TVM rejects it)."""
    from tvm.s_tir.meta_schedule.utils import cpu_count

    config = spec.as_dict
    if config.get("kind") == "llvm" and CORES_KEY not in config:
        config[CORES_KEY] = cpu_count(logical=False)
    return parse_target(config).to_tvm()


def record_matcher(spec: TargetSpec) -> Callable[[dict[str, Any]], bool]:
    """A test of a record's target (as stored in the database) against ``spec``."""
    ignore_cores = CORES_KEY not in spec.as_dict
    wanted = target_key(spec)
    return lambda stored: _comparable(stored, ignore_cores) == wanted


def target_key(spec: TargetSpec) -> str:
    """``spec`` as TVM exports it, in canonical JSON (without ``num-cores`` unless it names it)."""
    return _comparable(_exported(spec.to_tvm()), CORES_KEY not in spec.as_dict)


def _exported(target: tvm.target.Target) -> dict[str, Any]:
    """The target as the database stores it: plain dicts and lists."""
    return _plain(target.export())


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(item) for item in value]
    return value


def _comparable(config: dict[str, Any], ignore_cores: bool) -> str:
    kept = {key: value for key, value in config.items() if not (ignore_cores and key == CORES_KEY)}
    return json.dumps(kept, sort_keys=True)
